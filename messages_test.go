package kv_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// logRecorder is a slog handler that keeps every record, for tests of what
// the Store tells its operator.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", rec.Level, rec.Message)
	rec.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	r.mu.Lock()
	r.lines = append(r.lines, b.String())
	r.mu.Unlock()
	return nil
}

// find returns the lines that contain every one of parts.
func (r *logRecorder) find(parts ...string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
next:
	for _, l := range r.lines {
		for _, p := range parts {
			if !strings.Contains(l, p) {
				continue next
			}
		}
		out = append(out, l)
	}
	return out
}

// waitFor waits up to d for a line with every one of parts.
func (r *logRecorder) waitFor(t *testing.T, d time.Duration, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if found := r.find(parts...); len(found) > 0 {
			return found[0]
		}
		if time.Now().After(deadline) {
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("no log line with %q; the log:\n%s", parts, strings.Join(r.lines, "\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A member waiting to bootstrap says what it waits for, and that its seeds
// do not answer.
func TestMessages_BootstrapProgress(t *testing.T) {
	rec := &logRecorder{}
	s, err := kv.Open(kv.Config{NodeID: "n1", InMemory: true, BootstrapExpect: 3,
		BindAddr: "127.0.0.1:0", GossipBindAddr: "127.0.0.1:0",
		Join: []string{"127.0.0.1:1"}, Logger: slog.New(rec)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	line := rec.waitFor(t, 10*time.Second, "INFO waiting for 3 expected members to bootstrap, 1 seen: n1")
	if !strings.Contains(line, "no seed in Join answered") {
		t.Errorf("progress line does not say the seeds are silent: %s", line)
	}
}

// Followers log the leader they follow; a normal Close of the whole cluster
// logs no errors; a linearizable read on a member cut off from the others
// fails in words that fit a read.
func TestMessages_LeaderLogsAndReadErrors(t *testing.T) {
	recs := make([]*logRecorder, 3)
	c := kvtest.NewCluster(t, 3, kvtest.Configure(func(i int, cfg *kv.Config) {
		recs[i] = &logRecorder{}
		cfg.Logger = slog.New(recs[i])
	}))
	lead, err := c.WaitLeader(ctxT(t, 20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	leaderID := c.Config(lead).NodeID
	for i := range recs {
		if i != lead {
			recs[i].waitFor(t, 10*time.Second, "INFO following leader", "leader="+leaderID)
		}
	}
	if err := c.Node(lead).Set(ctxT(t, 10*time.Second), "k", []byte("v")); err != nil {
		t.Fatal(err)
	}

	// The leader, cut off, cannot confirm a read: the error says so, and
	// says nothing about a write.
	// Reads on every member, with deadlines that end at different points
	// of the election that follows: each either succeeds (the others
	// elect a leader) or fails as a read that found no leader.
	c.Isolate(lead)
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		for _, d := range []time.Duration{100 * time.Millisecond, 300 * time.Millisecond, time.Second, 3 * time.Second} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), d)
				defer cancel()
				_, err := c.Node(i).Get(ctx, "k")
				switch {
				case err == nil && i != lead:
				case err == nil:
					t.Errorf("Get on the cut-off leader succeeded")
				case !errors.Is(err, kv.ErrNoLeader) || !errors.Is(err, context.DeadlineExceeded):
					t.Errorf("Get on member %d (leader %d) within %v: %v; want ErrNoLeader and DeadlineExceeded", i, lead, d, err)
				case errors.Is(err, kv.ErrOutcomeUnknown) || strings.Contains(err.Error(), "write"):
					t.Errorf("Get on member %d (leader %d) within %v speaks of a write: %v", i, lead, d, err)
				case !strings.Contains(err.Error(), "read"):
					t.Errorf("Get on member %d (leader %d) within %v does not say what failed: %v", i, lead, d, err)
				}
			}()
		}
	}
	wg.Wait()
	c.Heal()
	if _, err := c.WaitLeader(ctxT(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Node(lead).Get(ctxT(t, 20*time.Second), "k"); err != nil || string(got) != "v" {
		t.Fatalf("after heal: %q, %v", got, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for i, r := range recs {
		if errs := r.find("ERROR"); len(errs) > 0 {
			t.Errorf("member %d logged errors in a run without faults that need an operator:\n%s", i, strings.Join(errs, "\n"))
		}
	}
}

// The events an operator looks for carry the same attributes: elections
// the term and index, membership changes the peer, the term and the index
// of the configuration entry.
func TestMessages_EventAttributes(t *testing.T) {
	ctx := ctxT(t, 60*time.Second)
	rec := &logRecorder{}
	first, err := kv.Open(kv.Config{NodeID: "n1", InMemory: true, MaxVoters: 3, Logger: slog.New(rec),
		BindAddr: "127.0.0.1:0", GossipBindAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if err := first.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, 10*time.Second, "INFO became leader", " term=", " index=")
	var joiners []*kv.Store
	for _, id := range []string{"n2", "n3"} {
		s, err := kv.Open(kv.Config{NodeID: id, InMemory: true, MaxVoters: 3, Join: []string{first.GossipAddr()},
			BindAddr: "127.0.0.1:0", GossipBindAddr: "127.0.0.1:0", Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		joiners = append(joiners, s)
	}
	for _, id := range []string{"n2", "n3"} {
		rec.waitFor(t, 30*time.Second, "INFO peer added as a non-voter", "peer="+id, " term=", " index=")
	}
	rec.waitFor(t, 30*time.Second, "INFO peer promoted to voter", " term=", " index=")
	if err := joiners[1].Leave(ctx); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, 30*time.Second, "INFO peer removed", "peer=n3", " term=", " index=")
}
