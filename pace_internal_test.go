package kv

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// A follower that catches up on a long log while its state machine is slow
// reads committed entries no further ahead of the state machine than the
// pace allows, instead of queueing the whole backlog in memory.
func TestPace_CatchUpReadsBoundedAhead(t *testing.T) {
	nodes, cfgs := openInternalThree(t, &syncBuffer{})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	leader := internalLeader(ctx, t, nodes)
	f := (leader + 1) % 3
	if err := nodes[f].Close(); err != nil {
		t.Fatal(err)
	}
	nodes[f] = nil
	// 300 entries, one write each, while the follower is away.
	value := make([]byte, 32<<10)
	for i := range 300 {
		if err := nodes[leader].Set(ctx, fmt.Sprintf("k%03d", i), value); err != nil {
			t.Fatal(err)
		}
	}
	last := nodes[leader].raft.LastIndex()

	// The returning follower's pace is the one the others do not have.
	others := map[*applyPace]bool{}
	for _, s := range nodes {
		if s != nil {
			others[s.pace] = true
		}
	}
	var mu sync.Mutex
	var maxAhead uint64
	applyHook := func(p *applyPace) {
		if !others[p] {
			time.Sleep(5 * time.Millisecond)
		}
	}
	readHook := func(p *applyPace, index uint64) {
		mu.Lock()
		defer mu.Unlock()
		if h := p.handed.Load(); !others[p] && h > 0 && index > h {
			maxAhead = max(maxAhead, index-h)
		}
	}
	paceApplyHook.Store(&applyHook)
	paceReadHook.Store(&readHook)
	defer func() { paceApplyHook.Store(nil); paceReadHook.Store(nil) }()
	s, err := Open(cfgs[f])
	if err != nil {
		t.Fatal(err)
	}
	nodes[f] = s
	for s.eng.AppliedIndex() < last {
		if ctx.Err() != nil {
			t.Fatalf("follower applied %d of %d", s.eng.AppliedIndex(), last)
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("read at most %d entries ahead of the state machine (%d entries caught up)", maxAhead, last)
	if bound := uint64(paceWindow + raftMaxAppendEntries); maxAhead > bound {
		t.Fatalf("raft read %d entries ahead of the state machine, more than %d", maxAhead, bound)
	}
	if maxAhead == 0 {
		t.Fatal("no read was observed ahead of the state machine: the test did not exercise the pace")
	}
}

// The pace holds only reads of committed entries too far ahead of a busy
// state machine, and lets them go when the state machine moves, goes idle,
// the Store closes, or a wait runs out (then it stays off until the state
// machine moves again).
func TestPace_Wait(t *testing.T) {
	defer func(d time.Duration) { paceMaxWait = d }(paceMaxWait)
	paceMaxWait = 50 * time.Millisecond
	p := newApplyPace()
	commit := func() uint64 { return 1000 }
	never := make(chan struct{})
	batch := func(first, last uint64) []*raft.Log {
		var logs []*raft.Log
		for i := first; i <= last; i++ {
			logs = append(logs, &raft.Log{Index: i})
		}
		return logs
	}
	returns := func(what string, index uint64, done chan struct{}) time.Duration {
		t.Helper()
		start := time.Now()
		ch := make(chan struct{})
		go func() { p.wait(index, commit, done, never); close(ch) }()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: wait(%d) did not return", what, index)
		}
		return time.Since(start)
	}
	far := uint64(10 + paceWindow + 1)
	returns("idle state machine", far, never)
	p.begin(batch(1, 10))
	returns("within the window", 10+paceWindow, never)
	returns("not committed", 1001, never)

	// Held until the state machine takes a later batch.
	released := make(chan struct{})
	go func() { p.wait(far, commit, never, never); close(released) }()
	select {
	case <-released:
		t.Fatal("a read past the window of a busy state machine did not wait")
	case <-time.After(20 * time.Millisecond):
	}
	p.end()
	p.begin(batch(11, 20))
	<-released

	done := make(chan struct{})
	close(done)
	returns("Store closed", 20+paceWindow+1, done)

	// Stuck: the wait runs out, and later reads do not wait at all.
	if d := returns("stuck state machine", 20+paceWindow+1, never); d < paceMaxWait {
		t.Fatalf("gave up after %v, before paceMaxWait", d)
	}
	if !p.stalled.Load() {
		t.Fatal("not marked stalled after a wait ran out")
	}
	if d := returns("stalled", 20+paceWindow+2, never); d >= paceMaxWait {
		t.Fatalf("waited %v while stalled", d)
	}
	p.end()
	p.begin(batch(21, 21))
	if p.stalled.Load() {
		t.Fatal("still stalled after the state machine moved")
	}
}
