package kv

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"

	"github.com/cohortkv/kv/internal/logging"
)

// A member that cannot go on (its state machine cannot apply a committed
// entry, or its Raft storage fails where raft itself would panic) halts:
// it fences itself off the Raft network at once, so that it neither leads
// nor votes and the others elect a leader without it; it applies nothing
// more and writes nothing more to its Raft storage (raftStorage), so its
// files keep what it acknowledged; and every call on it returns the halt
// error, which wraps ErrCorrupt, ErrDiskFull or ErrNewerFormat. Raft keeps
// running, cut off, until Close, so that no
// future raft hands out is left unanswered. The member is repaired with
// Rebuild, or, for a disk that was full, by a restart once space is back.
type halter struct {
	once sync.Once
	ch   chan struct{} // closed when the member halts
	err  atomic.Pointer[error]
}

func newHalter() *halter { return &halter{ch: make(chan struct{})} }

// halted returns the halt error, or nil.
func (h *halter) halted() error {
	if p := h.err.Load(); p != nil {
		return *p
	}
	return nil
}

// halt stops this member from taking part in the cluster. It never blocks
// on raft: it runs on raft's own goroutines, inside storage calls.
func (s *Store) halt(cause error) {
	s.halter.once.Do(func() {
		err := cause
		switch {
		case errors.Is(err, ErrNewerFormat):
			err = fmt.Errorf("kv: member %s halted, it cannot go on (upgrade it to the version of the other members, then start it again): %w", s.cfg.NodeID, err)
		default:
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrDiskFull) {
				err = fmt.Errorf("%w: %w", ErrCorrupt, err)
			}
			err = fmt.Errorf("kv: member %s halted, it cannot go on (restart it once the disk has space, or repair it with Rebuild): %w", s.cfg.NodeID, err)
		}
		s.halter.err.Store(&err)
		if s.mux != nil {
			s.mux.Raft().Fence()
		}
		if s.fsm != nil {
			s.fsm.abandoned.Store(true)
			s.fsm.notify()
		}
		close(s.halter.ch)
		// Cut off, raft would log a failed vote request to every peer at
		// each election timeout until Close.
		for _, l := range s.raftLogs {
			l.SetLevel(hclog.Off)
		}
		s.logger.Error("member halted: it no longer takes part in Raft, and every call on it fails; the other members go on without it", "error", cause)
	})
}

// raftLogger is raft's logger under name, silenced when the member halts.
func (s *Store) raftLogger(name string) hclog.Logger {
	l := logging.HCLog(s.logger, name)
	s.raftLogs = append(s.raftLogs, l)
	return l
}

// usable returns ErrClosed after Close, the halt error once halted, and nil
// otherwise.
func (s *Store) usable() error {
	if s.isClosed() {
		return ErrClosed
	}
	return s.halter.halted()
}

// haltedWrite is the error of a write caught by a halt after it was handed
// to Raft: the others may still commit it.
func (s *Store) haltedWrite() error {
	return fmt.Errorf("%w (%w)", s.halter.halted(), ErrOutcomeUnknown)
}
