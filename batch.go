package kv

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// The write pipeline: every write of a Store, synchronous or not, enters one
// queue before the call returns (SetAsync included), and leaves it in that
// order, in batches. On the leader a batch becomes one Raft entry (group
// commit): Raft.Apply is called for the batches in queue order, and Raft's
// log keeps that order, so several batches may be in flight. On a follower
// a batch is one forwarding RPC to the leader, and only one is in flight:
// the leader could otherwise receive, and append, two batches of this
// follower in the other order. A write waits only while the batches before
// it are out; with no load it goes out alone at once.
//
// A batch that certainly had no effect (no leader, the leader changed
// before it was sent, Raft refused it as not the leader) goes back to the
// head of the queue and is sent again after a backoff, before any later
// write; on the leader, when a later batch was already handed to Raft and
// did not fail that way, the earlier one is failed instead of being retried
// behind it.
const (
	maxBatchOps      = 4096
	maxBatchBytes    = 4 << 20
	maxBatchInFlight = 4
)

// States of a pendingWrite.
const (
	wQueued  int32 = iota // in the queue: nothing sent
	wSent                 // handed to Raft or sent to the leader
	wDropped              // given up by its caller while queued: never sent
)

type pendingWrite struct {
	ops  []op
	size int
	// ctx is a synchronous caller's; an async write has a deadline instead.
	ctx      context.Context
	deadline time.Time
	// remote: a write forwarded to this member by another, or the marker
	// entry of a Restore: it goes into this member's Raft log or fails with
	// errNotLeader, and is never forwarded or retried here.
	remote bool
	state  atomic.Int32
	last   atomic.Pointer[error] // the last retryable failure
	done   chan error            // buffered; nil for an async write
	fut    *Future               // an async write's
}

func newWrite(ops []op) *pendingWrite {
	w := &pendingWrite{ops: ops}
	for _, o := range ops {
		w.size += len(o.Key) + len(o.Value) + 16
	}
	return w
}

// answer reports the write's outcome. Each write is answered once.
func (w *pendingWrite) answer(err error) {
	if w.fut != nil {
		w.fut.err = err
		close(w.fut.done)
		return
	}
	w.done <- err
}

// expired returns the error of a write whose time is up.
func (w *pendingWrite) expired() error {
	if w.ctx != nil {
		return w.ctx.Err()
	}
	if !w.deadline.IsZero() && !time.Now().Before(w.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

func (w *pendingWrite) lastErr() error {
	if p := w.last.Load(); p != nil {
		return *p
	}
	return nil
}

// requeued marks a write whose attempt certainly had no effect.
func (w *pendingWrite) requeued(err error) {
	w.last.Store(&err)
	w.state.Store(wQueued)
}

type pipeline struct {
	s    *Store
	q    writeQueue
	slot chan struct{} // one token per leader batch in flight
	// prev is closed once the outcome of the last batch handed to Raft has
	// been handled: outcomes are handled in the order of the batches.
	prev chan struct{} // run's own

	mu   sync.Mutex
	redo []*pendingWrite // writes of leader batches to retry, in order
}

func newPipeline(s *Store) *pipeline {
	prev := make(chan struct{})
	close(prev)
	return &pipeline{s: s, q: newWriteQueue(), slot: make(chan struct{}, maxBatchInFlight), prev: prev}
}

// submit queues w, or returns false once the Store is closing.
func (p *pipeline) submit(w *pendingWrite) bool {
	if w.fut == nil {
		w.done = make(chan error, 1)
	}
	return p.q.add(w)
}

// wait returns the outcome of a synchronous write, or an error once its
// ctx ends: the write is then dropped if it is still queued (it was never
// sent), or its outcome is unknown.
func (p *pipeline) wait(ctx context.Context, w *pendingWrite) error {
	select {
	case err := <-w.done:
		if err != nil {
			if herr := p.s.halter.halted(); herr != nil {
				return fmt.Errorf("%w (%w)", herr, err)
			}
		}
		return err
	case <-ctx.Done():
		if w.state.CompareAndSwap(wQueued, wDropped) {
			return p.s.giveUp(ctx.Err(), w.lastErr())
		}
		return fmt.Errorf("kv: write: %w (%w)", ctx.Err(), ErrOutcomeUnknown)
	case <-p.s.halter.ch:
		if w.state.CompareAndSwap(wQueued, wDropped) {
			return p.s.halter.halted() // never sent
		}
		return p.s.haltedWrite()
	}
}

// run sends the queue's writes until the Store closes. Owned by the Store.
func (p *pipeline) run() {
	stop := p.s.ctx.Done()
	defer p.shutdown()
	b := newBackoff()
	for {
		select {
		case <-stop:
			return
		case <-p.q.kick:
		}
		for {
			select {
			case <-stop:
				return
			default:
			}
			if p.retrying() {
				// Every batch in flight has been answered before the
				// retried writes go back to the head of the queue.
				if !p.idle(stop) {
					return
				}
				p.mu.Lock()
				redo := p.redo
				p.redo = nil
				p.mu.Unlock()
				p.q.pushFront(redo)
				if b.wait(context.Background(), stop) != nil {
					return
				}
				continue
			}
			if p.s.raft.State() == raft.Leader {
				select {
				case p.slot <- struct{}{}:
				case <-stop:
					return
				}
				batch := p.q.take(p.cut)
				if len(batch) == 0 {
					<-p.slot
					break
				}
				p.issue(batch)
				b = newBackoff()
				continue
			}
			batch := p.q.take(p.cut)
			if len(batch) == 0 {
				break
			}
			if p.forward(batch) {
				if b.wait(context.Background(), stop) != nil {
					return
				}
			} else {
				b = newBackoff()
			}
		}
	}
}

func (p *pipeline) retrying() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.redo) > 0
}

// idle waits until no leader batch is in flight.
func (p *pipeline) idle(stop <-chan struct{}) bool {
	for i := 0; i < cap(p.slot); i++ {
		select {
		case p.slot <- struct{}{}:
		case <-stop:
			for ; i > 0; i-- {
				<-p.slot
			}
			return false
		}
	}
	for i := 0; i < cap(p.slot); i++ {
		<-p.slot
	}
	return true
}

// shutdown answers every write still queued with ErrClosed (they were
// never sent), once the batches in flight are over.
func (p *pipeline) shutdown() {
	for _, w := range p.q.close() {
		if w.state.CompareAndSwap(wQueued, wDropped) {
			w.answer(ErrClosed)
		}
	}
	for i := 0; i < cap(p.slot); i++ {
		p.slot <- struct{}{}
	}
	p.mu.Lock()
	redo := p.redo
	p.redo = nil
	p.mu.Unlock()
	for _, w := range redo {
		if w.state.CompareAndSwap(wQueued, wDropped) {
			w.answer(ErrClosed) // its attempt had no effect
		}
	}
}

// cut takes the next batch off the queue, within maxBatchOps and
// maxBatchBytes (a single write may exceed them), marking its writes sent.
// Writes whose callers gave up are left out; expired ones are answered.
func (p *pipeline) cut(queue []*pendingWrite) (batch, rest []*pendingWrite) {
	n, ops, size := 0, 0, 0
	for ; n < len(queue); n++ {
		w := queue[n]
		if w.state.Load() != wQueued {
			continue
		}
		if err := w.expired(); err != nil {
			if w.state.CompareAndSwap(wQueued, wDropped) {
				w.answer(p.s.giveUp(err, w.lastErr()))
			}
			continue
		}
		if len(batch) > 0 && (ops+len(w.ops) > maxBatchOps || size+w.size > maxBatchBytes) {
			break
		}
		if !w.state.CompareAndSwap(wQueued, wSent) {
			continue
		}
		batch = append(batch, w)
		ops, size = ops+len(w.ops), size+w.size
	}
	return batch, append([]*pendingWrite(nil), queue[n:]...)
}

// issue hands one batch to Raft; a goroutine answers its writers once Raft
// has, after the batches issued before it.
func (p *pipeline) issue(batch []*pendingWrite) {
	var c command
	if len(batch) == 1 {
		c.Ops = batch[0].ops
	} else {
		for _, w := range batch {
			c.Ops = append(c.Ops, w.ops...)
		}
	}
	prev, mine := p.prev, make(chan struct{})
	p.prev = mine
	cmd, err := encodeCommand(&c)
	if err == nil {
		err = p.s.diskFullRefusal()
	}
	if err != nil {
		<-prev
		for _, w := range batch {
			w.answer(err) // nothing was sent
		}
		close(mine)
		<-p.slot
		return
	}
	// The goroutine that waits for Raft's answer starts first: once Close
	// has begun none can, and then the batch is not sent at all.
	fc := make(chan raft.ApplyFuture, 1)
	if !p.s.goRaft(func() {
		f := <-fc
		err := f.Error()
		var resp any
		if err == nil {
			resp = f.Response()
		}
		<-prev
		p.complete(batch, err, resp)
		close(mine)
		<-p.slot
	}) {
		<-prev
		for _, w := range batch {
			w.state.Store(wDropped)
			w.answer(ErrClosed) // never sent
		}
		close(mine)
		<-p.slot
		return
	}
	fc <- p.s.raft.Apply(cmd, 10*time.Second)
}

// complete handles the outcome of a leader batch.
func (p *pipeline) complete(batch []*pendingWrite, raftErr error, resp any) {
	err := translateRaftErr(raftErr)
	p.mu.Lock()
	defer p.mu.Unlock()
	if errors.Is(err, errNotLeader) {
		for _, w := range batch {
			if w.remote {
				w.answer(err) // its follower retries it
				continue
			}
			w.requeued(err)
			p.redo = append(p.redo, w)
		}
		return
	}
	// This batch may be in the log: earlier ones waiting to be retried
	// would come after it.
	for _, w := range p.redo {
		if w.state.CompareAndSwap(wQueued, wDropped) {
			w.answer(fmt.Errorf("%w: not retried: a later write entered the log first (%v)", ErrNoLeader, w.lastErr()))
		}
	}
	p.redo = nil
	if err == nil {
		if rerr, ok := resp.(error); ok {
			err = rerr
		}
	}
	err = outcomeOf(err)
	for _, w := range batch {
		w.answer(err)
	}
}

// errClosedUnknown is the error of a write that Close caught after it was
// handed to Raft or sent to the leader.
var errClosedUnknown = fmt.Errorf("%w with the write in flight (%w)", ErrClosed, ErrOutcomeUnknown)

// outcomeOf classifies the error of a write that was handed to Raft: an
// error that does not say "not applied" means the outcome is unknown.
func outcomeOf(err error) error {
	switch {
	case err == nil, errors.Is(err, ErrOutcomeUnknown):
		return err
	case errors.Is(err, ErrClosed):
		// Raft shut down under it, or the state machine stopped with the
		// entry committed.
		return errClosedUnknown
	}
	// A failed log append (the entry may be on disk all the same), and
	// anything else Raft reports after taking the entry.
	return fmt.Errorf("kv: write: %w: %w", ErrOutcomeUnknown, err)
}
