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
	if err := storage.WriteSnapshot(ctxWriter{ctx, w}, snap.AppliedIndex(), snap); err != nil {
		return fmt.Errorf("kv: backup: %w", err)
	}
	return nil
}

type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

// Restore replaces the whole data set of the cluster with a copy written by
// Backup (of this cluster or another one). It must be called on the leader
// (Stats().State == StateLeader); on another instance it returns an error
// wrapping ErrNoLeader. Every member installs the copy through Raft; writes
// in flight at that moment fail with ErrLeadershipLost. A damaged copy is
// refused and nothing changes.
func (s *Store) Restore(ctx context.Context, r io.Reader) error {
	if err := s.usable(); err != nil {
		return err
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
	if err := s.applyLocal(ctx, nil); err != nil {
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
