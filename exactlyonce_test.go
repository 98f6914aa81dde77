package kv_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// lostAnswers makes writes on the leader and on a follower lose their
// answers after they were applied (the leader as if it lost its
// leadership at once, the follower's reply as if its connection dropped),
// so that the library sends each again, and returns what the key's
// Version and the compare-and-sets tell: a write applied twice counts
// twice, and a compare-and-set whose first attempt was applied conflicts
// with itself.
func lostAnswers(t *testing.T, c *cluster) (version uint64, sets int, casConflicts int) {
	t.Helper()
	ctx := ctxT(t, 2*time.Minute)
	l := c.waitLeader()
	leader, follower := c.nodes[l], c.nodes[c.followers()[0]]
	for _, s := range []*kv.Store{leader, follower} {
		// The write sessions are registered before answers are lost.
		if err := s.Set(ctx, "warm", nil); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 10 {
		for _, s := range []*kv.Store{leader, follower} {
			kv.LoseApplied(leader, 1)
			kv.LoseReplies(follower, 1)
			if err := s.Set(ctx, "ctr", []byte(fmt.Sprint(round))); err != nil {
				t.Fatalf("round %d: Set: %v", round, err)
			}
			sets++
			e, err := s.GetEntry(ctx, "cas")
			if err != nil && !errors.Is(err, kv.ErrNotFound) {
				t.Fatal(err)
			}
			kv.LoseApplied(leader, 1)
			kv.LoseReplies(follower, 1)
			if _, err := s.CompareAndSet(ctx, "cas", []byte(fmt.Sprint(round)), e.ModRev); errors.Is(err, kv.ErrConflict) {
				casConflicts++
			} else if err != nil {
				t.Fatalf("round %d: CompareAndSet: %v", round, err)
			}
		}
	}
	kv.LoseApplied(leader, 0)
	kv.LoseReplies(follower, 0)
	e, err := follower.GetEntry(ctx, "ctr")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d Sets answered nil, Version %d; %d compare-and-sets conflicted with themselves", sets, e.Version, casConflicts)
	return e.Version, sets, casConflicts
}

// A write whose answer is lost is sent again under the same sequence and
// applied once: its Version counts it once, and a retried compare-and-set
// gets its own first result back.
func TestExactlyOnce_LostAnswers(t *testing.T) {
	c := newCluster(t, 3)
	version, sets, conflicts := lostAnswers(t, c)
	if version != uint64(sets) || conflicts != 0 {
		t.Fatalf("%d Sets applied as %d, %d compare-and-sets conflicted: a write was applied twice", sets, version, conflicts)
	}
}

// Negative control: with the session table switched off, the same run
// applies retried writes twice, and the checks above catch it.
func TestExactlyOnce_NegativeControl_SessionsOff(t *testing.T) {
	t.Cleanup(kv.SetSessionsOff()) // after the cluster's cleanup
	c := newCluster(t, 3)
	version, sets, conflicts := lostAnswers(t, c)
	if version == uint64(sets) && conflicts == 0 {
		t.Fatalf("without sessions %d Sets counted %d and no compare-and-set conflicted: the checks would not catch a second apply", sets, version)
	}
}

// Writers on every member while the leader is cut off and comes back, and
// then crashes: every write returns nil in the end (none with
// ErrLeadershipLost), and each is applied once.
func TestExactlyOnce_LeaderChanges(t *testing.T) {
	kc := kvtest.NewCluster(t, 3, kvtest.Logger(testLogger(t)))
	ctx := ctxT(t, 3*time.Minute)
	old, err := kc.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const perWriter = 60
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	counts := make([]int, 3)
	for i := range 3 {
		s := kc.Node(i)
		wg.Go(func() {
			for n := range perWriter {
				if err := s.Set(ctx, fmt.Sprint("w/", i), []byte(fmt.Sprint(n))); err != nil {
					errs <- fmt.Errorf("writer %d, write %d: %w", i, n, err)
					return
				}
				counts[i]++
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	time.Sleep(100 * time.Millisecond)
	kc.Isolate(old)
	if _, err := kc.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	kc.Heal()
	wg.Wait()
	close(errs)
	for err := range errs {
		if errors.Is(err, kv.ErrLeadershipLost) {
			t.Errorf("a write returned ErrLeadershipLost: %v", err)
		}
		t.Fatal(err)
	}
	l, err := kc.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		e, err := kc.Node(l).GetEntry(ctx, fmt.Sprint("w/", i))
		if err != nil {
			t.Fatal(err)
		}
		if e.Version != uint64(counts[i]) || string(e.Value) != fmt.Sprint(perWriter-1) {
			t.Errorf("writer %d: %d writes answered nil, Version %d, last value %q", i, counts[i], e.Version, e.Value)
		}
	}
}

// A Store whose session expires (leader time passes the TTL while it
// writes nothing) registers a new one on its own, and its next writes are
// applied once.
func TestExactlyOnce_SessionExpiresAndRenews(t *testing.T) {
	t.Cleanup(kv.SetSessionLimits(300*time.Millisecond, 16))
	c := newCluster(t, 3)
	ctx := ctxT(t, time.Minute)
	f := c.nodes[c.followers()[0]]
	for round := range 3 {
		if err := f.Set(ctx, "k", []byte(fmt.Sprint(round))); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		time.Sleep(500 * time.Millisecond) // past the TTL, in leader time too
	}
	e, err := c.nodes[0].GetEntry(ctx, "k")
	if err != nil || e.Version != 3 || string(e.Value) != "2" {
		t.Fatalf("k = %+v, %v; want 3 writes, each applied once", e, err)
	}
}
