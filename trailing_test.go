package kv_test

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// After a bulk load of large values, a snapshot leaves about
// TrailingBytes of entries in the log, not TrailingLogs of them; a
// follower a few entries behind still catches up from the log, and one
// that missed the load gets a snapshot.
func TestTrailingBytes_BoundsTheLogAfterASnapshot(t *testing.T) {
	const (
		trailing = 256 << 10
		value    = 64 << 10
		values   = 64 // 4 MiB
	)
	c := kvtest.NewCluster(t, 3, kvtest.Configure(func(i int, cfg *kv.Config) {
		cfg.TrailingBytes = trailing
		cfg.SnapshotBytes = 1 << 20
	}))
	ctx := ctxT(t, 120*time.Second)
	li := c.Leader()
	far, near := (li+1)%3, (li+2)%3
	c.Stop(far)
	l := c.Node(li)
	for i := 0; i < values; i++ { // one entry each
		if err := l.Set(ctx, fmt.Sprintf("big/%02d", i), bytes.Repeat([]byte{byte('a' + i%26)}, value)); err != nil {
			t.Fatal(err)
		}
	}
	if err := kv.TakeSnapshot(l); err != nil {
		t.Fatal(err)
	}
	first, last, n, err := kv.LogBytes(l)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after the load and a snapshot: entries %d..%d, %d bytes in the log", first, last, n)
	if n > trailing+value+4096 {
		t.Fatalf("the log keeps %d bytes (entries %d..%d) after a snapshot; TrailingBytes is %d", n, first, last, trailing)
	}
	if last-first < 2 {
		t.Fatalf("the log keeps entries %d..%d only", first, last)
	}

	// The follower that missed the load is sent a snapshot.
	leaderSnap := l.Stats().LastSnapshotIndex
	c.Restart(far)
	waitValue(t, c.Node(far), fmt.Sprintf("big/%02d", values-1), string(bytes.Repeat([]byte{byte('a' + (values-1)%26)}, value)))
	if got := c.Node(far).Stats().LastSnapshotIndex; got < leaderSnap {
		t.Errorf("the follower that missed the load: snapshot index %d, the leader's is %d", got, leaderSnap)
	}

	// A follower a few small entries behind catches up from the log.
	nearSnap := c.Node(near).Stats().LastSnapshotIndex
	c.Stop(near)
	for i := 0; i < 3; i++ {
		if err := l.Set(ctx, fmt.Sprintf("small/%d", i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := kv.TakeSnapshot(l); err != nil {
		t.Fatal(err)
	}
	c.Restart(near)
	waitValue(t, c.Node(near), "small/2", "x")
	if got := c.Node(near).Stats().LastSnapshotIndex; got != nearSnap {
		t.Errorf("the follower a few entries behind installed a snapshot (index %d, had %d)", got, nearSnap)
	}
	sameEverywhere(t, c)
}

// waitValue waits until s serves key with value, read locally.
func waitValue(t *testing.T, s *kv.Store, key, value string) {
	t.Helper()
	ctx := ctxT(t, 60*time.Second)
	for {
		v, err := s.Get(ctx, key, kv.Stale())
		if err == nil && string(v) == value {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("%s: %q, %v; want %q", key, v, err, value)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
