package concurrency_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/concurrency"
)

// openStore starts a single-member, in-memory store, as a program would
// start its own member of a cluster.
func openStore(ctx context.Context) (*kv.Store, error) {
	s, err := kv.Open(kv.Config{NodeID: "n1", InMemory: true, BootstrapExpect: 1})
	if err != nil {
		return nil, err
	}
	if err := s.WaitForLeader(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func ExampleNewSession() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := openStore(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()

	// The session's lease lives as long as the session is kept alive:
	// keys written with it vanish when the process stops.
	sess, err := concurrency.NewSession(s, 2*time.Second, concurrency.WithContext(ctx))
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := s.Set(ctx, "workers/n1", []byte("up"), kv.WithLease(sess.Lease())); err != nil {
		fmt.Println(err)
		return
	}

	// Close revokes the lease, which deletes its keys at once.
	if err := sess.Close(); err != nil {
		fmt.Println(err)
		return
	}
	<-sess.Done()
	_, err = s.Get(ctx, "workers/n1")
	fmt.Println("deleted with the lease:", errors.Is(err, kv.ErrNotFound))
	// Output: deleted with the lease: true
}

func ExampleMutex() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := openStore(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	sess, err := concurrency.NewSession(s, 2*time.Second, concurrency.WithContext(ctx))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sess.Close()

	m := concurrency.NewMutex(sess, "locks/counter")
	if err := m.Lock(ctx); err != nil {
		fmt.Println(err)
		return
	}
	// A read-modify-write under the lock. The write is guarded by
	// IsOwner: if this process had been paused long enough to lose the
	// lock, the write would fail instead of overwriting the new holder's.
	n := 0
	if v, err := s.Get(ctx, "counter"); err == nil {
		n, _ = strconv.Atoi(string(v))
	}
	res, err := s.Txn(ctx, kv.Txn{
		If:   []kv.Cond{m.IsOwner()},
		Then: []kv.Op{kv.OpSet("counter", []byte(strconv.Itoa(n+1)))},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("written under the lock:", res.Succeeded)
	fmt.Println("fencing token > 0:", m.Rev() > 0)
	if err := m.Unlock(ctx); err != nil {
		fmt.Println(err)
		return
	}

	// After Unlock the same guarded write fails: the lock is not held.
	res, err = s.Txn(ctx, kv.Txn{
		If:   []kv.Cond{m.IsOwner()},
		Then: []kv.Op{kv.OpSet("counter", []byte("0"))},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("written after Unlock:", res.Succeeded)
	// Output:
	// written under the lock: true
	// fencing token > 0: true
	// written after Unlock: false
}

func ExampleElection() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := openStore(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()

	// Two candidates, each with a session of its own (in a real
	// deployment, in two processes).
	var elections []*concurrency.Election
	for range 2 {
		sess, err := concurrency.NewSession(s, 2*time.Second, concurrency.WithContext(ctx))
		if err != nil {
			fmt.Println(err)
			return
		}
		defer sess.Close()
		elections = append(elections, concurrency.NewElection(sess, "elections/scheduler"))
	}
	a, b := elections[0], elections[1]

	if err := a.Campaign(ctx, "scheduler-a"); err != nil {
		fmt.Println(err)
		return
	}
	leader, _ := a.Leader(ctx)
	fmt.Println("leader:", leader)

	// b waits in Campaign until a resigns.
	won := make(chan error, 1)
	go func() { won <- b.Campaign(ctx, "scheduler-b") }()
	if err := a.Resign(ctx); err != nil {
		fmt.Println(err)
		return
	}
	if err := <-won; err != nil {
		fmt.Println(err)
		return
	}
	leader, _ = b.Leader(ctx)
	fmt.Println("leader:", leader)
	// Output:
	// leader: scheduler-a
	// leader: scheduler-b
}
