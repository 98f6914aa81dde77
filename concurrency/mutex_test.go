package concurrency

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
)

// Goroutines on every member take turns on one lock and each increments a
// counter with a read-modify-write guarded by IsOwner: no two hold the lock
// at once, every guarded write succeeds, and no increment is lost.
func TestMutex_MutualExclusion(t *testing.T) {
	c := newCluster(t)
	ctx := ctxT(t, 50*time.Second)
	const workers, rounds = 6, 5
	var inside, overlaps, failed atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := time.Now()
	for w := range workers {
		s := c.Node(w % c.N())
		m := NewMutex(newSession(t, s), "locks/counter")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				if err := m.Lock(ctx); err != nil {
					errs <- fmt.Errorf("worker %d: lock: %w", w, err)
					return
				}
				if inside.Add(1) > 1 {
					overlaps.Add(1)
				}
				n := 0
				e, err := s.GetEntry(ctx, "counter")
				if err == nil {
					n, _ = strconv.Atoi(string(e.Value))
				} else if !errors.Is(err, kv.ErrNotFound) {
					errs <- err
					return
				}
				time.Sleep(2 * time.Millisecond) // widen the window a second holder would use
				ok, err := guardedSet(ctx, s, m.IsOwner(), "counter", strconv.Itoa(n+1))
				if err != nil {
					errs <- err
					return
				}
				if !ok {
					failed.Add(1)
				}
				inside.Add(-1)
				if err := m.Unlock(ctx); err != nil {
					errs <- fmt.Errorf("worker %d: unlock: %w", w, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	v, err := c.Node(0).Get(ctx, "counter")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d lock holds in %v", workers*rounds, time.Since(start))
	if got := string(v); got != strconv.Itoa(workers*rounds) {
		t.Errorf("counter = %s, want %d: increments were lost", got, workers*rounds)
	}
	if n := overlaps.Load(); n > 0 {
		t.Errorf("%d times a holder took the lock while another held it", n)
	}
	if n := failed.Load(); n > 0 {
		t.Errorf("%d IsOwner-guarded writes of a holder failed", n)
	}
}

// Waiters acquire in the order they queued (their keys' CreateRev), not
// in the order of their keys (lease IDs): the sessions are opened in one
// order and queue in the reverse one.
func TestMutex_FairOrder(t *testing.T) {
	c := newCluster(t)
	ctx := ctxT(t, 40*time.Second)
	const n = 5
	holder := NewMutex(newSession(t, c.Node(0)), "locks/fair")
	if err := holder.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	waiters := make([]*Mutex, n)
	for i := range waiters {
		waiters[i] = NewMutex(newSession(t, c.Node(i%c.N())), "locks/fair")
	}
	var mu sync.Mutex
	var order []int
	var revs []uint64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for q := range n {
		i := n - 1 - q // the newest session queues first
		m := waiters[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.Lock(ctx); err != nil {
				errs <- err
				return
			}
			mu.Lock()
			order = append(order, i)
			revs = append(revs, m.Rev())
			mu.Unlock()
			if err := m.Unlock(ctx); err != nil {
				errs <- err
			}
		}()
		waitFor(t, 10*time.Second, "a waiter's key never appeared", func() bool {
			return queueLen(t, c.Node(0), "locks/fair") == q+2
		})
	}
	if err := holder.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	want := []int{4, 3, 2, 1, 0}
	if !slices.Equal(order, want) {
		t.Errorf("acquired in order %v, queued in order %v", order, want)
	}
	if !slices.IsSorted(revs) {
		t.Errorf("fencing tokens in acquisition order: %v, not increasing", revs)
	}
}

// A Lock whose ctx ends while it waits takes its key out of the queue: the
// next waiter is not held up behind it.
func TestMutex_LockCancelledLeavesQueue(t *testing.T) {
	c := newCluster(t)
	ctx := ctxT(t, 30*time.Second)
	holder := NewMutex(newSession(t, c.Node(0)), "locks/cancel")
	if err := holder.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	quitter := NewMutex(newSession(t, c.Node(1)), "locks/cancel")
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err := quitter.Lock(short)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock with a short ctx: %v, want context.DeadlineExceeded", err)
	}
	if n := queueLen(t, c.Node(2), "locks/cancel"); n != 1 {
		t.Fatalf("%d keys queued after the cancelled Lock, want the holder's only", n)
	}
	if ok, err := guardedSet(ctx, c.Node(1), quitter.IsOwner(), "x", "quitter"); err != nil || ok {
		t.Fatalf("a cancelled Lock's IsOwner held: %v, %v", ok, err)
	}
	if err := holder.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	next := NewMutex(newSession(t, c.Node(2)), "locks/cancel")
	if err := next.TryLock(ctx); err != nil {
		t.Fatalf("TryLock after the holder's Unlock: %v", err)
	}
	if err := holder.TryLock(ctx); !errors.Is(err, ErrLocked) {
		t.Fatalf("TryLock of a held lock: %v, want ErrLocked", err)
	}
	if n := queueLen(t, c.Node(0), "locks/cancel"); n != 1 {
		t.Fatalf("%d keys queued after a TryLock that failed, want 1", n)
	}
}

// A holder whose member crashes loses its lease about a TTL after its last
// renewal; a waiter on another member then takes the lock, and the dead
// holder's IsOwner-guarded write fails, wherever it is sent.
func TestMutex_KilledHolderLosesLock(t *testing.T) {
	c := newCluster(t)
	ctx := ctxT(t, 40*time.Second)
	a := c.Leader() // the worst case: the leader goes too, and a new one must be elected
	b := (a + 1) % c.N()
	sessA := newSession(t, c.Node(a))
	ma := NewMutex(sessA, "locks/kill")
	if err := ma.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	mb := NewMutex(newSession(t, c.Node(b)), "locks/kill")
	acquired := make(chan error, 1)
	go func() { acquired <- mb.Lock(ctx) }()
	waitFor(t, 10*time.Second, "the waiter never queued", func() bool {
		return queueLen(t, c.Node(b), "locks/kill") == 2
	})
	storeA := c.Node(a)
	killed := time.Now()
	c.Kill(a)
	if err := <-acquired; err != nil {
		t.Fatalf("the waiter's Lock after the holder's member was killed: %v", err)
	}
	took := time.Since(killed)
	t.Logf("lock taken over %v after the holder's member was killed (TTL %v)", took, testTTL)
	if took < testTTL/2 {
		t.Errorf("lock taken over %v after the kill: the lease, renewed every TTL/3, must outlive it by at least 2/3 of its TTL", took)
	}
	select {
	case <-sessA.Done():
	case <-time.After(5 * time.Second):
		t.Error("the killed member's session is not Done")
	}
	if ok, err := guardedSet(ctx, c.Node(b), ma.IsOwner(), "resource", "A"); err != nil || ok {
		t.Errorf("the dead holder's guarded write through a live member: succeeded=%v, %v", ok, err)
	}
	if ok, err := guardedSet(ctx, storeA, ma.IsOwner(), "resource", "A"); err == nil || ok {
		t.Errorf("the dead holder's guarded write through its own member: succeeded=%v, %v", ok, err)
	}
	if ok, err := guardedSet(ctx, c.Node(b), mb.IsOwner(), "resource", "B"); err != nil || !ok {
		t.Fatalf("the new holder's guarded write: succeeded=%v, %v", ok, err)
	}
	if ma.Rev() >= mb.Rev() {
		t.Errorf("fencing tokens: old holder %d, new holder %d: not increasing", ma.Rev(), mb.Rev())
	}
}

// Fencing: the holder's member is cut off; its lease expires, and another
// session takes the lock and writes. A write the old holder sent during
// the partition, and one it sends after the heal, both guarded by IsOwner,
// do not succeed: never do both holders' guarded writes.
func TestMutex_FencingAcrossPartition(t *testing.T) {
	t.Run("holder on a follower", func(t *testing.T) { fencingAcrossPartition(t, false) })
	t.Run("holder on the leader", func(t *testing.T) { fencingAcrossPartition(t, true) })
}

func fencingAcrossPartition(t *testing.T, onLeader bool) {
	c := newCluster(t)
	ctx := ctxT(t, 50*time.Second)
	// The holder's member is cut off: a follower, or the leader itself
	// (the others elect a new one, which expires the holder's lease).
	l := c.Leader()
	a, b := (l+1)%c.N(), (l+2)%c.N()
	if onLeader {
		a, b = l, (l+1)%c.N()
	}
	sessA := newSession(t, c.Node(a))
	ma := NewMutex(sessA, "locks/fence")
	if err := ma.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := guardedSet(ctx, c.Node(a), ma.IsOwner(), "resource", "A1"); err != nil || !ok {
		t.Fatalf("the holder's guarded write before the partition: %v, %v", ok, err)
	}
	mb := NewMutex(newSession(t, c.Node(b)), "locks/fence")
	acquired := make(chan error, 1)
	go func() { acquired <- mb.Lock(ctx) }()
	waitFor(t, 10*time.Second, "the waiter never queued", func() bool {
		return queueLen(t, c.Node(b), "locks/fence") == 2
	})

	cut := time.Now()
	c.Isolate(a)
	// A, unaware, writes under the lock it believes it holds: the write
	// stalls behind the partition, and keeps being retried.
	type result struct {
		ok  bool
		err error
	}
	late := make(chan result, 1)
	go func() {
		ok, err := guardedSet(ctx, c.Node(a), ma.IsOwner(), "resource", "A2")
		late <- result{ok, err}
	}()

	select {
	case <-sessA.Done():
		t.Logf("the cut-off holder's session was Done %v after the cut", time.Since(cut))
	case <-time.After(testTTL + 2*time.Second):
		t.Fatal("the cut-off holder's session is not Done a TTL after the cut")
	}
	if err := ma.Lock(ctx); !errors.Is(err, ErrSessionLost) {
		t.Errorf("Lock on a lost session: %v, want ErrSessionLost", err)
	}
	if err := <-acquired; err != nil {
		t.Fatalf("the waiter's Lock while the holder is cut off: %v", err)
	}
	t.Logf("lock taken over %v after the cut", time.Since(cut))
	okB, err := guardedSet(ctx, c.Node(b), mb.IsOwner(), "resource", "B")
	if err != nil || !okB {
		t.Fatalf("the new holder's guarded write: %v, %v", okB, err)
	}

	c.Heal()
	r := <-late
	t.Logf("the old holder's write sent during the partition: succeeded=%v, err=%v", r.ok, r.err)
	if r.ok && okB {
		t.Error("both holders' guarded writes succeeded")
	}
	okA, err := guardedSet(ctx, c.Node(a), ma.IsOwner(), "resource", "A3")
	if err != nil {
		t.Fatalf("the old holder's guarded write after the heal: %v", err)
	}
	if okA {
		t.Error("the old holder's guarded write after the heal succeeded")
	}
	if v, err := c.Node(a).Get(ctx, "resource"); err != nil || string(v) != "B" {
		t.Errorf("resource = %q (%v), want the new holder's B", v, err)
	}
}

// Waiters whose keys were created in one Raft entry share a CreateRev (the
// leader group-commits concurrent writes): they are still served one at a
// time, in the order of their keys' names, and each holder's fencing token
// is a revision of its own, above the last holder's.
func TestMutex_KeysOfOneRevisionTakeTurns(t *testing.T) {
	c := newCluster(t)
	s := c.Node(0)
	ctx := ctxT(t, 30*time.Second)
	const n = 3
	var ms []*Mutex
	var ops []kv.Op
	for i := 0; i < n; i++ {
		sess := newSession(t, s)
		m := NewMutex(sess, "same")
		ms = append(ms, m)
		ops = append(ops, kv.OpSet(m.Key(), nil, kv.WithLease(sess.Lease())))
	}
	// The waiters' keys, created at one revision as group commit would.
	if _, err := s.Txn(ctx, kv.Txn{Then: ops}); err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		holders int
		overlap int
		tokens  []uint64
		wg      sync.WaitGroup
	)
	for _, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.Lock(ctx); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			holders++
			if holders > 1 {
				overlap++
			}
			tokens = append(tokens, m.Rev())
			mu.Unlock()
			time.Sleep(50 * time.Millisecond)
			mu.Lock()
			holders--
			mu.Unlock()
			if err := m.Unlock(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if overlap > 0 {
		t.Errorf("%d times a holder took the lock while another held it", overlap)
	}
	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			t.Errorf("fencing tokens %v: not strictly growing", tokens)
		}
	}
}
