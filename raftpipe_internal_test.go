package kv

import (
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// A follower that refuses appends while several are in flight: raft's
// decoder stops reading at the first refusal. The sender must still return
// from its next appends (and Close must return), or replication to that
// follower, and Raft's Shutdown, hang for ever.
func TestDrainedPipeline_SenderNeverWaitsOnAStoppedDecoder(t *testing.T) {
	leader, err := raft.NewTCPTransport("127.0.0.1:0", nil, 2, 2*time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	follower, err := raft.NewTCPTransport("127.0.0.1:0", nil, 2, 2*time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	go func() { // the follower refuses every append
		for {
			select {
			case rpc := <-follower.Consumer():
				rpc.Respond(&raft.AppendEntriesResponse{Success: false}, nil)
			case <-stop:
				return
			}
		}
	}()
	p, err := leader.AppendEntriesPipeline("f", follower.LocalAddr())
	if err != nil {
		t.Fatal(err)
	}
	p = newDrainedPipeline(p) // without it: "the sender waits for ever"
	req := func() *raft.AppendEntriesRequest {
		return &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax}, Term: 1}
	}
	if _, err := p.AppendEntries(req(), &raft.AppendEntriesResponse{}); err != nil {
		t.Fatal(err)
	}
	// raft's decoder takes the refusal and stops reading.
	select {
	case f := <-p.Consumer():
		if f.Response().Success {
			t.Fatal("append accepted")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no response")
	}
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for i := 0; i < 4; i++ {
			if _, err := p.AppendEntries(req(), &raft.AppendEntriesResponse{}); err != nil {
				return
			}
		}
	}()
	select {
	case <-sent:
	case <-time.After(5 * time.Second):
		t.Fatal("the sender waits for ever on a decoder that stopped reading")
	}
	p.Close()
	close(stop)
	leader.Close()
	follower.Close()
}
