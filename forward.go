package kv

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Forwarding: on a follower, the write pipeline (batch.go) sends each batch
// to the leader as one Apply RPC, one batch at a time, so that the leader
// appends a follower's batches in the order they were queued.

// forwardTimeout bounds one forwarded batch (its callers may give up
// sooner, with their ctx).
const forwardTimeout = 10 * time.Second

type forwardResult struct {
	err   error
	retry bool // certainly had no effect
}

// forward sends one batch to the leader and answers its writers. It
// returns true when the batch certainly had no effect and went back to the
// head of the queue, to be sent again after a backoff.
func (p *pipeline) forward(batch []*pendingWrite) (retry bool) {
	local := batch[:0:0]
	for _, w := range batch {
		if w.remote {
			w.answer(errNotLeader) // not forwarded twice: its sender retries
			continue
		}
		local = append(local, w)
	}
	if len(local) == 0 {
		return false
	}
	var c command
	for _, w := range local {
		c.Ops = append(c.Ops, w.ops...)
	}
	r := p.call(&c)
	if r.err != nil && !r.retry && len(local) > 1 && errors.Is(r.err, errRefused) {
		// A batch the leader refuses as a whole is sent again one write at
		// a time, so that one write the leader finds invalid (its limits
		// may differ from ours) fails alone.
		for i, w := range local {
			r := p.call(&command{Ops: w.ops})
			if r.retry {
				p.requeue(local[i:], r.err)
				return true
			}
			w.answer(p.forwardErr(r.err))
		}
		return false
	}
	if r.retry {
		p.requeue(local, r.err)
		return true
	}
	err := p.forwardErr(r.err)
	for _, w := range local {
		w.answer(err)
	}
	return false
}

// requeue puts writes whose attempt had no effect back at the head.
func (p *pipeline) requeue(ws []*pendingWrite, err error) {
	for _, w := range ws {
		w.requeued(err)
	}
	p.q.pushFront(ws)
}

// forwardErr is the outcome of a write the leader received, or may have.
func (p *pipeline) forwardErr(err error) error {
	switch {
	case err == nil, errors.Is(err, errRefused), errors.Is(err, ErrOutcomeUnknown):
		return err
	case p.s.isClosed():
		return errClosedUnknown
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return fmt.Errorf("kv: write: %w (%w)", err, ErrOutcomeUnknown)
	}
	return err
}

// call makes one forwarding RPC of c to the leader.
func (p *pipeline) call(c *command) forwardResult {
	s := p.s
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
