package kv

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cohortkv/kv/internal/metrics"
)

// Forwarding: on a follower, the write pipeline (batch.go) sends each batch
// to the leader as one Apply RPC, one batch at a time, so that the leader
// appends a follower's batches in the order they were queued. The reply
// carries the result of each command.

// forwardTimeout bounds one forwarded batch (its callers may give up
// sooner, with their ctx).
const forwardTimeout = 10 * time.Second

type forwardResult struct {
	res   []cmdResult // one per command sent
	err   error
	retry bool // certainly had no effect
}

// forward sends one batch to the leader and answers its writers. It
// returns true when some of them went back to the head of the queue, to be
// sent again after a backoff.
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
				p.requeue(append(redo, local[i+1:]...), err)
				return true
			}
		}
		return false
	}
	redo, err := p.settleForwarded(local, r)
	p.requeue(redo, err)
	return len(redo) > 0
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

// requeue puts writes to be sent again back at the head.
func (p *pipeline) requeue(ws []*pendingWrite, err error) {
	for _, w := range ws {
		if err != nil {
			w.requeued(err)
		} else {
			w.state.Store(wQueued)
		}
	}
	p.q.pushFront(ws)
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
