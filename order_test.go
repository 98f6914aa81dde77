package kv_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// Writes one goroutine issues are applied in the order it issued them,
// asynchronous ones included, on the leader and on a follower alike, while
// other goroutines write at the same time (so that several batches are in
// flight).
func TestWrite_OneGoroutinesWritesApplyInOrder(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.Logger(testLogger(t)))
	ctx := ctxT(t, 3*time.Minute)
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	roles := map[string]*kv.Store{"leader": c.Node(leader), "follower": c.Node((leader + 1) % 3)}
	for _, role := range []string{"leader", "follower"} {
		s := roles[role]
		t.Run(role, func(t *testing.T) {
			stop := make(chan struct{})
			var bg sync.WaitGroup
			for g := range 8 {
				bg.Add(1)
				go func() {
					defer bg.Done()
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						_ = s.SetAsync(fmt.Sprintf("noise/%d/%d", g, i%50), []byte("x")).Wait(ctx)
					}
				}()
			}
			defer func() { close(stop); bg.Wait() }()

			t.Run("SetAsyncThenDeleteAsync", func(t *testing.T) {
				for run := range 200 {
					k := fmt.Sprintf("%s/sd/%d", role, run)
					set, del := s.SetAsync(k, []byte("v")), s.DeleteAsync(k)
					if err := set.Wait(ctx); err != nil {
						t.Fatalf("run %d: SetAsync: %v", run, err)
					}
					if err := del.Wait(ctx); err != nil {
						t.Fatalf("run %d: DeleteAsync: %v", run, err)
					}
					if v, err := s.Get(ctx, k); !errors.Is(err, kv.ErrNotFound) {
						t.Fatalf("run %d: Get after SetAsync then DeleteAsync = %q, %v; want ErrNotFound", run, v, err)
					}
				}
			})
			t.Run("HundredSetAsyncToOneKey", func(t *testing.T) {
				for run := range 30 {
					k := fmt.Sprintf("%s/hundred/%d", role, run)
					futs := make([]*kv.Future, 100)
					for i := range futs {
						futs[i] = s.SetAsync(k, []byte(strconv.Itoa(i)))
					}
					for i, f := range futs {
						if err := f.Wait(ctx); err != nil {
							t.Fatalf("run %d: SetAsync %d: %v", run, i, err)
						}
					}
					for _, r := range roles {
						if v, err := r.Get(ctx, k); err != nil || string(v) != "99" {
							t.Fatalf("run %d: Get = %q, %v; want \"99\"", run, v, err)
						}
					}
				}
			})
			t.Run("SetAfterSetAsync", func(t *testing.T) {
				for run := range 200 {
					k := fmt.Sprintf("%s/mixed/%d", role, run)
					f := s.SetAsync(k, []byte("async"))
					if err := s.Set(ctx, k, []byte("sync")); err != nil {
						t.Fatal(err)
					}
					if err := f.Wait(ctx); err != nil {
						t.Fatal(err)
					}
					if v, err := s.Get(ctx, k); err != nil || string(v) != "sync" {
						t.Fatalf("run %d: Get = %q, %v; want \"sync\"", run, v, err)
					}
				}
			})
		})
	}
}

// A burst of SetAsync to one key on a follower while the leader hands over
// its leadership: writes retried across the change do not overtake later
// ones. The key ends with the value of the last write that succeeded, or
// of a later one whose outcome is unknown.
func TestWrite_AsyncOrderAcrossLeaderChange(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.Logger(testLogger(t)))
	ctx := ctxT(t, 3*time.Minute)
	for round := range 3 {
		leader, err := c.WaitLeader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		f := (leader + 1) % 3
		s := c.Node(f)
		k := fmt.Sprintf("change/%d", round)
		const n = 300
		futs := make([]*kv.Future, n)
		for i := range futs {
			futs[i] = s.SetAsync(k, []byte(strconv.Itoa(i)))
			if i == n/3 {
				c.Stop(leader) // graceful: hands over its leadership
			}
		}
		lastOK, failed := -1, map[int]bool{}
		for i, fu := range futs {
			switch err := fu.Wait(ctx); {
			case err == nil:
				lastOK = i
			case errors.Is(err, kv.ErrOutcomeUnknown):
			default:
				failed[i] = true
			}
		}
		v, err := s.Get(ctx, k)
		if err != nil {
			t.Fatalf("round %d: Get: %v", round, err)
		}
		got, _ := strconv.Atoi(string(v))
		if got < lastOK || failed[got] {
			t.Fatalf("round %d: key holds %d; the last write that succeeded is %d (failed for certain: %v)", round, got, lastOK, failed[got])
		}
		t.Logf("round %d: final %d, last success %d, %d failed for certain", round, got, lastOK, len(failed))
		c.Restart(leader)
	}
}

// Writes a member queues while there is no leader are retried, and later
// writes queued meanwhile wait behind them: once a leader is back, the key
// holds the last value written, and a delete issued last wins.
func TestWrite_AsyncOrderWhileRetrying(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.Logger(testLogger(t)))
	ctx := ctxT(t, 3*time.Minute)
	for round := range 3 {
		leader, err := c.WaitLeader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		f := (leader + 1) % 3
		other := (leader + 2) % 3
		s := c.Node(f)
		k := fmt.Sprintf("retry/%d", round)
		c.Stop(leader)
		c.Stop(other)
		var futs []*kv.Future
		for i := range 100 {
			futs = append(futs, s.SetAsync(k, []byte(strconv.Itoa(i))))
			if i%10 == 9 {
				time.Sleep(20 * time.Millisecond) // a few retries in between
			}
		}
		futs = append(futs, s.SetAsync(k+"/gone", []byte("x")), s.DeleteAsync(k+"/gone"))
		c.Restart(leader)
		c.Restart(other)
		lastOK, unknown := -1, 0
		for i, fu := range futs {
			switch err := fu.Wait(ctx); {
			case err == nil:
				if i < 100 {
					lastOK = i
				}
			case errors.Is(err, kv.ErrOutcomeUnknown):
				unknown++ // a leader lost after the write reached it
			default:
				t.Fatalf("round %d: write %d: %v", round, i, err)
			}
		}
		for _, r := range []*kv.Store{s, c.Node(leader)} {
			v, err := r.Get(ctx, k)
			if err != nil {
				t.Fatalf("round %d: Get: %v", round, err)
			}
			if got, _ := strconv.Atoi(string(v)); got < lastOK || unknown == 0 && got != 99 {
				t.Fatalf("round %d: key holds %d; the last write that succeeded is %d (%d outcomes unknown)", round, got, lastOK, unknown)
			}
			if v, err := r.Get(ctx, k+"/gone"); unknown == 0 && !errors.Is(err, kv.ErrNotFound) {
				t.Fatalf("round %d: Get of the deleted key = %q, %v; want ErrNotFound", round, v, err)
			}
		}
	}
}

// A write on a follower whose caller stopped waiting for it while it was
// in flight is not overtaken by the caller's next write, though a follower
// otherwise sends a batch while others are in flight: the leader holds the
// first write's batch back, and the second goes out only once the first
// is answered.
func TestWrite_GivenUpWriteNotOvertakenOnFollower(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.Logger(testLogger(t)))
	ctx := ctxT(t, 2*time.Minute)
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := c.Node((leader + 1) % 3)
	if err := s.Set(ctx, "warm", []byte("x")); err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	kv.HoldForwarded(c.Node(leader), func(key string, value []byte) {
		if key == "k" && string(value) == "first" {
			once.Do(func() { close(entered) })
			select {
			case <-release:
			case <-time.After(time.Minute):
			}
		}
	})
	defer kv.HoldForwarded(c.Node(leader), nil)
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()

	firstCtx, cancelFirst := context.WithCancel(ctx)
	first, second := make(chan error, 1), make(chan error, 1)
	go func() {
		first <- s.Set(firstCtx, "k", []byte("first"))
		second <- s.Set(ctx, "k", []byte("second"))
	}()
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("the first write never reached the leader")
	}
	cancelFirst()
	if err := <-first; !errors.Is(err, kv.ErrOutcomeUnknown) {
		t.Fatalf("first Set = %v; want ErrOutcomeUnknown", err)
	}
	select {
	case err := <-second:
		t.Fatalf("second Set answered (%v) while the first is held in flight", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	released = true
	if err := <-second; err != nil {
		t.Fatalf("second Set: %v", err)
	}
	for _, i := range []int{leader, (leader + 1) % 3} {
		if v, err := c.Node(i).Get(ctx, "k"); err != nil || string(v) != "second" {
			t.Fatalf("member %d: Get = %q, %v; want \"second\"", i, v, err)
		}
	}
}
