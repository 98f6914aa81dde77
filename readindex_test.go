package kv_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// readCluster starts a 3-member kvtest cluster and returns it with the
// index of its leader and of one follower.
func readCluster(t *testing.T) (c *kvtest.Cluster, leader, follower int) {
	t.Helper()
	c = kvtest.NewCluster(t, 3, kvtest.Logger(testLogger(t)))
	leader = c.Leader()
	return c, leader, (leader + 1) % 3
}

// holdReadIndex makes the leader's read index requests wait, once they have
// taken the commit index, until release is called (or 10 s pass). entered
// receives a value each time a request starts waiting.
func holdReadIndex(t *testing.T, s *kv.Store) (entered <-chan struct{}, release func()) {
	t.Helper()
	in := make(chan struct{}, 64)
	gate := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(gate) }) }
	kv.SetReadIndexHook(s, func() {
		select {
		case in <- struct{}{}:
		default:
		}
		select {
		case <-gate:
		case <-time.After(10 * time.Second):
		}
	})
	t.Cleanup(func() { release(); kv.SetReadIndexHook(s, nil) })
	return in, release
}

// waitJoins polls until n more reads on s than before have joined a read
// index round.
func waitJoins(t *testing.T, s *kv.Store, before uint64, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for kv.ReadIndexJoins(s) < before+uint64(n) {
		if time.Now().After(deadline) {
			t.Fatalf("%d reads joined a round, want %d", kv.ReadIndexJoins(s)-before, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// Concurrent linearizable reads on a follower share read index requests:
// far fewer go to the leader than there are reads.
func TestStore_FollowerReads_ShareReadIndexRequests(t *testing.T) {
	c, leader, f := readCluster(t)
	ctx := ctxT(t, 60*time.Second)
	if err := c.Node(leader).Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	s := c.Node(f)
	const readers, each = 64, 20
	before := kv.ReadIndexRPCs(s)
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for g := 0; g < readers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if v, err := s.Get(ctx, "k"); err != nil || string(v) != "v" {
					errs <- fmt.Errorf("get: %q, %v", v, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	rpcs := kv.ReadIndexRPCs(s) - before
	t.Logf("%d reads, %d read index requests", readers*each, rpcs)
	if rpcs == 0 || rpcs > readers*each/4 {
		t.Fatalf("%d read index requests for %d reads, want at most a quarter", rpcs, readers*each)
	}
}

// A read on a follower that starts after a write returned on another member
// sees it, while other reads on that follower keep read index requests in
// flight all the time.
func TestStore_FollowerRead_SeesWriteAcknowledgedBefore(t *testing.T) {
	c, _, f := readCluster(t)
	ctx := ctxT(t, 60*time.Second)
	s, w := c.Node(f), c.Node((f+1)%3) // w: the leader or the other follower
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var bgErr atomic.Value
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := s.Get(ctx, "other"); err != nil && !errors.Is(err, kv.ErrNotFound) {
					bgErr.Store(err)
					return
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	end := time.Now().Add(5 * time.Second)
	n := 0
	for ; n < 300 && time.Now().Before(end); n++ {
		want := fmt.Sprint(n)
		if err := w.Set(ctx, "k", []byte(want)); err != nil {
			t.Fatal(err)
		}
		v, err := s.Get(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		if string(v) != want {
			t.Fatalf("round %d: read on node%d after the write returned got %q, want %q", n, f, v, want)
		}
	}
	if err, _ := bgErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d writes, each read back on node%d", n, f)
}

// A read that starts while a read index request is in flight does not take
// that request's index: the leader may have taken it before a write that
// returned before the read began. Here the leader holds the request in
// flight after taking its commit index, a write then commits without the
// follower (cut one way from the leader), and a read started after it must
// still see it.
func TestStore_FollowerRead_DoesNotJoinRequestInFlight(t *testing.T) {
	c, leader, f := readCluster(t)
	ctx := ctxT(t, 60*time.Second)
	l, s := c.Node(leader), c.Node(f)
	if err := l.Set(ctx, "k", []byte("old")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "k"); err != nil { // s has applied "old"
		t.Fatal(err)
	}
	entered, release := holdReadIndex(t, l)
	first := make(chan error, 1)
	go func() { _, err := s.Get(ctx, "k"); first <- err }()
	select {
	case <-entered: // the leader took its commit index: "old"
	case <-time.After(10 * time.Second):
		t.Fatal("the read index request did not reach the leader")
	}
	// s holds everything the leader had applied, so a read that took the
	// request's index would not wait for the cut to heal.
	for end := time.Now().Add(5 * time.Second); s.Stats().AppliedIndex < l.Stats().AppliedIndex; {
		if time.Now().After(end) {
			t.Fatal("the follower does not catch up")
		}
		time.Sleep(time.Millisecond)
	}
	c.CutOneWay(leader, f) // s gets no log entries, its requests still pass
	defer c.Heal()
	if err := l.Set(ctx, "k", []byte("new")); err != nil {
		t.Fatal(err)
	}
	joins := kv.ReadIndexJoins(s)
	second := make(chan []byte, 1)
	secondErr := make(chan error, 1)
	go func() {
		v, err := s.Get(ctx, "k")
		second <- v
		secondErr <- err
	}()
	waitJoins(t, s, joins, 1)
	release()
	time.Sleep(100 * time.Millisecond) // a stale read would return now
	c.Heal()
	if err := <-first; err != nil {
		t.Fatalf("first read: %v", err)
	}
	v, err := <-second, <-secondErr
	if err != nil {
		t.Fatalf("second read: %v", err)
	}
	if string(v) != "new" {
		t.Fatalf("a read started after the write returned got %q, want %q", v, "new")
	}
}

// A read whose ctx ends leaves the request it joined running for the other
// reads that joined it: they get its answer and no other request is sent.
func TestStore_FollowerRead_CallerCtxEndLeavesRequestForOthers(t *testing.T) {
	c, leader, f := readCluster(t)
	ctx := ctxT(t, 60*time.Second)
	l, s := c.Node(leader), c.Node(f)
	if err := l.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	entered, release := holdReadIndex(t, l)
	// One read holds a request in flight; the next two join the next one.
	go func() { s.Get(ctx, "k") }()
	<-entered
	joins, rpcs := kv.ReadIndexJoins(s), kv.ReadIndexRPCs(s)
	short, cancel := context.WithCancel(ctx)
	shortErr := make(chan error, 1)
	go func() { _, err := s.Get(short, "k"); shortErr <- err }()
	waitJoins(t, s, joins, 1) // the request is the short read's first
	longErr := make(chan error, 1)
	go func() {
		v, err := s.Get(ctx, "k")
		if err == nil && string(v) != "v" {
			err = fmt.Errorf("got %q", v)
		}
		longErr <- err
	}()
	waitJoins(t, s, joins+1, 1)
	cancel()
	select {
	case err := <-shortErr:
		if !errors.Is(err, context.Canceled) || !errors.Is(err, kv.ErrNoLeader) {
			t.Fatalf("cancelled read: %v, want context.Canceled and ErrNoLeader", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the cancelled read still waits")
	}
	release()
	if err := <-longErr; err != nil {
		t.Fatalf("the read that went on waiting: %v", err)
	}
	if n := kv.ReadIndexRPCs(s) - rpcs; n != 1 {
		t.Fatalf("%d read index requests after the one in flight, want 1", n)
	}
}

// Close on a follower with reads waiting on a request in flight ends them
// with ErrClosed and stops the goroutine that sends the requests.
func TestStore_FollowerRead_CloseStopsRequests(t *testing.T) {
	before := goleak.IgnoreCurrent()
	c, leader, f := readCluster(t)
	ctx := ctxT(t, 60*time.Second)
	l, s := c.Node(leader), c.Node(f)
	if err := l.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	entered, release := holdReadIndex(t, l)
	errs := make(chan error, 8)
	for i := 0; i < cap(errs); i++ {
		go func() { _, err := s.Get(ctx, "k"); errs <- err }()
	}
	<-entered
	c.Stop(f)
	// Close waited for the goroutine that sends the requests, though the
	// leader still holds the one in flight.
	if st := goroutines(); strings.Contains(st, "runReadIndex") {
		t.Fatalf("the read index runner outlived Close:\n%s", st)
	}
	for i := 0; i < cap(errs); i++ {
		select {
		case err := <-errs:
			if !errors.Is(err, kv.ErrClosed) {
				t.Fatalf("read on a closed member: %v, want ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a read still waits after Close")
		}
	}
	release()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := findLeaks(before); err != nil {
		t.Fatal(err)
	}
}

// goroutines returns the stacks of every goroutine.
func goroutines() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}
