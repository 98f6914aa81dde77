package kv_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/transport"
)

// rawRaftLayer lets a test speak hashicorp/raft's protocol to a member's
// port as any peer could: the connection starts with the Raft protocol
// byte.
type rawRaftLayer struct{ net.Listener }

func (l rawRaftLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", string(addr), timeout)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{transport.ProtoRaft}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Log entries that raft would panic on when it applies them (a
// configuration that does not decode, a type it does not know) are refused
// as they arrive from a peer, before raft truncates anything for them: the
// member neither crashes nor stores them, and the cluster goes on.
func TestHostilePeer_UnapplicableEntriesAreRefused(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t, 90*time.Second)
	l := c.waitLeader()
	if err := c.nodes[l].Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	trans := raft.NewNetworkTransport(rawRaftLayer{ln}, 1, 5*time.Second, io.Discard)
	defer trans.Close()

	victim := c.followers()[0]
	target := c.nodes[victim]
	bad := []*raft.Log{
		{Type: raft.LogConfiguration, Data: []byte{0xc1, 0xff, 0x00, 0x13}},
		{Type: raft.LogType(77), Data: []byte("?")},
	}
	for _, entry := range bad {
		// Under a term above every entry's, so that the member cannot
		// take the entry for one it holds already: it must store it, or
		// refuse it. (The member adopts the term: an election follows.)
		for attempt := 0; attempt < 5; attempt++ {
			st := target.Stats()
			e := *entry
			e.Index, e.Term = st.LastLogIndex+1, st.Term+1
			req := &raft.AppendEntriesRequest{
				RPCHeader:    raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("intruder"), Addr: []byte(ln.Addr().String())},
				Term:         st.Term + 1,
				PrevLogEntry: st.LastLogIndex,
				PrevLogTerm:  st.Term,
				Entries:      []*raft.Log{&e},
			}
			var resp raft.AppendEntriesResponse
			err := trans.AppendEntries(raft.ServerID(st.NodeID), raft.ServerAddress(target.Addr()), req, &resp)
			if err == nil && resp.Success {
				t.Fatalf("member stored an entry raft cannot apply: %+v", e)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// A snapshot whose configuration does not decode: raft would panic
	// on it as it installs it.
	st := target.Stats()
	snap := []byte("not a snapshot at all")
	sreq := &raft.InstallSnapshotRequest{
		RPCHeader:          raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("intruder"), Addr: []byte(ln.Addr().String())},
		SnapshotVersion:    raft.SnapshotVersionMax,
		Term:               st.Term,
		LastLogIndex:       st.LastLogIndex + 100,
		LastLogTerm:        st.Term,
		Configuration:      []byte{0xc1, 0x00, 0xff},
		ConfigurationIndex: 1,
		Size:               int64(len(snap)),
	}
	var sresp raft.InstallSnapshotResponse
	if err := trans.InstallSnapshot(raft.ServerID(st.NodeID), raft.ServerAddress(target.Addr()), sreq, &sresp, bytes.NewReader(snap)); err == nil && sresp.Success {
		t.Fatal("member installed a snapshot with a configuration that does not decode")
	}
	// The cluster goes on, the member that was sent the entries included.
	for i, s := range c.nodes {
		if err := s.Set(ctx, fmt.Sprintf("after/%d", i), []byte("x")); err != nil {
			t.Fatalf("write on n%d: %v", i+1, err)
		}
		if _, err := s.Get(ctx, "k"); err != nil {
			t.Fatalf("read on n%d: %v", i+1, err)
		}
	}
}
