package kv_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// outcomes sorts the results of writes k/00000.. into applied (nil),
// never sent (a plain ErrClosed) and unknown (ErrOutcomeUnknown), and
// fails on anything else.
func outcomes(t *testing.T, futs []*kv.Future) (ok, notSent, unknown []int) {
	t.Helper()
	for i, f := range futs {
		switch err := f.Wait(context.Background()); {
		case err == nil:
			ok = append(ok, i)
		case errors.Is(err, kv.ErrOutcomeUnknown):
			if !errors.Is(err, kv.ErrClosed) {
				t.Errorf("write %d: %v: an unknown outcome without ErrClosed", i, err)
			}
			if len(unknown) == 0 {
				t.Logf("first unknown outcome: write %d: %v", i, err)
			}
			unknown = append(unknown, i)
		case errors.Is(err, kv.ErrClosed):
			notSent = append(notSent, i)
		default:
			t.Fatalf("write %d: %v", i, err)
		}
	}
	return ok, notSent, unknown
}

func key(i int) string { return fmt.Sprintf("k/%05d", i) }

// Close with writes in flight on a single member: a write answered nil is
// there after a restart, one answered with a plain ErrClosed (never sent)
// is not.
func TestWrite_CloseWithWritesInFlight_Leader(t *testing.T) {
	sawNotSent := false
	for round := range 4 {
		dir := t.TempDir()
		cfg := kv.Config{NodeID: "solo", DataDir: dir, Logger: testLogger(t)}
		s, err := kv.Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx := ctxT(t, time.Minute)
		if err := s.WaitForLeader(ctx); err != nil {
			t.Fatal(err)
		}
		futs := make([]*kv.Future, 4000)
		for i := range futs {
			futs[i] = s.SetAsync(key(i), []byte("v"))
			if i == 1000*round {
				go s.Close()
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		ok, notSent, unknown := outcomes(t, futs)
		t.Logf("round %d: %d applied, %d never sent, %d unknown", round, len(ok), len(notSent), len(unknown))
		sawNotSent = sawNotSent || len(notSent) > 0
		s, err = kv.Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.WaitForLeader(ctx); err != nil {
			t.Fatal(err)
		}
		for _, i := range ok {
			if _, err := s.Get(ctx, key(i)); err != nil {
				t.Fatalf("round %d: write %d answered nil: Get after restart: %v", round, i, err)
			}
		}
		for _, i := range notSent {
			if _, err := s.Get(ctx, key(i)); !errors.Is(err, kv.ErrNotFound) {
				t.Fatalf("round %d: write %d answered with a plain ErrClosed: Get after restart: %v, want ErrNotFound", round, i, err)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if !sawNotSent {
		t.Errorf("no write was caught in the queue by Close")
	}
}

// Close of a follower with writes in flight: writes answered with a plain
// ErrClosed never reach the leader; those answered nil do.
func TestWrite_CloseWithWritesInFlight_Follower(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.Logger(testLogger(t)))
	ctx := ctxT(t, 2*time.Minute)
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f := (leader + 1) % 3
	s := c.Node(f)
	futs := make([]*kv.Future, 4000)
	for i := range futs {
		futs[i] = s.SetAsync(key(i), []byte("v"))
		if i == 2000 {
			go c.Stop(f)
		}
	}
	ok, notSent, unknown := outcomes(t, futs)
	t.Logf("%d applied, %d never sent, %d unknown", len(ok), len(notSent), len(unknown))
	if len(notSent) == 0 {
		t.Errorf("no write was caught in the queue by Close")
	}
	l := c.Node(leader)
	for _, i := range ok {
		if _, err := l.Get(ctx, key(i)); err != nil {
			t.Fatalf("write %d answered nil: Get on the leader: %v", i, err)
		}
	}
	for _, i := range notSent {
		if _, err := l.Get(ctx, key(i)); !errors.Is(err, kv.ErrNotFound) {
			t.Fatalf("write %d answered with a plain ErrClosed: Get on the leader: %v, want ErrNotFound", i, err)
		}
	}
}

// A write whose ctx ends after it was handed to Raft (on the leader) or
// sent to the leader (on a follower) reports ctx's error and
// ErrOutcomeUnknown: here every message between members takes 100 ms, so
// no write commits within its 30 ms.
func TestWrite_CtxEndsAfterSend_OutcomeUnknown(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.Logger(testLogger(t)))
	ctx := ctxT(t, 2*time.Minute)
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{leader, (leader + 1) % 3} {
		// A write first, so that the member's write session is registered
		// before the slow network: the write below is sent at once.
		if err := c.Node(i).Set(ctx, fmt.Sprintf("warm/%d", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	c.SetLatency(100 * time.Millisecond)
	defer c.SetLatency(0)
	for _, i := range []int{leader, (leader + 1) % 3} {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
		err := c.Node(i).Set(wctx, fmt.Sprintf("slow/%d", i), []byte("v"))
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, kv.ErrOutcomeUnknown) {
			t.Errorf("member %d (leader %d): %v, want DeadlineExceeded and ErrOutcomeUnknown", i, leader, err)
		}
	}
}
