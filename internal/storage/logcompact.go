package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Online compaction of raft.db: LogStore.Compact writes the live content of
// the bbolt file into a new file beside it (path + ".compact") while Raft
// appends, reads and deletes entries, and swaps it in:
//
//  1. It starts recording what every commit into the file changes from
//     now on (logDirty: the lowest index stored, and the ranges deleted),
//     then copies the log bucket into the new file in key order,
//     compactChunk bytes per pair of transactions, so that no read
//     transaction stays open long enough to hold back a commit that remaps
//     the file.
//  2. It applies what was recorded meanwhile to the new file, in a few
//     rounds while Raft goes on: every range deleted is deleted from it,
//     and every entry from the lowest index stored on is copied again
//     (Raft appends at the end, and overwrites only a suffix: after a
//     conflict it deletes the entries from an index on and stores new
//     ones). Then it syncs the new file.
//  3. It takes the store's transactions exclusively (swapMu: every read
//     and write of the file waits), applies the last records, copies the
//     stable bucket, checks that the new file holds what the old one holds
//     (sameLogContent), commits with an fsync, renames the new file over
//     raft.db, syncs the directory and makes the new file the store's.
//     Only this step stalls Raft's reads and writes of the file; its
//     length is CompactStats.Stall. Entries in the log tail and the state
//     file are other files, untouched.
//
// A commit is recorded after it ends, under no lock: a round that takes
// the records before the record reads the file after the commit, and one
// that takes them after copies the change again. The final step holds the
// lock that every commit holds while it runs, so it sees every commit and
// every record. Any failure before the rename removes the new file, and
// the store goes on with the old one; OpenLogStore removes a new file that
// a crash left behind. A failure after it (syncing the directory) leaves
// the store refusing every call: the rename may not be durable, so writes
// into the new file could be lost at a crash, and the member must be
// reopened.

// logMaxDeletes bounds the deleted ranges recorded during one compaction;
// more fail it (Raft deletes a range after each snapshot and on a
// conflict: a handful).
const logMaxDeletes = 4096

// logDirty is what commits into raft.db changed since a compaction started.
type logDirty struct {
	low     uint64      // the lowest index stored; 0 if none
	deletes [][2]uint64 // ranges deleted, in order
	over    bool        // more than logMaxDeletes ranges
}

func (d *logDirty) empty() bool { return d.low == 0 && len(d.deletes) == 0 && !d.over }

// notePut records entries stored into the file from index first on, when
// a compaction records. Called after the commit.
func (s *LogStore) notePut(first uint64) {
	s.dmu.Lock()
	defer s.dmu.Unlock()
	if d := s.dirty; d != nil && (d.low == 0 || first < d.low) {
		d.low = first
	}
}

// noteDelete records entries min..max deleted from the file, when a
// compaction records. Called after the commit.
func (s *LogStore) noteDelete(min, max uint64) {
	s.dmu.Lock()
	defer s.dmu.Unlock()
	if d := s.dirty; d != nil && !d.over {
		if d.deletes = append(d.deletes, [2]uint64{min, max}); len(d.deletes) > logMaxDeletes {
			d.over, d.deletes = true, nil
		}
	}
}

// takeDirty returns the records so far and starts new ones.
func (s *LogStore) takeDirty() (*logDirty, error) {
	s.dmu.Lock()
	d := s.dirty
	s.dirty = &logDirty{}
	s.dmu.Unlock()
	if d.over {
		return nil, fmt.Errorf("more than %d ranges of entries deleted during the copy", logMaxDeletes)
	}
	return d, nil
}

// Test hooks: logCompactHookStep runs at each step of a compaction of a
// LogStore in use ("copied", "round", "final"), and logCompactSkipDirty
// skips applying the changes made during the copy to the new file (a
// broken compaction, for the tests' negative control).
var (
	logCompactHookStep  func(step string)
	logCompactSkipDirty bool
)

// Compact rewrites raft.db without its free pages while Raft goes on (see
// the description above logMaxDeletes), and returns its sizes and timings:
// reads and writes of the file wait only during the final step (Stall).
// The entries and the stable keys after it are those before, with every
// change made meanwhile.
//
// It fails with ErrCompacting while another compaction of the store runs,
// with an error wrapping ErrDiskFull when the new file does not fit, with
// ctx's error once ctx ends, and with ErrClosed once Close was called;
// after any of these the store goes on with its file as it was, and no new
// file is left behind. A failure after the rename (syncing the directory)
// makes every later call of the store fail: the member must be reopened.
func (s *LogStore) Compact(ctx context.Context) (CompactStats, error) {
	if !s.compacting.CompareAndSwap(false, true) {
		return CompactStats{}, ErrCompacting
	}
	defer s.compacting.Store(false)
	s.cmu.Lock() // Close waits for it
	defer s.cmu.Unlock()
	if s.stopping.Load() {
		return CompactStats{}, fmt.Errorf("storage: compact %s: %w", s.path, ErrClosed)
	}
	start := time.Now()
	var st CompactStats
	if fi, err := os.Stat(s.path); err == nil {
		st.Before = fi.Size()
	}
	err := s.compact(ctx, &st)
	s.dmu.Lock()
	s.dirty = nil
	s.dmu.Unlock()
	st.Took = time.Since(start)
	if err != nil {
		if berr := s.brokenErr(); berr != nil && errors.Is(err, berr) {
			return st, err // it names the compaction and the file
		}
		return st, fmt.Errorf("storage: compact %s: %w", s.path, err)
	}
	if fi, err := os.Stat(s.path); err == nil {
		st.After = fi.Size()
	}
	return st, nil
}

// compact is Compact once the store is ours to compact.
func (s *LogStore) compact(ctx context.Context, st *CompactStats) (err error) {
	tmp := s.path + compactSuffix
	_ = fsRemove(tmp)
	s.dmu.Lock()
	s.dirty = &logDirty{}
	s.dmu.Unlock()
	// The store's own options: after the rename this handle is the
	// store's, and it holds the lock of the file from its creation on.
	ndb, err := openDB(tmp, "raft log", logStoreBoltOptions(LogStoreOptions{NoSync: s.noSync}))
	if err != nil {
		_ = fsRemove(tmp)
		return diskFull(err)
	}
	ndb.NoSync = true // until the final step: one Sync before it
	swapped := false
	defer func() {
		if !swapped {
			_ = ndb.Close()
			_ = fsRemove(tmp)
			if err != nil && !errors.Is(err, ErrCorrupt) {
				err = diskFull(err)
			}
		}
	}()
	err = ndb.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{logStoreBucketLogs, logStoreBucketConf} {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	// 1. Every entry, in chunks.
	var from []byte
	for {
		if err := s.compactCheck(ctx); err != nil {
			return err
		}
		next, err := s.copyLogChunk(ndb, from)
		if err != nil {
			return err
		}
		if next == nil {
			break
		}
		from = next
	}
	if logCompactHookStep != nil {
		logCompactHookStep("copied")
	}
	// 2. What changed meanwhile, a few rounds.
	for st.Rounds < 2 {
		if err := s.compactCheck(ctx); err != nil {
			return err
		}
		d, err := s.takeDirty()
		if err != nil {
			return err
		}
		if d.empty() {
			break
		}
		if err := s.applyDirty(s.view, ndb, d, false); err != nil {
			return err
		}
		st.Rounds++
		if logCompactHookStep != nil {
			logCompactHookStep("round")
		}
	}
	if !s.noSync {
		if err := ndb.Sync(); err != nil {
			return fmt.Errorf("sync %s: %w", tmp, err)
		}
	}
	if err := s.compactCheck(ctx); err != nil {
		return err
	}
	if logCompactHookStep != nil {
		logCompactHookStep("final")
	}
	// 3. Reads and writes wait: the last changes, the check, the swap.
	s.swapMu.Lock()
	paused := time.Now()
	old, err := s.compactFinal(ndb, tmp)
	st.Stall = time.Since(paused)
	s.swapMu.Unlock()
	if old == nil {
		return err
	}
	swapped = true
	// No transaction of old is open: each ran under swapMu.
	if cerr := old.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close the replaced file: %w", cerr)
	}
	// The copy read the whole file through the new mapping: drop its
	// pages from resident memory (see releaseMapped).
	_ = releaseMapped(s.path, ndb.Info().Data)
	return err
}

// brokenErr returns the error that broke the store, or nil.
func (s *LogStore) brokenErr() error {
	s.swapMu.RLock()
	defer s.swapMu.RUnlock()
	return s.broken
}

// compactCheck returns why the compaction must stop: ctx ended, or the
// store is closing or broken.
func (s *LogStore) compactCheck(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.stopping.Load() {
		return ErrClosed
	}
	return nil
}

// compactFinal is the final step of a compaction; the caller holds swapMu
// exclusively. It returns the replaced handle once ndb is the store's, or
// nil and why not (ndb is then still the caller's to close and remove).
// After the rename it returns the replaced handle and an error if the
// directory sync failed: the store is then broken.
func (s *LogStore) compactFinal(ndb *bolt.DB, tmp string) (*bolt.DB, error) {
	if s.broken != nil {
		return nil, s.broken
	}
	if s.stopping.Load() {
		return nil, ErrClosed
	}
	d, err := s.takeDirty()
	if err != nil {
		return nil, err
	}
	ndb.NoSync = s.noSync // this commit syncs the new file
	read := func(fn func(*bolt.Tx) error) error {
		return guard(s.path, "raft log", func() error { return s.db.View(fn) })
	}
	if err := s.applyDirty(read, ndb, d, true); err != nil {
		return nil, err
	}
	if err := sameLogContent(s.db, ndb); err != nil {
		return nil, err
	}
	if err := fsRename(tmp, s.path); err != nil {
		return nil, err
	}
	if afterRename != nil {
		afterRename(s.path)
	}
	old := s.db
	s.db = ndb
	if !s.noSync {
		if err := fsSyncDir(dirOf(s.path)); err != nil {
			s.broken = diskFull(fmt.Errorf("storage: compact %s: the raft log file was replaced and the store cannot go on with it (reopen the member): sync dir: %w", s.path, err))
			return old, s.broken
		}
	}
	return old, nil
}

// copyLogChunk copies about compactChunk bytes of the log bucket, from the
// first key after from (from the first key when from is nil), into ndb,
// and returns the last key copied, or nil at the end.
func (s *LogStore) copyLogChunk(ndb *bolt.DB, from []byte) (last []byte, err error) {
	err = s.view(func(rtx *bolt.Tx) error {
		return ndb.Update(func(wtx *bolt.Tx) error {
			dst := wtx.Bucket(logStoreBucketLogs)
			dst.FillPercent = compactFillPercent
			c := rtx.Bucket(logStoreBucketLogs).Cursor()
			var k, v []byte
			if from == nil {
				k, v = c.First()
			} else if k, v = c.Seek(from); k != nil && bytes.Equal(k, from) {
				k, v = c.Next()
			}
			n := 0
			for ; k != nil; k, v = c.Next() {
				// k and v stay valid until rtx ends, after the commit.
				if err := dst.Put(k, v); err != nil {
					return err
				}
				if n += len(k) + len(v); n >= compactChunk {
					last = bytes.Clone(k)
					return nil
				}
			}
			last = nil
			return nil
		})
	})
	return last, err
}

// applyDirty applies d to ndb from the file read reads: each range
// deleted is deleted, and every entry from d.low on is replaced by the
// file's; with conf, the stable bucket is copied whole too. One
// transaction of ndb.
func (s *LogStore) applyDirty(read func(func(*bolt.Tx) error) error, ndb *bolt.DB, d *logDirty, conf bool) error {
	return read(func(rtx *bolt.Tx) error {
		return ndb.Update(func(wtx *bolt.Tx) error {
			dst := wtx.Bucket(logStoreBucketLogs)
			dst.FillPercent = compactFillPercent
			if logCompactSkipDirty {
				d = &logDirty{}
			}
			for _, r := range d.deletes {
				if err := deleteKeyRange(dst, r[0], r[1]); err != nil {
					return err
				}
			}
			if d.low != 0 {
				if err := deleteKeyRange(dst, d.low, math.MaxUint64); err != nil {
					return err
				}
				var low [8]byte
				binary.BigEndian.PutUint64(low[:], d.low)
				c := rtx.Bucket(logStoreBucketLogs).Cursor()
				for k, v := c.Seek(low[:]); k != nil; k, v = c.Next() {
					if err := dst.Put(k, v); err != nil {
						return err
					}
				}
			}
			if !conf {
				return nil
			}
			if err := wtx.DeleteBucket(logStoreBucketConf); err != nil {
				return err
			}
			nb, err := wtx.CreateBucket(logStoreBucketConf)
			if err != nil {
				return err
			}
			return copyBucket(rtx.Bucket(logStoreBucketConf), nb)
		})
	})
}

// deleteKeyRange deletes the keys of b from index min to max.
func deleteKeyRange(b *bolt.Bucket, min, max uint64) error {
	var minKey, maxKey [8]byte
	binary.BigEndian.PutUint64(minKey[:], min)
	binary.BigEndian.PutUint64(maxKey[:], max)
	c := b.Cursor()
	cur := make([]byte, 0, 8)
	for k, _ := c.Seek(minKey[:]); k != nil && bytes.Compare(k, maxKey[:]) <= 0; {
		cur = append(cur[:0], k...)
		if err := c.Delete(); err != nil {
			return err
		}
		k, _ = c.Seek(cur) // see DeleteRange
	}
	return nil
}
