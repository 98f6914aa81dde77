package kv

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// syncBuffer is a log sink tests can read while the Store writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func internalConfig(dir, id string, expect int, join []string, logs *syncBuffer) Config {
	return Config{
		NodeID:          id,
		DataDir:         filepath.Join(dir, id),
		BindAddr:        "127.0.0.1:0",
		GossipBindAddr:  "127.0.0.1:0",
		Join:            join,
		BootstrapExpect: expect,
		Logger:          slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// A snapshot whose last entries are raft's own (a barrier here, a no-op at
// a new leadership) has an index the data file never reaches: reopening
// must not take that for a data file behind the snapshot and restore the
// whole snapshot into it.
func TestOpen_SnapshotAfterNoopEntriesNeedsNoRestore(t *testing.T) {
	dir := t.TempDir()
	logs := &syncBuffer{}
	cfg := internalConfig(dir, "solo", 1, nil, logs)
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	// The leader's own first commands (the quota setting) go in first, so
	// that the barrier below is the last entry.
	for s.Stats().QuotaBytes == 0 {
		if ctx.Err() != nil {
			t.Fatal("the leader never set the quota")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := s.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := s.raft.Barrier(5 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	if err := s.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	if si, ai := s.raft.LastIndex(), s.eng.AppliedIndex(); si <= ai {
		t.Fatalf("last index %d, applied %d: the barrier should be past the data", si, ai)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if strings.Contains(logs.String(), "data file restored from snapshot") {
		t.Fatal("reopening restored the whole snapshot into a current data file")
	}
	if err := s.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Get(ctx, "k"); err != nil || string(v) != "v" {
		t.Fatalf("Get after reopen: %q, %v", v, err)
	}
}

// openInternalThree opens a cluster of three Stores in a temporary
// directory, closed at the end of the test (nil entries skipped), and
// returns them with their configs.
func openInternalThree(t *testing.T, logs *syncBuffer) ([]*Store, []Config) {
	t.Helper()
	dir := t.TempDir()
	nodes := make([]*Store, 3)
	t.Cleanup(func() {
		for _, s := range nodes {
			if s != nil {
				s.Close()
			}
		}
	})
	cfgs := make([]Config, 3)
	for i := range cfgs {
		var join []string
		if i > 0 {
			join = []string{nodes[0].GossipAddr()}
		}
		cfgs[i] = internalConfig(dir, fmt.Sprintf("n%d", i+1), 3, join, logs)
		s, err := Open(cfgs[i])
		if err != nil {
			t.Fatal(err)
		}
		nodes[i] = s
	}
	return nodes, cfgs
}

// internalLeader waits for one of nodes to lead with its term's first
// entry committed, and returns its position.
func internalLeader(ctx context.Context, t *testing.T, nodes []*Store) int {
	t.Helper()
	for {
		for i, s := range nodes {
			if s != nil && s.raft.State() == raft.Leader && s.readyTerm.Load() == s.raft.CurrentTerm() {
				return i
			}
		}
		if ctx.Err() != nil {
			t.Fatal("no leader")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A linearizable read on a follower whose read index is a barrier entry
// (which the state machine never sees) returns without waiting for a later
// write.
func TestRead_FollowerReadIndexOnBarrier(t *testing.T) {
	nodes, _ := openInternalThree(t, &syncBuffer{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	leader := nodes[internalLeader(ctx, t, nodes)]
	if err := leader.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	for _, s := range nodes {
		if _, err := s.Get(ctx, "k"); err != nil {
			t.Fatal(err)
		}
	}
	if err := leader.raft.Barrier(5 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	for _, s := range nodes {
		if s == leader {
			continue
		}
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		v, err := s.Get(rctx, "k")
		rcancel()
		if err != nil || string(v) != "v" {
			t.Fatalf("linearizable Get on follower %s with a barrier last: %q, %v", s.cfg.NodeID, v, err)
		}
	}
}
