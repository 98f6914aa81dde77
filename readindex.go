package kv

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/hashicorp/raft"
)

// A follower's linearizable reads share their read index requests to the
// leader, as the leader's reads share heartbeat rounds (verifyLeader): a
// read joins the next round, never the one in flight, since the leader may
// have taken that round's commit index before a write that completed before
// the read began. One runner goroutine per member sends the rounds one after
// another while reads wait; it ends when none wait, and Close stops it.

// readRound is one read index request shared by the reads that joined it
// before it was sent. idx and err are set before done closes.
type readRound struct {
	done chan struct{}
	idx  uint64
	err  error
}

// readIndex returns an index that every write completed before the call is
// at or below: the leader's confirmed commit index.
func (s *Store) readIndex(ctx context.Context) (uint64, error) {
	if s.raft.State() == raft.Leader {
		return s.readIndexLocal(ctx)
	}
	if _, ok := s.leaderAddr(); !ok {
		return 0, ErrNoLeader
	}
	s.readMu.Lock()
	r := s.readNext
	if r == nil {
		r = &readRound{done: make(chan struct{})}
		s.readNext = r
	}
	if !s.readRunning {
		if !s.goFunc(s.runReadIndex) {
			s.readMu.Unlock()
			return 0, ErrClosed
		}
		s.readRunning = true
	}
	s.readMu.Unlock()
	s.readJoins.Add(1)
	select {
	case <-r.done:
		return r.idx, r.err
	case <-ctx.Done():
		// The round goes on for the reads that still wait on it.
		return 0, ctx.Err()
	case <-s.ctx.Done():
		return 0, ErrClosed
	}
}

// runReadIndex sends the rounds that reads joined, one at a time, until no
// read waits for one.
func (s *Store) runReadIndex() {
	for {
		s.readMu.Lock()
		r := s.readNext
		s.readNext = nil
		if r == nil {
			s.readRunning = false
			s.readMu.Unlock()
			return
		}
		s.readMu.Unlock()
		r.idx, r.err = s.sendReadIndex()
		close(r.done)
	}
}

// sendReadIndex asks the leader of now for a read index. A read index
// request is safe to repeat, so one attempt is bounded: a leader that
// stopped answering (paused, cut off) is given up on and the reads ask
// whoever leads by then. The attempt is the Store's, not one reader's: a
// reader that stops waiting does not cancel it for the others.
func (s *Store) sendReadIndex() (uint64, error) {
	if s.isClosed() {
		return 0, ErrClosed
	}
	actx, cancel := context.WithTimeout(s.ctx, s.cfg.HeartbeatTimeout+s.cfg.ElectionTimeout)
	defer cancel()
	if s.raft.State() == raft.Leader {
		// This member took over since the reads joined.
		idx, err := s.readIndexLocal(actx)
		if err != nil && actx.Err() != nil && !s.isClosed() {
			return 0, fmt.Errorf("%w: this member's leadership was not confirmed in time", ErrNoLeader)
		}
		return idx, err
	}
	addr, ok := s.leaderAddr()
	if !ok {
		return 0, ErrNoLeader
	}
	s.readRPCs.Add(1)
	body, err := s.pool.Call(actx, addr, methodReadIndex, nil)
	if err != nil {
		if s.isClosed() {
			return 0, ErrClosed
		}
		if actx.Err() != nil {
			return 0, fmt.Errorf("%w: leader %s did not answer in time", ErrNoLeader, addr)
		}
		return 0, readRPCErr(addr, err)
	}
	if len(body) != 8 {
		return 0, fmt.Errorf("kv: read index reply of %d bytes", len(body))
	}
	return binary.BigEndian.Uint64(body), nil
}
