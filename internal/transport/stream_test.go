package transport

import (
	"net"
	"testing"
	"time"
)

// WaitInbound returns once the owner of every accepted Raft connection has
// closed it, and reports a timeout while one is still open.
func TestStreamLayer_WaitInbound(t *testing.T) {
	m := startMux(t, MuxConfig{})
	if !m.Raft().WaitInbound(time.Second) {
		t.Fatal("WaitInbound with no connections timed out")
	}
	out, err := net.Dial("tcp", m.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := out.Write([]byte{ProtoRaft}); err != nil {
		t.Fatal(err)
	}
	in, err := m.Raft().Accept()
	if err != nil {
		t.Fatal(err)
	}
	m.Raft().Close() // closes the socket under the owner, who has not closed it yet
	if m.Raft().WaitInbound(50 * time.Millisecond) {
		t.Fatal("WaitInbound returned true while the owner still holds its connection")
	}
	in.Close()
	if !m.Raft().WaitInbound(time.Second) {
		t.Fatal("WaitInbound timed out after the owner closed its connection")
	}
}
