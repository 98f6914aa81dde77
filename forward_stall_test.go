package kv_test

import (
	"context"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// TestForward_IsolatedLeaderDoesNotStallFollowerWrites: a follower that
// was forwarding a write to the leader when the leader was cut off writes
// through the new leader within a few election timeouts. A lease renewed
// every TTL/3 from a follower depends on it: a follower whose writes stall
// for longer than the TTL loses its leases although the majority, with a
// new leader, is healthy.
//
// The forwarding call's frame write to the cut-off leader blocks (kvtest
// holds the bytes of a cut link, as a full send buffer would); the leader
// change must interrupt it, or the member's write pipeline, which forwards
// one batch at a time, waits behind it for the transport's frame timeout.
func TestForward_IsolatedLeaderDoesNotStallFollowerWrites(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.InMemory(), kvtest.Configure(func(i int, cfg *kv.Config) {
		cfg.HeartbeatTimeout = 300 * time.Millisecond
		cfg.ElectionTimeout = 300 * time.Millisecond
		cfg.LeaderLeaseTimeout = 150 * time.Millisecond
		cfg.DeadMemberTimeout = time.Hour
	}))
	ctx := ctxT(t, 50*time.Second)
	old := c.Leader()
	f := c.Node((old + 1) % c.N())
	if err := f.Set(ctx, "k", []byte("before")); err != nil {
		t.Fatal(err)
	}
	c.Isolate(old)
	cut := time.Now()
	// A write in flight to the old leader as it is cut off (a lease
	// renewal, say); it may take a while.
	first := make(chan error, 1)
	go func() { first <- f.Set(ctx, "k", []byte("in flight")) }()
	for c.Leader() == old {
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("new leader node%d %v after the cut", c.Leader(), time.Since(cut))
	// Once the majority has a new leader, a write from the follower must
	// go through it promptly.
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	start := time.Now()
	err := f.Set(wctx, "k", []byte("after"))
	t.Logf("follower write after the new leader: %v in %v; the in-flight one: %v after the cut", err, time.Since(start), func() time.Duration { <-first; return time.Since(cut) }())
	if err != nil {
		t.Fatalf("a follower's write with a healthy majority failed: %v", err)
	}
	c.Heal()
}
