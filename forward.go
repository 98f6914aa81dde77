package kv

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cohortkv/kv/internal/metrics"
)

// Forwarding: on a follower, the write pipeline (batch.go) sends each batch
// to the leader as one Apply RPC, up to maxBatchInFlight of them at once.
// The leader may append batches in flight together in any order; a batch
// goes out while others are in flight only when no write in them has a
// writer that may have issued a later one meanwhile (see holds). The reply
// carries the result of each command.

// forwardTimeout bounds one forwarded batch (its callers may give up
// sooner, with their ctx).
const forwardTimeout = 10 * time.Second

type forwardResult struct {
	res   []cmdResult // one per command sent
	err   error
	retry bool // certainly had no effect
}

// fwdBatch is a forwarded batch in flight.
type fwdBatch struct {
	ws []*pendingWrite
	// async: some write's caller does not wait for it (SetAsync).
	async bool
}

// holds says whether a write of b has a writer that may have issued a later
// write while b is in flight: an async write, or one whose caller gave up
// waiting (its ctx ended, or this member halted). No later batch goes out
// before b is answered, so that no later write overtakes it.
func (b *fwdBatch) holds() bool {
	if b.async {
		return true
	}
	for _, w := range b.ws {
		if w.gone.Load() {
			return true
		}
	}
	return false
}

// mustWait says whether a batch cut now must wait until no forwarded batch
// is in flight: one in flight holds later writes back, or writes wait to
// be retried ahead of it.
func (p *pipeline) mustWait() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.redo) > 0 {
		return true
	}
	for b := range p.fwd {
		if b.holds() {
			return true
		}
	}
	return false
}

// send forwards batch in the background, holding a slot (taken by the
// caller) until its writers are answered or queued again.
func (p *pipeline) send(batch []*pendingWrite) {
	b := &fwdBatch{ws: batch}
	for _, w := range batch {
		b.async = b.async || w.fut != nil
	}
	p.mu.Lock()
	p.fwd[b] = struct{}{}
	p.mu.Unlock()
	done := func() {
		p.mu.Lock()
		delete(p.fwd, b)
		p.mu.Unlock()
		<-p.slot
	}
	if !p.s.goRaft(func() {
		redo, err := p.forward(batch)
		if len(redo) == 0 {
			p.progress.Store(true)
		}
		p.retryLater(redo, err)
		done()
	}) {
		for _, w := range batch {
			w.state.Store(wDropped)
			w.answer(closedErr(w)) // not sent
		}
		done()
	}
}

// forward sends one batch to the leader and answers its writers. It
// returns those to send again, with the reason.
func (p *pipeline) forward(batch []*pendingWrite) (redo []*pendingWrite, why error) {
	local := batch[:0:0]
	for _, w := range batch {
		if w.remote {
			w.answer(errNotLeader) // not forwarded twice: its sender retries
			continue
		}
		local = append(local, w)
	}
	if len(local) == 0 {
		return nil, nil
	}
	r := p.call(groups(local))
	if r.err != nil && !r.retry && len(local) > 1 && (errors.Is(r.err, errRefused) || errors.Is(r.err, errReplyTooLarge)) {
		// A batch the leader refuses as a whole is sent again one write at
		// a time, so that one write the leader finds invalid (its limits
		// may differ from ours) fails alone. A batch applied whose reply
		// did not fit in a frame is sent again likewise: the session
		// table answers each write with its result.
		if errors.Is(r.err, errReplyTooLarge) {
			for _, w := range local {
				w.maybe.Store(true)
			}
		}
		for i, w := range local {
			if redo, err := p.settleForwarded([]*pendingWrite{w}, p.call(groups(local[i:i+1]))); len(redo) > 0 {
				return append(redo, local[i+1:]...), err
			}
		}
		return nil, nil
	}
	return p.settleForwarded(local, r)
}

// settleForwarded answers the writes of one forwarded call, and returns
// those to send again, with the reason.
func (p *pipeline) settleForwarded(ws []*pendingWrite, r forwardResult) (redo []*pendingWrite, why error) {
	switch {
	case r.retry:
		return ws, r.err
	case r.err != nil && p.s.isClosed():
		for _, w := range ws {
			w.answer(errClosedUnknown)
		}
		return nil, nil
	case errors.Is(r.err, errUnsure), errors.Is(r.err, errReplyTooLarge):
		for _, w := range ws {
			w.maybe.Store(true)
		}
		return ws, r.err
	case r.err != nil:
		// The leader refused the batch: nothing was written. A write an
		// earlier attempt of which may have been applied tries again
		// until its ctx ends.
		for _, w := range ws {
			if w.maybe.Load() {
				redo = append(redo, w)
				continue
			}
			w.answer(r.err)
		}
		return redo, r.err
	}
	off := 0
	for _, w := range ws {
		res := r.res[off : off+len(w.cmds) : off+len(w.cmds)]
		off += len(w.cmds)
		if p.settle(w, res) {
			redo = append(redo, w)
		}
	}
	return redo, errSessionLost
}

// retryLater hands writes to be sent again to run, which puts them back
// at the head once no batch is in flight, after a backoff.
func (p *pipeline) retryLater(ws []*pendingWrite, err error) {
	if len(ws) == 0 {
		return
	}
	for _, w := range ws {
		if err != nil {
			w.requeued(err)
		} else {
			w.state.Store(wQueued)
		}
	}
	p.mu.Lock()
	p.redo = append(p.redo, ws...)
	p.mu.Unlock()
	p.q.signal()
}

// call makes one forwarding RPC of the commands of groups to the leader.
func (p *pipeline) call(groups [][]command) forwardResult {
	s := p.s
	n := 0
	for _, g := range groups {
		n += len(g)
	}
	cmd := encodeEntry(0, groups...)
	// Give up on a leader that is replaced while we wait for its answer and
	// stays silent for a heartbeat timeout more (paused, cut off): the
	// outcome is unknown and the batch is sent again, to whoever leads. A
	// leader that hands over gracefully still answers.
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
	t0 := s.met.now()
	body, err := s.pool.CallAbort(ctx, abort, s.cfg.HeartbeatTimeout, addr, methodApply, cmd)
	if err == nil {
		s.met.since(metrics.Forward, t0)
	}
	if err != nil {
		out, retry := fromWire(err)
		return forwardResult{err: out, retry: retry}
	}
	if p.loseReplies.Load() > 0 && p.loseReplies.Add(-1) >= 0 {
		return forwardResult{err: fmt.Errorf("%w: the reply was lost (a test's doing)", errUnsure)}
	}
	res, err := decodeResults(body)
	if err == nil && len(res) != n {
		err = fmt.Errorf("%d results for %d commands", len(res), n)
	}
	if err != nil {
		return forwardResult{err: fmt.Errorf("%w: leader's reply: %v", errUnsure, err)}
	}
	return forwardResult{res: res}
}

// requeue puts a batch that was cut but not sent back at the head.
func (p *pipeline) requeue(ws []*pendingWrite) {
	for _, w := range ws {
		w.state.Store(wQueued)
	}
	p.q.pushFront(ws)
}
