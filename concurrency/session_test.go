package concurrency

import (
	"errors"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
)

// A session keeps its lease, and the keys attached to it, alive past its
// TTL for as long as it is open; Close revokes the lease (the keys go at
// once), ends Done, and is idempotent.
func TestSession_KeepsAliveUntilClose(t *testing.T) {
	c := newCluster(t)
	ctx := ctxT(t, 30*time.Second)
	sess := newSession(t, c.Node(1))
	if err := c.Node(1).Set(ctx, "alive/1", []byte("x"), kv.WithLease(sess.Lease())); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2*testTTL + testTTL/2)
	select {
	case <-sess.Done():
		t.Fatal("an open session is Done")
	default:
	}
	if _, err := c.Node(2).Get(ctx, "alive/1"); err != nil {
		t.Fatalf("a key of an open session, 2.5 TTLs on: %v", err)
	}
	if err := sess.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sess.Done():
	default:
		t.Fatal("a closed session is not Done")
	}
	if _, err := c.Node(2).Get(ctx, "alive/1"); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("a key of a closed session: %v, want ErrNotFound", err)
	}
	if _, err := c.Node(0).KeepAlive(ctx, sess.Lease()); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Fatalf("KeepAlive of a closed session's lease: %v, want ErrLeaseNotFound", err)
	}
	if err := sess.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := NewMutex(sess, "locks/closed").Lock(ctx); !errors.Is(err, ErrSessionLost) {
		t.Fatalf("Lock on a closed session: %v, want ErrSessionLost", err)
	}
}

// A session whose lease is revoked behind its back (as an expiry would)
// learns it from its next renewal: Done closes.
func TestSession_DoneWhenLeaseRevoked(t *testing.T) {
	c := newCluster(t)
	ctx := ctxT(t, 30*time.Second)
	sess := newSession(t, c.Node(0))
	if err := c.Node(2).Revoke(ctx, sess.Lease()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sess.Done():
	case <-time.After(testTTL):
		t.Fatal("the session of a revoked lease is not Done after a TTL")
	}
	if err := sess.Close(); err != nil {
		t.Fatalf("Close of a lost session: %v", err)
	}
}
