package kv

import (
	"context"
	"errors"
	"time"
)

// Forwarding in batches: on a follower, concurrent writes bound for the
// leader share one RPC (one command of all their ops), so that the cost of
// forwarding is paid per batch, not per write. Like the leader's group
// commit, a write waits only while maxForwardInFlight batches are on their
// way; with no load it goes out alone at once. Every write of a batch gets
// the batch's outcome.
const (
	maxForwardInFlight = 8
	// forwardTimeout bounds one forwarded batch (its callers may give up
	// sooner, with their ctx).
	forwardTimeout = 10 * time.Second
)

type forwardWrite struct {
	ctx  context.Context
	ops  []op
	size int
	done chan forwardResult // buffered
}

type forwardResult struct {
	err   error
	retry bool // certainly had no effect
}

type forwarder struct {
	s *Store
	coalescer[*forwardWrite]
}

func newForwarder(s *Store) *forwarder {
	return &forwarder{s: s, coalescer: newCoalescer[*forwardWrite](maxForwardInFlight)}
}

// submit forwards ops to the leader with the next batch and returns the
// outcome as writeOnce does: retry says the write certainly had no effect.
func (f *forwarder) submit(ctx context.Context, ops []op) (error, bool) {
	w := &forwardWrite{ctx: ctx, ops: ops, done: make(chan forwardResult, 1)}
	for _, o := range ops {
		w.size += len(o.Key) + len(o.Value) + 16
	}
	f.add(w)
	select {
	case r := <-w.done:
		return r.err, r.retry
	case <-ctx.Done():
		return ctx.Err(), false // it may still go out
	case <-f.s.ctx.Done():
		return ErrClosed, false
	}
}

// run sends batches until the Store closes. Owned by the Store.
func (f *forwarder) run() {
	left := f.coalescer.run(f.s.ctx.Done(), takeForwards, func(batch []*forwardWrite, done func()) {
		if !f.s.goFunc(func() { f.send(batch); done() }) {
			done()
			finishForward(batch, forwardResult{err: ErrClosed})
		}
	})
	finishForward(left, forwardResult{err: ErrClosed})
}

// takeForwards cuts the next batch, leaving out writes whose callers have
// given up (they were never sent).
func takeForwards(queue []*forwardWrite) (batch, rest []*forwardWrite) {
	n, ops, size := 0, 0, 0
	for ; n < len(queue); n++ {
		w := queue[n]
		if w.ctx.Err() != nil {
			continue
		}
		if len(batch) > 0 && (ops+len(w.ops) > maxBatchOps || size+w.size > maxBatchBytes) {
			break
		}
		batch = append(batch, w)
		ops, size = ops+len(w.ops), size+w.size
	}
	return batch, append([]*forwardWrite(nil), queue[n:]...)
}

func finishForward(batch []*forwardWrite, r forwardResult) {
	for _, w := range batch {
		w.done <- r
	}
}

// send forwards one batch. A batch the leader refuses as a whole is sent
// again one write at a time, so that one write the leader finds invalid
// (its limits may differ from ours) fails alone.
func (f *forwarder) send(batch []*forwardWrite) {
	var c command
	for _, w := range batch {
		c.Ops = append(c.Ops, w.ops...)
	}
	r := f.call(&c)
	if r.err != nil && !r.retry && len(batch) > 1 && errors.Is(r.err, errRefused) {
		for _, w := range batch {
			w.done <- f.call(&command{Ops: w.ops})
		}
		return
	}
	finishForward(batch, r)
}

// call makes one forwarding RPC of c to the leader.
func (f *forwarder) call(c *command) forwardResult {
	s := f.s
	cmd, err := encodeCommand(c)
	if err != nil {
		return forwardResult{err: err}
	}
	// Give up on a leader that is replaced while we wait for its answer and
	// stays silent for a heartbeat timeout more (paused, cut off): the
	// outcome is unknown, but the callers hear of it now rather than when
	// the call times out. A leader that hands over gracefully still answers.
	abort := s.leaderChange()
	addr, ok := s.leaderAddr()
	if !ok {
		return forwardResult{err: ErrNoLeader, retry: true}
	}
	select {
	case <-abort: // changed under us: look again, nothing was sent
		return forwardResult{err: ErrNoLeader, retry: true}
	default:
	}
	ctx, cancel := context.WithTimeout(s.ctx, forwardTimeout)
	defer cancel()
	if _, err := s.pool.CallAbort(ctx, abort, s.cfg.HeartbeatTimeout, addr, methodApply, cmd); err != nil {
		out, retry := fromWire(err)
		return forwardResult{err: out, retry: retry}
	}
	return forwardResult{}
}
