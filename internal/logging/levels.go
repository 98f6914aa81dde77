package logging

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// hashicorp/raft and memberlist log at ERROR what a cluster meets in normal
// operation: a peer that is down or cut off fails every heartbeat, every
// replication attempt and every vote request, and a connection closed at
// shutdown fails its read. Kept as they come, a short outage fills a log
// with errors an operator can do nothing about, and hides the ones that
// matter. A tamer lowers such lines to the level of what they report:
//
//   - a peer that cannot be reached is a warning, logged once per peer and
//     message every repeatEvery; the repeats go to Debug;
//   - the steps of an election or of a follower's catch-up (a vote refused
//     because a leader exists, a log that does not match and is sent again,
//     a leader that steps down for a newer term) are Info or Debug;
//   - a read or write that fails because the connection was closed (at
//     Close, or by the peer) is Debug.
//
// Everything else keeps the level the library gave it: a failing disk, a
// snapshot that cannot be made or installed, a peer that sends garbage.
type tamer struct {
	mu   sync.Mutex
	last map[string]time.Time
}

// repeatEvery is how often a warning about the same peer and message is
// logged at Warn; repeats in between are logged at Debug.
const repeatEvery = 30 * time.Second

func newTamer() *tamer { return &tamer{last: map[string]time.Time{}} }

// once reports whether key was not reported within repeatEvery, and records
// it as reported now.
func (t *tamer) once(key string) bool {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if at, ok := t.last[key]; ok && now.Sub(at) < repeatEvery {
		return false
	}
	if len(t.last) >= 1024 {
		for k, at := range t.last {
			if now.Sub(at) >= repeatEvery {
				delete(t.last, k)
			}
		}
		if len(t.last) >= 1024 {
			t.last = map[string]time.Time{}
		}
	}
	t.last[key] = now
	return true
}

// unreachable are hashicorp/raft's messages for a peer it cannot reach.
var unreachable = map[string]bool{
	"failed to heartbeat to":                        true,
	"failed to appendEntries to":                    true,
	"failed to pipeline appendEntries":              true,
	"failed to start pipeline replication to":       true,
	"failed to make requestVote RPC":                true,
	"failed to contact":                             true,
	"Election timeout reached, restarting election": true,
}

// routine are hashicorp/raft's messages for steps of elections and
// replication that happen in a healthy cluster, with their level.
var routine = map[string]slog.Level{
	"peer has newer term, stopping replication":                  slog.LevelInfo,
	"new leader elected, stepping down":                          slog.LevelInfo,
	"failed to get previous log":                                 slog.LevelInfo,
	"previous log term mis-match":                                slog.LevelInfo,
	"appendEntries rejected, sending older logs":                 slog.LevelInfo,
	"clearing log suffix":                                        slog.LevelInfo,
	"rejecting vote request since we have a leader":              slog.LevelDebug,
	"rejecting pre-vote request since we have a leader":          slog.LevelDebug,
	"rejecting vote request since our last term is greater":      slog.LevelDebug,
	"rejecting pre-vote request since our last term is greater":  slog.LevelDebug,
	"rejecting vote request since our last index is greater":     slog.LevelDebug,
	"rejecting pre-vote request since our last index is greater": slog.LevelDebug,
	"duplicate requestVote from":                                 slog.LevelDebug,
}

// connection are hashicorp/raft's messages for a connection that failed;
// routine when it was closed, a warning otherwise.
var connection = map[string]bool{
	"failed to decode incoming command": true,
	"failed to flush response":          true,
	"failed to accept connection":       true,
}

// hclog gives the level for a hashicorp/raft message at level (Warn or
// above) with the key/value pairs args.
func (t *tamer) hclog(level slog.Level, msg string, args []any) slog.Level {
	if l, ok := routine[msg]; ok {
		return l
	}
	cause := argString(args, "error")
	switch {
	case unreachable[msg]:
		peer := argString(args, "peer")
		if peer == "" {
			peer = argString(args, "server-id")
		}
		if t.once(msg + "\x00" + peer) {
			return slog.LevelWarn
		}
		return slog.LevelDebug
	case connection[msg]:
		if closedConn(cause) {
			return slog.LevelDebug
		}
		return slog.LevelWarn
	case msg == "failed to take snapshot" && strings.Contains(cause, "nothing new to snapshot"):
		return slog.LevelDebug
	}
	return level
}

// line gives the level for a memberlist line at level (Warn or above).
func (t *tamer) line(level slog.Level, line []byte) slog.Level {
	text := string(line)
	switch {
	case closedConn(text):
		return slog.LevelDebug
	case netFailure(text):
		// "memberlist: Failed to send ping: write udp ...": the key is the
		// text before the cause, which names the peer where memberlist
		// does.
		key := strings.TrimPrefix(text, "memberlist: ")
		if i := strings.Index(key, ": "); i >= 0 {
			key = key[:i]
		}
		if t.once(key) {
			return slog.LevelWarn
		}
		return slog.LevelDebug
	}
	return level
}

// argString is the value under key in the hclog key/value pairs args, as
// text ("" when absent).
func argString(args []any, key string) string {
	for i := 0; i+1 < len(args); i += 2 {
		if k, ok := args[i].(string); ok && k == key {
			switch v := args[i+1].(type) {
			case string:
				return v
			case error:
				return v.Error()
			case fmt.Stringer:
				return v.String()
			default:
				return fmt.Sprint(v)
			}
		}
	}
	return ""
}

// closedConn says whether an error's text reports a connection closed on
// this side or by the peer.
func closedConn(text string) bool {
	for _, s := range []string{"use of closed network connection", "EOF", "connection reset by peer", "broken pipe", "transport shutdown"} {
		if strings.Contains(text, s) {
			return true
		}
	}
	return false
}

// netFailure says whether a line reports a peer that could not be reached.
func netFailure(text string) bool {
	for _, s := range []string{"connection refused", "i/o timeout", "no route to host", "network is unreachable", "host is down", "deadline exceeded"} {
		if strings.Contains(text, s) {
			return true
		}
	}
	return false
}
