package kv

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/storage"
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
	if s.isClosed() {
		return ErrClosed
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
	if err := storage.WriteSnapshot(aw, snap.AppliedIndex(), snap); err != nil {
		if aw.err != nil {
			return aw.err
		}
		return fmt.Errorf("kv: backup: %w", err)
	}
	return nil
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
// wrapping ErrNoLeader. Every member installs the copy through Raft; writes
// in flight at that moment fail with ErrLeadershipLost. A damaged copy is
// refused and nothing changes.
func (s *Store) Restore(ctx context.Context, r io.Reader) error {
	if s.isClosed() {
		return ErrClosed
	}
	if s.raft.State() != raft.Leader {
		return fmt.Errorf("%w: Restore must run on the leader", ErrNoLeader)
	}
	// Raft installs a user snapshot at max(meta.Index, its last index)+1 and
	// leaves a hole before it. The stream must carry that index, because the
	// data's applied index is what reads wait for: pick meta.Index far enough
	// ahead that raft uses it.
	target := s.raft.LastIndex() + 1<<16
	// Check and re-stamp the copy into a temporary file first: raft needs
	// its size, and nothing reaches raft unless the whole copy is intact.
	tmp, err := os.CreateTemp(s.cfg.DataDir, "restore-*.tmp")
	if err != nil {
		return fmt.Errorf("kv: restore: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if err := storage.Reindex(ctxReader{ctx, r}, target, tmp); err != nil {
		return fmt.Errorf("kv: restore: %w", err)
	}
	size, err := tmp.Seek(0, io.SeekCurrent)
	if err == nil {
		_, err = tmp.Seek(0, io.SeekStart)
	}
	if err != nil {
		return fmt.Errorf("kv: restore: %w", err)
	}
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Index: target - 1, Term: s.raft.CurrentTerm(), Size: size}
	timeout := time.Duration(0)
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if err := s.raft.Restore(meta, tmp, timeout); err != nil {
		return fmt.Errorf("kv: restore: %w", translateRaftErr(err))
	}
	// Raft follows the snapshot with a no-op entry the state machines do
	// not see; commit an entry they see, so that read indexes stay ones the
	// data reaches.
	if err := s.batch.submit(ctx, nil); err != nil {
		return fmt.Errorf("kv: restore: data restored; marker entry: %w", err)
	}
	s.fsm.notify()
	s.logger.Info("data set restored from a backup", "index", target)
	return nil
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
