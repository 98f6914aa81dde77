package concurrency

import (
	"context"
	"errors"
	"testing"
	"time"
)

// recv returns the next value of ch, failing the test after 10 s.
func recv(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case v, ok := <-ch:
		if !ok {
			t.Fatal("Observe's channel closed early")
		}
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("Observe sent nothing for 10 s")
	}
	return ""
}

// Campaign, Leader, Proclaim, Resign and Observe on three members; the
// leadership passes on when the leader resigns and when its session
// closes, and only the leader's IsLeader holds.
func TestElection_CampaignResignObserve(t *testing.T) {
	c := newCluster(t)
	ctx := ctxT(t, 50*time.Second)
	sessions := []*Session{newSession(t, c.Node(0)), newSession(t, c.Node(1)), newSession(t, c.Node(2))}
	e0 := NewElection(sessions[0], "elect/svc")
	e1 := NewElection(sessions[1], "elect/svc")
	e2 := NewElection(sessions[2], "elect/svc")

	if _, err := e2.Leader(ctx); !errors.Is(err, ErrElectionNoLeader) {
		t.Fatalf("Leader before any campaign: %v, want ErrElectionNoLeader", err)
	}
	octx, stopObserve := context.WithCancel(ctx)
	defer stopObserve()
	observed := e2.Observe(octx)

	if err := e0.Campaign(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if v, err := e1.Leader(ctx); err != nil || v != "a" {
		t.Fatalf("Leader = %q, %v; want a", v, err)
	}
	if v := recv(t, observed); v != "a" {
		t.Fatalf("observed %q, want a", v)
	}

	won1 := make(chan error, 1)
	go func() { won1 <- e1.Campaign(ctx, "b") }()
	waitFor(t, 10*time.Second, "the second candidate never queued", func() bool {
		return queueLen(t, c.Node(0), "elect/svc") == 2
	})
	select {
	case err := <-won1:
		t.Fatalf("a second candidate won while the first leads: %v", err)
	case <-time.After(200 * time.Millisecond):
	}

	if err := e0.Proclaim(ctx, "a2"); err != nil {
		t.Fatal(err)
	}
	if v := recv(t, observed); v != "a2" {
		t.Fatalf("observed %q after Proclaim, want a2", v)
	}
	if ok, err := guardedSet(ctx, c.Node(1), e1.IsLeader(), "x", "e1"); err != nil || ok {
		t.Fatalf("a candidate's IsLeader held: %v, %v", ok, err)
	}
	if ok, err := guardedSet(ctx, c.Node(0), e0.IsLeader(), "x", "e0"); err != nil || !ok {
		t.Fatalf("the leader's IsLeader did not hold: %v, %v", ok, err)
	}
	if err := e1.Proclaim(ctx, "nope"); !errors.Is(err, ErrElectionNotLeader) {
		t.Fatalf("Proclaim by a candidate: %v, want ErrElectionNotLeader", err)
	}

	rev0 := e0.Rev()
	if err := e0.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-won1; err != nil {
		t.Fatalf("the second candidate's Campaign after the leader resigned: %v", err)
	}
	if v := recv(t, observed); v != "b" {
		t.Fatalf("observed %q after Resign, want b", v)
	}
	if e1.Rev() <= rev0 {
		t.Errorf("leader revisions: %d then %d, not increasing", rev0, e1.Rev())
	}
	if ok, err := guardedSet(ctx, c.Node(0), e0.IsLeader(), "x", "e0"); err != nil || ok {
		t.Fatalf("a resigned leader's IsLeader held: %v, %v", ok, err)
	}

	won2 := make(chan error, 1)
	go func() { won2 <- e2.Campaign(ctx, "c") }()
	waitFor(t, 10*time.Second, "the third candidate never queued", func() bool {
		return queueLen(t, c.Node(0), "elect/svc") == 2
	})
	if err := sessions[1].Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-won2; err != nil {
		t.Fatalf("the third candidate's Campaign after the leader's session closed: %v", err)
	}
	if v := recv(t, observed); v != "c" {
		t.Fatalf("observed %q after the leader's session closed, want c", v)
	}
	if v, err := e0.Leader(ctx); err != nil || v != "c" {
		t.Fatalf("Leader = %q, %v; want c", v, err)
	}
	if err := e1.Campaign(ctx, "b again"); !errors.Is(err, ErrSessionLost) {
		t.Fatalf("Campaign on a closed session: %v, want ErrSessionLost", err)
	}

	stopObserve()
	select {
	case _, ok := <-observed:
		for ok {
			_, ok = <-observed
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Observe's channel not closed after its ctx ended")
	}
}

// A Campaign whose ctx ends while it waits withdraws its candidacy.
func TestElection_CampaignCancelledWithdraws(t *testing.T) {
	c := newCluster(t)
	ctx := ctxT(t, 30*time.Second)
	leader := NewElection(newSession(t, c.Node(0)), "elect/cancel")
	if err := leader.Campaign(ctx, "leader"); err != nil {
		t.Fatal(err)
	}
	e := NewElection(newSession(t, c.Node(1)), "elect/cancel")
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err := e.Campaign(short, "late")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Campaign with a short ctx: %v, want context.DeadlineExceeded", err)
	}
	if n := queueLen(t, c.Node(2), "elect/cancel"); n != 1 {
		t.Fatalf("%d candidates after the cancelled Campaign, want 1", n)
	}
}
