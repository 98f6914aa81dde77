package kv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"time"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/storage"
)

// Backup writes a consistent, checksummed copy of the whole data set to w.
// It works on any instance; the copy reflects every write that completed
// before Backup was called (a linearizable read), taken from this
// instance's own data without stopping writes. Restore loads it.
//
// With Stale() it copies this instance's data as it is, without asking the
// leader: the way to save what a member holds when the cluster has lost its
// majority and no leader can be elected.
//
// A slow or stalled w delays only this call: the copy is read from a file of
// its own, and reads and writes go on. When ctx ends (or the Store closes)
// Backup returns its error at once, even while a w.Write is blocked: each
// Write runs in a goroutine of this call, on a copy of the bytes, one at a
// time. A Write in progress when Backup gives up may still write to w after
// Backup has returned; its goroutine ends when that Write returns. w is
// never written to after that.
func (s *Store) Backup(ctx context.Context, w io.Writer, opts ...ReadOption) error {
	if err := s.usable(); err != nil {
		return err
	}
	if !collect(opts).stale {
		if err := s.linearize(ctx); err != nil {
			return err
		}
	}
	snap, err := s.eng.Snapshot()
	if err != nil {
		return s.engineErr(err)
	}
	defer snap.Release()
	aw := &abandonableWriter{ctx: ctx, closed: s.ctx.Done(), w: w}
	if err := writeBackup(aw, snap); err != nil {
		if aw.err != nil {
			return aw.err
		}
		return fmt.Errorf("kv: backup: %w", err)
	}
	return nil
}

// writeBackup writes the copy of snap a backup holds: all of it but the
// change log (watch.go). Its revisions are those of this store only: a
// Restore starts the log anew after the restore's index, and a restored
// copy that carried it would serve them as the restoring store's for as
// long as the data file holds them before that (to watchers reading
// between the install and the start of the new log, and for good after a
// crash there).
func writeBackup(w io.Writer, snap storage.Snapshot) error {
	return storage.WriteSnapshot(w, snap.AppliedIndex(), withoutHistory{snap})
}

// withoutHistory is a view without the change log.
type withoutHistory struct{ storage.ReadTx }

func (v withoutHistory) Scan(from []byte, fn func(k, v []byte) bool) error {
	return v.ReadTx.Scan(from, func(k, val []byte) bool {
		if bytes.HasPrefix(k, []byte(sysHistPrefix)) || string(k) == sysHistMetaKey {
			return true
		}
		return fn(k, val)
	})
}

// abandonableWriter writes to w in a goroutine per Write and stops
// waiting for it when ctx ends or the Store closes: a Write that never
// returns cannot hold the caller. The bytes are copied first, because the
// caller's slice may be reused, or be a value in a snapshot's mapping that
// is gone once the caller returns.
type abandonableWriter struct {
	ctx    context.Context
	closed <-chan struct{}
	w      io.Writer
	buf    []byte
	err    error // set once it gave up: every later Write returns it
}

type writeResult struct {
	n   int
	err error
}

func (a *abandonableWriter) Write(p []byte) (int, error) {
	if a.err != nil {
		return 0, a.err
	}
	if err := a.ctx.Err(); err != nil {
		a.err = err
		return 0, err
	}
	a.buf = append(a.buf[:0], p...)
	buf, w := a.buf, a.w
	done := make(chan writeResult, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil { // the caller's writer panicked
				done <- writeResult{err: fmt.Errorf("kv: backup: writer panicked: %v", r)}
			}
		}()
		n, err := w.Write(buf)
		done <- writeResult{n, err}
	}()
	select {
	case r := <-done:
		return r.n, r.err
	case <-a.ctx.Done():
		a.err = a.ctx.Err()
	case <-a.closed:
		a.err = ErrClosed
	}
	// The goroutine still owns buf: never write into it again.
	a.buf = nil
	return 0, a.err
}

// Restore replaces the whole data set of the cluster with a copy written by
// Backup (of this cluster or another one). It must be called on the leader
// (Stats().State == StateLeader); on another instance it returns an error
// wrapping ErrNoLeader. One Restore runs at a time on an instance.
//
// The copy is checked whole first (into a temporary file in DataDir, or the
// system's temporary directory when InMemory): a damaged copy is refused
// and nothing is proposed. Then it goes through the Raft log in chunks
// (entries of 512 KiB): every member stages them beside its data (a file
// in DataDir, or memory) without changing what it serves, and the data
// set changes only when a final commit entry is applied, on every member
// at that same index; reads and writes go on meanwhile and are ordered
// with the restore by the log like any write. Before it proposes the
// commit, the leader checks that its own staging is complete and built; if
// it is not (disk full: the error wraps ErrDiskFull), it proposes
// an abort and returns the error, and the old data keeps serving
// everywhere. A member that cannot install a committed restore (its own
// disk filled up while staging) stops applying rather than diverge.
//
// If Restore returns an error wrapping ErrOutcomeUnknown (the leadership
// was lost, or ctx ended, after the chunks), the commit may or may not
// have been applied: read the data to find out. A
// restore whose leader fails before the commit is aborted by the next
// leader; the old data stays.
func (s *Store) Restore(ctx context.Context, r io.Reader) error {
	if err := s.usable(); err != nil {
		return err
	}
	if s.raft.State() != raft.Leader {
		return fmt.Errorf("%w: Restore must run on the leader", ErrNoLeader)
	}
	if !s.restoreBusy.CompareAndSwap(false, true) {
		return errors.New("kv: restore: another Restore is running on this instance")
	}
	defer s.restoreBusy.Store(false)

	// Check the copy into a temporary file first: nothing is proposed
	// unless the whole copy is intact. Its index is set at the commit.
	tmp, err := os.CreateTemp(s.cfg.DataDir, stagingPrefix+"*.tmp")
	if err != nil {
		return fmt.Errorf("kv: restore: %w", wrapDiskFull(err))
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	sum := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	if err := storage.Reindex(ctxReader{ctx, r}, 0, io.MultiWriter(tmp, sum)); err != nil {
		return fmt.Errorf("kv: restore: %w", wrapDiskFull(err))
	}
	size, err := tmp.Seek(0, io.SeekCurrent)
	if err != nil {
		return fmt.Errorf("kv: restore: %w", err)
	}

	id := newRestoreID()
	s.restoreOwn.Store(&id)
	defer s.restoreOwn.Store(nil)
	// Past the leader's limit the members may take snapshots again: commit
	// only well before it.
	ctx, cancel := context.WithTimeout(ctx, restoreLeaderLimit)
	defer cancel()
	p := &proposer{s: s, ctx: ctx}
	p.propose(restoreEntry{kind: restoreBegin, id: id, total: uint64(size), crc: sum.Sum32()}.encode())
	chunk := s.restoreChunk
	if chunk <= 0 {
		chunk = restoreChunkSize
	}
	for off, n := int64(0), 0; off < size && p.err == nil; off, n = off+int64(chunk), n+1 {
		buf := make([]byte, min(int64(chunk), size-off))
		if _, err := tmp.ReadAt(buf, off); err != nil {
			p.err = fmt.Errorf("kv: restore: read the checked copy: %w", err)
			break
		}
		s.restoreStep("chunk", n)
		p.propose(restoreEntry{kind: restoreChunk, id: id, off: uint64(off), data: buf}.encode())
	}
	if err := p.drain(); err != nil {
		return s.abortRestore(id, fmt.Errorf("kv: restore: %w", err))
	}
	// Every chunk is applied here: the leader's staging says whether the
	// copy is complete and built.
	if err := s.fsm.rs.status(id); err != nil {
		return s.abortRestore(id, fmt.Errorf("kv: restore: staging on the leader failed; nothing changed: %w", err))
	}
	s.restoreStep("commit", 0)
	p.propose(restoreEntry{kind: restoreCommit, id: id}.encode())
	if err := p.drain(); err != nil {
		return fmt.Errorf("kv: restore: commit: %w", err)
	}
	s.logger.Info("data set restored from a backup", "restore", id, "index", s.eng.AppliedIndex(), "bytes", size)
	return nil
}

// restoreStep calls the test hook, if any, at a step of Restore.
func (s *Store) restoreStep(step string, n int) {
	if s.restoreHook != nil {
		s.restoreHook(step, n)
	}
}

// abortRestore proposes the abort of restore id (when this member still
// leads) and returns err, noting whether the abort failed.
func (s *Store) abortRestore(id restoreID, err error) error {
	if s.raft.State() != raft.Leader {
		return err
	}
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	p := &proposer{s: s, ctx: ctx}
	p.propose(restoreEntry{kind: restoreAbort, id: id}.encode())
	if aerr := p.drain(); aerr != nil {
		s.logger.Warn("proposing a restore's abort failed; the next leader aborts it", "restore", id, "error", aerr)
		return fmt.Errorf("%w (and its abort: %v)", err, aerr)
	}
	s.logger.Info("restore aborted", "restore", id, "error", err)
	return err
}

// abortStaleRestore runs on the leader: a staging that no Restore of this
// instance owns was left by a leader that failed before its commit, and is
// aborted.
func (s *Store) abortStaleRestore() {
	id, open := s.fsm.rs.openID()
	if !open || s.readyTerm.Load() != s.raft.CurrentTerm() {
		return
	}
	if own := s.restoreOwn.Load(); own != nil && *own == id {
		return
	}
	if err := s.raft.Apply(restoreEntry{kind: restoreAbort, id: id}.encode(), 5*time.Second).Error(); err != nil {
		s.logger.Warn("aborting a restore left by an earlier leader failed", "restore", id, "error", err)
		return
	}
	s.logger.Info("aborted a restore left by an earlier leader", "restore", id)
}

// proposer applies restore entries through Raft directly (not the batcher),
// with up to restoreInFlight in flight; err is the first failure.
type proposer struct {
	s        *Store
	ctx      context.Context
	inflight []chan error
	err      error
}

func (p *proposer) propose(b []byte) {
	if p.err != nil {
		return
	}
	for len(p.inflight) >= restoreInFlight && p.err == nil {
		p.waitOne()
	}
	if p.err != nil {
		return
	}
	f := p.s.raft.Apply(b, 10*time.Second)
	ch := make(chan error, 1)
	if !p.s.goRaft(func() {
		err := translateRaftErr(f.Error())
		if err == nil {
			if rerr, ok := f.Response().(error); ok {
				err = rerr
			}
		}
		ch <- err
	}) {
		p.err = ErrClosed
		return
	}
	p.inflight = append(p.inflight, ch)
}

func (p *proposer) waitOne() {
	ch := p.inflight[0]
	p.inflight = p.inflight[1:]
	select {
	case err := <-ch:
		if err != nil && p.err == nil {
			p.err = err
		}
	case <-p.ctx.Done():
		p.err = p.ctx.Err()
	case <-p.s.ctx.Done():
		p.err = ErrClosed
	}
}

// drain waits for every entry in flight and returns the first failure.
func (p *proposer) drain() error {
	for len(p.inflight) > 0 && p.err == nil {
		p.waitOne()
	}
	p.inflight = nil
	if errors.Is(p.err, errNotLeader) || errors.Is(p.err, errUnsure) {
		return fmt.Errorf("kv: restore: the leadership was lost: %w: %v", ErrOutcomeUnknown, p.err)
	}
	return p.err
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
