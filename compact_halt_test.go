package kv_test

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/internal/storage"
	"github.com/cohortkv/kv/kvtest"
)

// TestStore_Compact_HaltedMemberRefuses: Compact on a halted member fails
// with its halt error, as every call on it does, and leaves its data file
// as it is.
func TestStore_Compact_HaltedMemberRefuses(t *testing.T) {
	c := kvtest.NewCluster(t, 1, kvtest.Logger(testLogger(t)))
	s := c.Node(0)
	purge(t, s, 2000, 200, 10)
	if err := s.Set(ctxT(t, time.Minute), "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	before := dataFileSize(t, c, 0)
	kv.Halt(s, fmt.Errorf("%w: test", kv.ErrCorrupt))
	err := s.Compact(ctxT(t, time.Minute))
	if !errors.Is(err, kv.ErrCorrupt) {
		t.Fatalf("Compact on a halted member: %v, want its halt error", err)
	}
	if after := dataFileSize(t, c, 0); after != before {
		t.Fatalf("data file %d bytes, %d before: a halted member compacted it", after, before)
	}
}

// TestStore_Compact_HaltStopsTheCompaction: a member that halts while it
// compacts its data file stops the compaction, keeps its file, and
// Compact fails with the halt error.
func TestStore_Compact_HaltStopsTheCompaction(t *testing.T) {
	c := kvtest.NewCluster(t, 1, kvtest.Logger(testLogger(t)))
	s := c.Node(0)
	purge(t, s, 2000, 200, 10)
	if err := s.Set(ctxT(t, time.Minute), "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	var halted atomic.Bool
	t.Cleanup(storage.SetCompactHook(func(step string) {
		if step == "copied" && halted.CompareAndSwap(false, true) {
			kv.Halt(s, fmt.Errorf("%w: test", kv.ErrCorrupt))
			// The halt cancels the compaction from a goroutine of its
			// own: give it the moment it needs before the next step.
			time.Sleep(200 * time.Millisecond)
		}
	}))
	// The committer may still be writing the purge: the file's size once
	// it is done.
	var before int64
	for range 20 {
		time.Sleep(1200 * time.Millisecond)
		sz := dataFileSize(t, c, 0)
		if sz == before {
			break
		}
		before = sz
	}
	err := s.Compact(ctxT(t, time.Minute))
	if !halted.Load() {
		t.Fatal("the compaction did not reach its copy")
	}
	if !errors.Is(err, kv.ErrCorrupt) {
		t.Fatalf("Compact on a member that halted during it: %v, want its halt error", err)
	}
	if after := dataFileSize(t, c, 0); after != before {
		t.Fatalf("data file %d bytes, %d before: the compaction went on after the halt", after, before)
	}
}

// TestStore_Compact_RefusedOnTheLeaderKeepsItsLeadership: a request to
// compact a leader that is compacting already is refused with
// ErrCompacting before the leader hands its leadership over: a refused (or
// repeated, or hostile) request does not move the leadership.
func TestStore_Compact_RefusedOnTheLeaderKeepsItsLeadership(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.Logger(testLogger(t)))
	ctx := ctxT(t, 2*time.Minute)
	l, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leader := c.Node(l)
	purge(t, leader, 1000, 200, 10)
	reached, release := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	t.Cleanup(storage.SetCompactHook(func(step string) {
		if step == "copied" && first.CompareAndSwap(false, true) {
			close(reached)
			select {
			case <-release:
			case <-time.After(time.Minute):
			}
		}
	}))
	done := make(chan error, 1)
	go func() { done <- kv.CompactEngine(ctx, leader) }()
	select {
	case <-reached:
	case <-time.After(time.Minute):
		t.Fatal("the leader's compaction did not start")
	}
	term := leader.Stats().Term
	err = kv.CompactMember(ctx, c.Node((l+1)%3), leader.Stats().NodeID)
	st := leader.Stats()
	close(release)
	if cerr := <-done; cerr != nil {
		t.Errorf("the leader's compaction: %v", cerr)
	}
	if !errors.Is(err, kv.ErrCompacting) {
		t.Fatalf("a second compaction of the leader: %v, want ErrCompacting", err)
	}
	if st.State != kv.StateLeader || st.Term != term {
		t.Fatalf("the refused request moved the leadership: state %v, term %d (was %d)", st.State, st.Term, term)
	}
}
