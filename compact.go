package kv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/storage"
)

// Compact rewrites every member's data file (data.db) and Raft log file
// (raft.db) without their free pages, one member at a time: bbolt never
// gives pages back to the file system, so after a purge (or, for raft.db,
// after Raft deleted the entries a snapshot covers) a file keeps its peak
// size until it is compacted. Followers go first and the leader last, after it hands its
// leadership to another voter, so that the pause falls on a follower.
// Any member may be called: it asks each member in turn, over the
// transport, to compact its own file, and waits for its answer.
//
// On each member reads and writes go on during the copy; apply pauses
// only for the final step (the last changed keys, an fsync and the swap
// of the files), typically milliseconds, and so do Raft's reads and
// writes of its log for the final step of raft.db. A member being
// compacted needs free space for a second file as large as its live data.
//
// Members that are down, unreachable or fail (a full disk: an error
// wrapping ErrDiskFull) are skipped, and the others compacted; the error
// then wraps ErrCompactIncomplete and names them. A member that fails
// keeps serving on its old file. ctx bounds the whole call; when it ends,
// the member being compacted stops and keeps its old file, and the members
// not reached yet are named in the error. A second Compact while one runs
// on the same member fails with an error wrapping ErrCompacting. An
// InMemory cluster has nothing to compact: Compact returns nil.
//
// Every step is logged at Info with the file's size before and after, the
// time it took and the pause ("stall").
func (s *Store) Compact(ctx context.Context) error {
	if err := s.usable(); err != nil {
		return err
	}
	if !s.compactBusy.CompareAndSwap(false, true) {
		return fmt.Errorf("%w on %s", ErrCompacting, s.cfg.NodeID)
	}
	defer s.compactBusy.Store(false)
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return translateRaftErr(err)
	}
	servers := slices.Clone(f.Configuration().Servers)
	_, leader := s.raft.LeaderWithID()
	// Followers in ID order, then the leader.
	slices.SortFunc(servers, func(a, b raft.Server) int {
		if al, bl := a.ID == leader, b.ID == leader; al != bl {
			if al {
				return 1
			}
			return -1
		}
		return strings.Compare(string(a.ID), string(b.ID))
	})
	var failed []error
	done := 0
	for _, srv := range servers {
		id := string(srv.ID)
		if err := ctx.Err(); err != nil {
			failed = append(failed, fmt.Errorf("%s: not reached: %w", id, err))
			continue
		}
		if err := s.compactMember(ctx, id); err != nil {
			s.logger.Warn("compaction of a member failed", "peer", id, "error", err)
			failed = append(failed, fmt.Errorf("%s: %w", id, err))
			continue
		}
		done++
	}
	if len(failed) > 0 {
		return fmt.Errorf("%w: %d of %d members compacted; %w", ErrCompactIncomplete, done, len(servers), errors.Join(failed...))
	}
	return nil
}

// compactMember compacts member id's data file: this member's directly,
// another's through methodCompact.
func (s *Store) compactMember(ctx context.Context, id string) error {
	if id == s.cfg.NodeID {
		_, err := s.compactLocal(ctx)
		return err
	}
	addr, err := addressBook{s}.ServerAddr(raft.ServerID(id))
	if err != nil {
		return err
	}
	body, err := s.pool.Call(ctx, string(addr), methodCompact, nil)
	if err != nil {
		return fmt.Errorf("kv: compact: %w", err)
	}
	st, err := decodeCompactReply(body)
	if err != nil {
		return err
	}
	s.logger.Info("member data file compacted", "peer", id, "before", st.Before, "after", st.After, "took", st.Took, "stall", st.Stall)
	return nil
}

// compactLocal compacts this member's data file, then its raft.db,
// handing leadership over first if this member leads (and another voter
// can take it). The stats returned are the data file's.
func (s *Store) compactLocal(ctx context.Context) (storage.CompactStats, error) {
	b, ok := s.eng.(*storage.Bolt)
	if !ok {
		return storage.CompactStats{}, nil // in memory: no file
	}
	if err := s.usable(); err != nil {
		return storage.CompactStats{}, err
	}
	// Refused before the hand-over: a request that finds a compaction
	// running must not move the leadership.
	if b.Compacting() {
		return storage.CompactStats{}, fmt.Errorf("%w on %s: %w", ErrCompacting, s.cfg.NodeID, storage.ErrCompacting)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel) // Close stops it
	defer stop()
	// A halt stops it too: a halted member writes nothing more.
	go func() {
		select {
		case <-s.halter.ch:
			cancel()
		case <-ctx.Done():
		}
	}()
	if s.raft.State() == raft.Leader && s.hasOtherVoter() {
		s.logger.Info("handing leadership over before compacting the data file")
		if err := s.raft.LeadershipTransfer().Error(); err != nil {
			// The compaction goes on: the pause is short either way.
			s.logger.Warn("leadership transfer before compaction failed", "error", err)
		}
	}
	st, err := b.Compact(ctx)
	if herr := s.halter.halted(); err != nil && herr != nil {
		err = herr
	}
	if errors.Is(err, storage.ErrCompacting) {
		err = fmt.Errorf("%w on %s: %w", ErrCompacting, s.cfg.NodeID, err)
	}
	if err != nil {
		return st, err
	}
	s.logger.Info("data file compacted", "path", b.Path(), "before", st.Before, "after", st.After,
		"took", st.Took, "stall", st.Stall, "rounds", st.Rounds, "restarts", st.Restarts)
	if s.logs == nil {
		return st, nil
	}
	lst, err := s.logs.Compact(ctx)
	if herr := s.halter.halted(); err != nil && herr != nil {
		err = herr
	}
	if errors.Is(err, storage.ErrCompacting) {
		err = fmt.Errorf("%w on %s: %w", ErrCompacting, s.cfg.NodeID, err)
	}
	if err != nil {
		return st, fmt.Errorf("kv: compact raft log (the data file was compacted): %w", err)
	}
	s.logger.Info("raft log compacted", "path", s.logs.Path(), "before", lst.Before, "after", lst.After,
		"took", lst.Took, "stall", lst.Stall, "rounds", lst.Rounds)
	return st, nil
}

// The reply of methodCompact: a status byte, the sizes before and after,
// the time taken and the stall in nanoseconds (8 bytes each, big endian),
// then the error text when the status is not compactOK.
const (
	compactOK       byte = 0
	compactBusy     byte = 1 // another compaction runs on the member
	compactDiskFull byte = 2 // no room for the new file
	compactFailed   byte = 3
	compactReplyLen      = 1 + 4*8
)

// compactReply runs methodCompact on this member.
func (s *Store) compactReply(ctx context.Context) []byte {
	st, err := s.compactLocal(ctx)
	status := compactOK
	switch {
	case err == nil:
	case errors.Is(err, ErrCompacting):
		status = compactBusy
	case errors.Is(err, storage.ErrDiskFull):
		status = compactDiskFull
	default:
		status = compactFailed
	}
	b := make([]byte, 1, compactReplyLen)
	b[0] = status
	for _, v := range []int64{st.Before, st.After, int64(st.Took), int64(st.Stall)} {
		b = binary.BigEndian.AppendUint64(b, uint64(v))
	}
	if err != nil {
		b = append(b, err.Error()...)
	}
	return b
}

// decodeCompactReply turns a methodCompact reply into stats or an error.
func decodeCompactReply(b []byte) (storage.CompactStats, error) {
	if len(b) < compactReplyLen {
		return storage.CompactStats{}, fmt.Errorf("kv: compact: reply of %d bytes", len(b))
	}
	u := func(i int) int64 { return int64(binary.BigEndian.Uint64(b[1+8*i:])) }
	st := storage.CompactStats{Before: u(0), After: u(1), Took: time.Duration(u(2)), Stall: time.Duration(u(3))}
	msg := string(b[compactReplyLen:])
	switch b[0] {
	case compactOK:
		return st, nil
	case compactBusy:
		return st, fmt.Errorf("%w: %s", ErrCompacting, msg)
	case compactDiskFull:
		return st, fmt.Errorf("%w: %s", ErrDiskFull, msg)
	}
	return st, fmt.Errorf("kv: compact: %s", msg)
}
