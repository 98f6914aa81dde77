package kvtest_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// WaitFor returns once the condition holds, and the context's error when
// it never does.
func TestCluster_WaitFor(t *testing.T) {
	c := kvtest.NewCluster(t, 1, kvtest.InMemory())
	calls := 0
	if err := c.WaitFor(ctxT(t, 10*time.Second), func() bool { calls++; return calls == 5 }); err != nil || calls != 5 {
		t.Fatalf("WaitFor a condition true on the 5th call: %v after %d calls", err, calls)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	began := time.Now()
	err := c.WaitFor(ctx, func() bool { return false })
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(began) < 100*time.Millisecond {
		t.Fatalf("WaitFor a condition never true: %v after %v, want DeadlineExceeded after 100 ms", err, time.Since(began))
	}
}

// WaitKeyGone returns once the member has applied the key's deletion, not
// before, and not for a write of another key under it.
func TestCluster_WaitKeyGone(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.InMemory())
	ctx := ctxT(t, 60*time.Second)
	l := c.Node(c.Leader())
	if err := c.WaitKeyGone(ctx, 0, "never-written"); err != nil {
		t.Fatalf("absent key: %v", err)
	}
	const ttl = time.Second
	began := time.Now()
	if err := l.Set(ctx, "k", []byte("v"), kv.TTL(ttl)); err != nil {
		t.Fatal(err)
	}
	// Meanwhile, puts and deletes of another key under its name.
	stop := make(chan struct{})
	writer := make(chan error, 1)
	go func() {
		var err error
		for n := 0; n < 200 && err == nil; n++ {
			select {
			case <-stop:
				writer <- nil
				return
			case <-time.After(20 * time.Millisecond):
			}
			if n%2 == 0 {
				err = l.Set(ctx, "k/child", []byte("x"))
			} else {
				err = l.Delete(ctx, "k/child")
			}
		}
		writer <- err
	}()
	for i := range c.N() {
		if err := c.WaitKeyGone(ctx, i, "k"); err != nil {
			t.Fatalf("node%d: %v", i, err)
		}
		if took := time.Since(began); took < ttl {
			t.Fatalf("node%d: WaitKeyGone returned %v after a write with TTL %v", i, took, ttl)
		}
		if _, err := c.Node(i).Get(ctx, "k", kv.Stale()); !errors.Is(err, kv.ErrNotFound) {
			t.Fatalf("node%d after WaitKeyGone: Get: %v, want ErrNotFound", i, err)
		}
	}
	close(stop)
	if err := <-writer; err != nil {
		t.Fatalf("writing k/child: %v", err)
	}
	if err := l.Set(ctx, "k/child", []byte("x")); err != nil {
		t.Fatal(err)
	}
	for i := range c.N() {
		if err := c.WaitFor(ctx, func() bool {
			_, err := c.Node(i).Get(ctx, "k/child", kv.Stale())
			return err == nil
		}); err != nil {
			t.Fatalf("node%d never applied k/child: %v", i, err)
		}
	}

	// A key that stays: the wait ends with the context, or with the
	// member's stop.
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := c.WaitKeyGone(short, 1, "k/child"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a key that stays: %v, want DeadlineExceeded", err)
	}
	f := (c.Leader() + 1) % 3
	done := make(chan error, 1)
	go func() { done <- c.WaitKeyGone(ctx, f, "k/child") }()
	c.Stop(f)
	select {
	case err := <-done:
		// ErrClosed if the stop came during the watch; "not running" if
		// it came before WaitKeyGone took the member.
		if err == nil || !errors.Is(err, kv.ErrClosed) && !strings.Contains(err.Error(), "not running") {
			t.Fatalf("the member stopped under WaitKeyGone: %v, want ErrClosed", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("WaitKeyGone still waiting 30 s after its member stopped")
	}
	if err := c.WaitKeyGone(ctx, f, "k/child"); err == nil {
		t.Fatal("WaitKeyGone on a stopped member: nil error")
	}
}

// WaitLeaseExpired returns once every running member has applied the
// lease's end, with its keys gone; not while it is alive.
func TestCluster_WaitLeaseExpired(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.InMemory())
	ctx := ctxT(t, 60*time.Second)
	l := c.Node(c.Leader())
	const ttl = time.Second
	began := time.Now()
	id, err := l.Grant(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b"} {
		if err := l.Set(ctx, k, []byte("v"), kv.WithLease(id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.WaitLeaseExpired(ctx, id); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took < ttl {
		t.Fatalf("WaitLeaseExpired returned %v after a grant with TTL %v", took, ttl)
	}
	for i := range c.N() {
		for _, k := range []string{"a", "b"} {
			if _, err := c.Node(i).Get(ctx, k, kv.Stale()); !errors.Is(err, kv.ErrNotFound) {
				t.Fatalf("node%d after WaitLeaseExpired: Get(%q): %v, want ErrNotFound", i, k, err)
			}
		}
	}
	if _, err := l.KeepAlive(ctx, id); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Fatalf("KeepAlive after WaitLeaseExpired: %v, want ErrLeaseNotFound", err)
	}

	// A lease that lives: the wait ends with the context; revoked, it
	// returns.
	long, err := l.Grant(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := c.WaitLeaseExpired(short, long); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a live lease: %v, want DeadlineExceeded", err)
	}
	if err := l.Revoke(ctx, long); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitLeaseExpired(ctx, long); err != nil {
		t.Fatalf("a revoked lease: %v", err)
	}
}
