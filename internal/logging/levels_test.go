package logging

import (
	"errors"
	"log/slog"
	"testing"
)

// What hashicorp/raft reports about a healthy cluster's elections, an
// unreachable peer, or a connection closed at shutdown does not come out as
// an error; a peer unreachable is a warning once per peer and message, then
// Debug; real failures keep their level.
func TestHCLogTamesExpectedConditions(t *testing.T) {
	c, sl := newCapture(LevelTrace)
	l := HCLog(sl, "raft")
	l.Error("failed to heartbeat to", "peer", "127.0.0.1:1", "backoff time", 10, "error", errors.New("dial tcp: connection refused"))
	l.Error("failed to heartbeat to", "peer", "127.0.0.1:1", "backoff time", 20, "error", errors.New("dial tcp: connection refused"))
	l.Error("failed to heartbeat to", "peer", "127.0.0.1:2", "error", errors.New("dial tcp: connection refused"))
	l.Warn("failed to contact", "server-id", "n2", "time", 1)
	l.Warn("failed to contact", "server-id", "n2", "time", 2)
	l.Error("failed to decode incoming command", "error", errors.New("read tcp 127.0.0.1:1->127.0.0.1:2: use of closed network connection"))
	l.Error("failed to decode incoming command", "error", errors.New("msgpack decode error: invalid code"))
	l.Error("peer has newer term, stopping replication", "peer", "n2")
	l.Warn("rejecting vote request since we have a leader", "from", "n3")
	l.Error("failed to take snapshot", "error", errors.New("nothing new to snapshot"))
	l.Error("failed to append to logs", "error", errors.New("disk on fire"))
	l.Named("snapshots").Error("failed to finalize snapshot", "error", errors.New("EIO"))

	want := []struct {
		msg   string
		level slog.Level
	}{
		{"failed to heartbeat to", slog.LevelWarn},
		{"failed to heartbeat to", slog.LevelDebug},
		{"failed to heartbeat to", slog.LevelWarn}, // another peer
		{"failed to contact", slog.LevelWarn},
		{"failed to contact", slog.LevelDebug},
		{"failed to decode incoming command", slog.LevelDebug},
		{"failed to decode incoming command", slog.LevelWarn},
		{"peer has newer term, stopping replication", slog.LevelInfo},
		{"rejecting vote request since we have a leader", slog.LevelDebug},
		{"failed to take snapshot", slog.LevelDebug},
		{"failed to append to logs", slog.LevelError},
		{"failed to finalize snapshot", slog.LevelError},
	}
	got := c.all()
	if len(got) != len(want) {
		t.Fatalf("got %d records, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		if got[i].Msg != w.msg || got[i].Level != w.level {
			t.Errorf("record %d: %v %q, want %v %q", i, got[i].Level, got[i].Msg, w.level, w.msg)
		}
	}
}

// A lowered line is still dropped when the handler does not want its new
// level.
func TestHCLogTamedLineRespectsHandlerLevel(t *testing.T) {
	c, sl := newCapture(slog.LevelInfo)
	l := HCLog(sl, "raft")
	l.Error("failed to decode incoming command", "error", errors.New("EOF"))
	l.Warn("rejecting pre-vote request since we have a leader")
	if got := c.all(); len(got) != 0 {
		t.Fatalf("records below the handler's level: %+v", got)
	}
}

func TestStdLogTamesExpectedConditions(t *testing.T) {
	c, sl := newCapture(LevelTrace)
	std := StdLog(sl, "memberlist")
	std.Println("[ERR] memberlist: Failed to send indirect UDP ping: write udp 127.0.0.1:1->127.0.0.1:2: use of closed network connection")
	std.Println("[ERR] memberlist: Push/Pull with n2 failed: dial tcp 127.0.0.1:2: connect: connection refused")
	std.Println("[ERR] memberlist: Push/Pull with n2 failed: dial tcp 127.0.0.1:2: connect: connection refused")
	std.Println("[ERR] memberlist: Push/Pull with n3 failed: dial tcp 127.0.0.1:3: i/o timeout")
	std.Println("[ERR] memberlist: Failed to decode ping request: bad magic")
	want := []slog.Level{slog.LevelDebug, slog.LevelWarn, slog.LevelDebug, slog.LevelWarn, slog.LevelError}
	got := c.all()
	if len(got) != len(want) {
		t.Fatalf("got %d records, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		if got[i].Level != w {
			t.Errorf("record %d %q: %v, want %v", i, got[i].Msg, got[i].Level, w)
		}
	}
}

// The record of reported keys stays bounded.
func TestTamerForgets(t *testing.T) {
	tm := newTamer()
	for i := 0; i < 5000; i++ {
		tm.once(string(rune(i)))
	}
	if n := len(tm.last); n > 1024 {
		t.Fatalf("%d keys kept", n)
	}
	if !tm.once("new") || tm.once("new") {
		t.Fatal("once after many keys")
	}
}
