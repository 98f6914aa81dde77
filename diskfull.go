package kv

import (
	"fmt"
	"time"
)

// A leader whose disk is full refuses writes before they reach Raft: a
// write that Raft failed to append would make it step down, and elections
// on full disks would follow one another while nothing can be written
// anyway. The Raft log keeps room for the entries of a new leadership, so
// a leader stays, and linearizable reads of what is stored go on. Writes
// resume on their own: while the log is full, a write at most every
// diskFullProbe tries to make room again (a checkpoint of the log), and
// the state machine retries on its own.

// errDiskFullRefused is wrapped, with ErrDiskFull, by the error of a write
// refused because a disk is full: nothing was written.
var errDiskFullRefused = fmt.Errorf("kv: write refused, nothing written: %w", ErrDiskFull)

const diskFullProbe = 500 * time.Millisecond

// diskFullRefusal returns the error for a write on this leader while its
// disk is full, or nil.
func (s *Store) diskFullRefusal() error {
	if err := s.fsm.stuckErr(); err != nil {
		return fmt.Errorf("%w: the data file cannot be written: %v", errDiskFullRefused, err)
	}
	ls := s.logs // nil when InMemory
	if ls == nil || !ls.DiskFull() {
		return nil
	}
	s.probeMu.Lock()
	defer s.probeMu.Unlock()
	if !ls.DiskFull() {
		return nil
	}
	if time.Since(s.lastProbe) >= diskFullProbe {
		s.lastProbe = time.Now()
		if err := ls.Checkpoint(); err == nil {
			s.logger.Info("the Raft log has disk space again; writes resume")
			return nil
		}
	}
	return fmt.Errorf("%w: the Raft log cannot grow", errDiskFullRefused)
}
