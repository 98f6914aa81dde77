package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Compaction: bbolt never gives pages back to the file system, so after
// many deletions a data file keeps the size of its peak. Bolt.Compact
// writes the live content into a new file beside it (path + ".compact")
// while reads and writes go on, and swaps it in:
//
//  1. It starts recording the keys that every commit into the file touches
//     from now on (the dirty set), then copies the data bucket into the new
//     file in key order, compactChunk bytes per pair of transactions (one
//     read transaction of the live file, one write transaction of the new
//     one), so that no read transaction of the live file stays open long
//     enough to hold back a commit that remaps the file.
//  2. It copies the dirty keys again (their value in the live file now, or
//     a deletion), in rounds, while apply goes on, until the set is small
//     (compactFinalKeys) or compactMaxRounds rounds have run.
//  3. It waits until no snapshot copies the live file (a commit would
//     wait for the copy), pauses apply (the engine's write lock: Update
//     waits) and snapshot copies, commits the write layers into the live
//     file, copies the last dirty keys and the meta bucket (format,
//     applied index), fsyncs the new file and renames
//     it over the data file through the engine's swap machinery (swapIn):
//     snapshots still reading the old file keep it until their Release.
//     Only this step stalls apply; its length is CompactStats.Stall.
//
// A key committed after recording started is in the dirty set, and is
// copied again by a later round from a read transaction that began after
// its key was taken from the set: the new file ends up with every key's
// last value. The set is bounded (compactMaxDirtyBytes): when writes touch
// more keys than that during the copy, the copy starts over (at most
// compactMaxRestarts times) and then gives up with an error. Any failure
// removes the new file and leaves the live file serving; OpenBolt removes
// a new file that a crash left behind.
const (
	// compactChunk is how many bytes of pairs one pair of transactions
	// copies.
	compactChunk = 8 << 20
	// compactFillPercent fills the new file's pages up as keys arrive in
	// order (as etcd's defrag does), instead of bbolt's half-full splits.
	compactFillPercent = 0.9
	// compactMaxRounds bounds the dirty-key rounds before the pause.
	compactMaxRounds = 8
	// compactMaxDirtyBytes bounds the dirty set (keys and overhead).
	compactMaxDirtyBytes = 64 << 20
	// compactMaxRestarts is how many times the copy starts over after the
	// dirty set overflowed.
	compactMaxRestarts = 2
	// compactSuffix names the new file: the data file's path and this.
	compactSuffix = ".compact"
)

// Compaction at open: OpenBolt (and OpenLogStore) compact a file before
// using it when it is at least AutoCompactMinSize bytes and more than
// AutoCompactFreeRatio of it is free pages.
const (
	// DefaultAutoCompactMinSize is the smallest file compacted at open: 64 MiB.
	DefaultAutoCompactMinSize = 64 << 20
	// AutoCompactFreeRatio is the part of a file that must be free pages
	// for it to be compacted at open: more than half.
	AutoCompactFreeRatio = 0.5
)

// compactFinalKeys: once a round would start with at most this many dirty
// keys, the rest is copied during the pause. A variable for the tests.
var compactFinalKeys = 4096

// ErrCompacting is returned by Compact while another compaction of the same
// file runs.
var ErrCompacting = errors.New("storage: a compaction of this file is already running")

// errDirtyOverflow ends a copy whose dirty set grew past its bound.
var errDirtyOverflow = errors.New("storage: compact: too many keys changed during the copy")

// CompactStats describes one compaction.
type CompactStats struct {
	Before, After int64         // the file's size before and after, in bytes
	Took          time.Duration // the whole compaction
	Stall         time.Duration // how long apply (Update) was paused
	Rounds        int           // dirty-key rounds run before the pause
	Restarts      int           // times the copy started over
}

// dirtySet is the keys commits touched since a compaction started.
type dirtySet struct {
	keys  map[string]struct{}
	bytes int
	over  bool // grew past compactMaxDirtyBytes: the copy starts over
}

// noteDirty records the keys of a layer just committed into the file, when
// a compaction records them.
func (e *Bolt) noteDirty(f *layer) {
	e.dmu.Lock()
	defer e.dmu.Unlock()
	d := e.dirty
	if d == nil || d.over {
		return
	}
	f.t.Ascend(func(it layerItem) bool {
		if _, ok := d.keys[string(it.key)]; !ok {
			d.keys[string(it.key)] = struct{}{}
			d.bytes += len(it.key) + 48
		}
		if d.bytes > compactMaxDirtyBytes {
			d.over, d.keys, d.bytes = true, nil, 0
			return false
		}
		return true
	})
}

// takeDirty returns the keys recorded so far, sorted, and starts a new set.
func (e *Bolt) takeDirty() ([][]byte, error) {
	e.dmu.Lock()
	d := e.dirty
	e.dirty = &dirtySet{keys: map[string]struct{}{}}
	e.dmu.Unlock()
	if d == nil {
		return nil, nil
	}
	if d.over {
		return nil, errDirtyOverflow
	}
	keys := make([][]byte, 0, len(d.keys))
	for k := range d.keys {
		keys = append(keys, []byte(k))
	}
	slices.SortFunc(keys, bytes.Compare)
	return keys, nil
}

// Test hooks: compactHook runs at each step ("copied", "round", "final")
// and compactSkipDirty skips copying the dirty keys (a broken compaction,
// for the tests' negative control).
var (
	compactHook      func(step string)
	compactSkipDirty bool
)

// SetCompactHook makes every compaction from now on call fn at each of its
// steps ("copied", "round", "final"), until the returned function restores
// the hook before it. For the tests of the packages that use this one; not
// safe while a compaction runs.
func SetCompactHook(fn func(step string)) (restore func()) {
	old := compactHook
	compactHook = fn
	return func() { compactHook = old }
}

// Compacting says whether a compaction of the file runs now.
func (e *Bolt) Compacting() bool { return e.compacting.Load() }

// Compact rewrites the data file without its free pages while reads and
// writes go on (see the description above compactChunk), and returns its
// sizes and timings. Writes wait only during the final step (Stall).
// Reads never wait for it. The content after it is the content before,
// with every write made meanwhile: the same keys, values, checksums and
// applied index.
//
// It fails with ErrCompacting while another compaction runs, with an
// error wrapping ErrDiskFull when the new file does not fit, and with
// ctx's error once ctx ends; after any failure the engine goes on with
// its file as it was, and no new file is left behind. A failure after the
// rename (syncing the directory, opening the new file) breaks the engine
// as a failed Install does.
func (e *Bolt) Compact(ctx context.Context) (CompactStats, error) {
	if !e.compacting.CompareAndSwap(false, true) {
		return CompactStats{}, ErrCompacting
	}
	defer e.compacting.Store(false)
	e.cmu.Lock() // Close waits for it
	defer e.cmu.Unlock()
	select {
	case <-e.stop:
		return CompactStats{}, fmt.Errorf("storage: compact %s: %w", e.path, ErrClosed)
	default:
	}
	start := time.Now()
	var st CompactStats
	if fi, err := os.Stat(e.path); err == nil {
		st.Before = fi.Size()
	}
	var err error
	for {
		err = e.compactOnce(ctx, &st)
		if !errors.Is(err, errDirtyOverflow) || st.Restarts >= compactMaxRestarts {
			break
		}
		st.Restarts++
	}
	e.dmu.Lock()
	e.dirty = nil
	e.dmu.Unlock()
	st.Took = time.Since(start)
	if se := (swapError{}); errors.As(err, &se) {
		return st, se.err // it names the compaction and the file already
	}
	if err != nil {
		if errors.Is(err, errDirtyOverflow) {
			err = fmt.Errorf("%w (more than %d bytes of keys, %d times); try again under a lighter write load", err, compactMaxDirtyBytes, st.Restarts+1)
		}
		return st, fmt.Errorf("storage: compact %s: %w", e.path, err)
	}
	if fi, err := os.Stat(e.path); err == nil {
		st.After = fi.Size()
	}
	return st, nil
}

// swapError is an error of swapInLocked in a compaction, which names the
// compaction and the file itself: Compact returns it as it is.
type swapError struct{ err error }

func (e swapError) Error() string { return e.err.Error() }
func (e swapError) Unwrap() error { return e.err }

// compactOnce is one attempt of Compact.
func (e *Bolt) compactOnce(ctx context.Context, st *CompactStats) (err error) {
	tmp := e.path + compactSuffix
	_ = fsRemove(tmp)
	e.mu.RLock()
	uerr, db := e.usable(), e.db
	e.mu.RUnlock()
	if uerr != nil {
		return uerr
	}
	// Less to copy twice: what the layers hold goes into the file first.
	if err := e.commitThrough(e.applied.Load()); err != nil {
		return err
	}
	e.dmu.Lock()
	e.dirty = &dirtySet{keys: map[string]struct{}{}}
	e.dmu.Unlock()

	ndb, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: time.Second, NoSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		_ = fsRemove(tmp)
		return diskFull(err)
	}
	swapped := false
	defer func() {
		if !swapped {
			ndb.Close()
			_ = fsRemove(tmp)
			if err != nil && !errors.Is(err, ErrCorrupt) {
				err = diskFull(err)
			}
		}
	}()
	if err := ndb.Update(initDataFile); err != nil {
		return err
	}
	// 1. Everything, in chunks.
	var from []byte
	for {
		if err := e.compactCheck(ctx, db); err != nil {
			return err
		}
		next, err := e.copyChunk(db, ndb, from)
		if err != nil {
			return err
		}
		if next == nil {
			break
		}
		from = next
	}
	if compactHook != nil {
		compactHook("copied")
	}
	// 2. The keys changed meanwhile, while the set shrinks.
	for st.Rounds < compactMaxRounds {
		e.dmu.Lock()
		n, over := len(e.dirty.keys), e.dirty.over
		e.dmu.Unlock()
		if !over && n <= compactFinalKeys {
			break
		}
		if err := e.compactCheck(ctx, db); err != nil {
			return err
		}
		keys, err := e.takeDirty()
		if err != nil {
			return err
		}
		if err := e.copyKeys(db, ndb, keys); err != nil {
			return err
		}
		st.Rounds++
		if compactHook != nil {
			compactHook("round")
		}
	}
	// Make the pause short: write the new file to disk (its bulk, written
	// without fsync) and commit the layers into the live file before it,
	// so that the pause syncs only what its own step writes.
	if !e.opts.NoSync {
		if err := ndb.Sync(); err != nil {
			return fmt.Errorf("sync %s: %w", tmp, err)
		}
	}
	if err := e.commitThrough(e.applied.Load()); err != nil {
		return err
	}
	if err := e.compactCheck(ctx, db); err != nil {
		return err
	}
	if compactHook != nil {
		compactHook("final")
	}
	// 3. Pause apply, the last keys, the meta bucket, the swap.
	old, err := e.compactFinal(ctx, db, ndb, tmp, &st.Stall)
	if old == nil {
		return err
	}
	swapped = true
	return e.retireReplaced(old)
}

// compactPauseWait bounds how long a compaction waits, before its pause,
// for snapshots copying the live file (see pauseForFinal). A variable for
// the tests.
var compactPauseWait = 2 * time.Minute

// compactFinal is the last step of a compaction: with apply paused (see
// pauseForFinal), it commits the layers into the live file db, copies the
// keys changed since the last round and the meta bucket into ndb, syncs
// and closes it, and swaps it in. It adds the length of the pause to
// *stall, and returns the replaced handle (nil if nothing was swapped: ndb
// is then still the caller's to remove, unless the swap itself failed).
func (e *Bolt) compactFinal(ctx context.Context, db, ndb *bolt.DB, tmp string, stall *time.Duration) (*bolt.DB, error) {
	paused, err := e.pauseForFinal(ctx, stall, func() error {
		// What apply did while a copy ran: into the files before the pause.
		if err := e.commitThrough(e.applied.Load()); err != nil {
			return err
		}
		keys, err := e.takeDirty()
		if err != nil {
			return err
		}
		return e.copyKeys(db, ndb, keys)
	})
	if err != nil {
		return nil, err
	}
	defer func() {
		e.gate.Unlock()
		e.fmu.Unlock()
		e.wmu.Unlock()
		*stall += time.Since(paused)
	}()
	// flushAll, under the gate held already.
	if err := e.commitLayer(false); err != nil {
		return nil, err
	}
	e.swap()
	if err := e.commitLayer(false); err != nil {
		return nil, err
	}
	e.mu.RLock()
	uerr, same := e.usable(), e.db == db
	e.mu.RUnlock()
	switch {
	case uerr != nil:
		return nil, uerr
	case !same:
		return nil, errors.New("the data file was replaced by a restore during the compaction")
	}
	keys, err := e.takeDirty()
	if err != nil {
		return nil, err
	}
	if err := e.copyKeys(db, ndb, keys); err != nil {
		return nil, err
	}
	if err := e.copyMeta(db, ndb); err != nil {
		return nil, err
	}
	if !e.opts.NoSync {
		if err := ndb.Sync(); err != nil {
			return nil, fmt.Errorf("sync %s: %w", tmp, err)
		}
	}
	if err := ndb.Close(); err != nil {
		return nil, fmt.Errorf("close %s: %w", tmp, err)
	}
	old, err := e.swapInLocked(tmp, "compact") // removes tmp on failure
	if err != nil {
		return nil, swapError{err}
	}
	return old, nil
}

// pauseForFinal pauses apply for a compaction's final step: it returns
// holding wmu, fmu and the gate exclusively, with the time it took wmu.
//
// A commit waits for every snapshot copying the live file (the gate), and
// such a copy lasts as long as the file takes to write out; the final step
// commits the layers, so a copy running during the pause would stretch it
// to the copy's length. So it waits, before pausing, until no copy runs,
// then takes the three locks without waiting for fmu or the gate (a commit
// under way, or a copy begun meanwhile, makes it let go and try again);
// once it holds the gate no copy can begin until the pause ends. After
// waiting for a copy it calls catchUp, unpaused, to take in what apply did
// meanwhile. The moments it held wmu in vain are added to *stall. If
// copies keep running for compactPauseWait it pauses anyway, waiting for
// them. It fails with ctx's error or ErrClosed while it waits, or with
// catchUp's error.
func (e *Bolt) pauseForFinal(ctx context.Context, stall *time.Duration, catchUp func() error) (time.Time, error) {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	waited := false
	for deadline := time.Now().Add(compactPauseWait); time.Now().Before(deadline); {
		if e.copying.Load() > 0 {
			waited = true
		} else if waited {
			waited = false
			if err := catchUp(); err != nil {
				return time.Time{}, err
			}
			continue
		} else {
			e.wmu.Lock()
			paused := time.Now()
			if e.fmu.TryLock() {
				if e.gate.TryLock() {
					return paused, nil
				}
				e.fmu.Unlock()
			}
			e.wmu.Unlock()
			*stall += time.Since(paused)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-e.stop:
			return time.Time{}, ErrClosed
		case <-tick.C:
		}
	}
	e.wmu.Lock()
	paused := time.Now()
	e.fmu.Lock()
	e.gate.Lock()
	return paused, nil
}

// compactCheck returns why the compaction must stop: ctx ended, the
// engine closed or broke, or a restore replaced the file.
func (e *Bolt) compactCheck(ctx context.Context, db *bolt.DB) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-e.stop: // Close waits for this compaction
		return ErrClosed
	default:
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	if err := e.usable(); err != nil {
		return err
	}
	if e.db != db {
		return errors.New("the data file was replaced by a restore during the compaction")
	}
	return nil
}

// copyChunk copies about compactChunk bytes of the data bucket of db,
// from the first key after from (from the first key when from is nil),
// into ndb, and returns the last key copied, or nil at the end.
func (e *Bolt) copyChunk(db, ndb *bolt.DB, from []byte) (last []byte, err error) {
	rtx, err := db.Begin(false)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", e.path, err)
	}
	defer rtx.Rollback()
	wtx, err := ndb.Begin(true)
	if err != nil {
		return nil, err
	}
	defer wtx.Rollback()
	err = e.guard(func() error {
		src := e.tx(rtx)
		dst := wtx.Bucket(bucketData)
		dst.FillPercent = compactFillPercent
		c := rtx.Bucket(bucketData).Cursor()
		var k, v []byte
		if from == nil {
			k, v = c.First()
		} else if k, v = c.Seek(from); k != nil && bytes.Equal(k, from) {
			k, v = c.Next()
		}
		n := 0
		for ; k != nil; k, v = c.Next() {
			if _, err := src.check(k, v); err != nil {
				return err
			}
			// bbolt keeps k and v until the commit, which comes before
			// rtx ends: no copies.
			if err := dst.Put(k, v); err != nil {
				return err
			}
			last = k
			if n += len(k) + len(v); n >= compactChunk {
				last = bytes.Clone(k)
				return nil
			}
		}
		last = nil
		return nil
	})
	if err != nil {
		return nil, err
	}
	return last, wtx.Commit()
}

// copyKeys copies keys from db into ndb: each one's stored record, or a
// deletion where db does not have it.
func (e *Bolt) copyKeys(db, ndb *bolt.DB, keys [][]byte) error {
	if compactSkipDirty {
		return nil
	}
	for len(keys) > 0 {
		rest, err := e.copyKeysChunk(db, ndb, keys)
		if err != nil {
			return err
		}
		keys = rest
	}
	return nil
}

func (e *Bolt) copyKeysChunk(db, ndb *bolt.DB, keys [][]byte) (rest [][]byte, err error) {
	rtx, err := db.Begin(false)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", e.path, err)
	}
	defer rtx.Rollback()
	wtx, err := ndb.Begin(true)
	if err != nil {
		return nil, err
	}
	defer wtx.Rollback()
	err = e.guard(func() error {
		src, dst := rtx.Bucket(bucketData), wtx.Bucket(bucketData)
		check := e.tx(rtx)
		n := 0
		for i, k := range keys {
			v := src.Get(k)
			if v == nil {
				if err := dst.Delete(k); err != nil {
					return err
				}
			} else {
				if _, err := check.check(k, v); err != nil {
					return err
				}
				if err := dst.Put(k, v); err != nil {
					return err
				}
			}
			if n += len(k) + len(v); n >= compactChunk {
				rest = keys[i+1:]
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return rest, wtx.Commit()
}

// copyMeta copies every bucket of db but the data bucket (the meta bucket:
// format and applied index) into ndb, replacing what ndb holds there.
func (e *Bolt) copyMeta(db, ndb *bolt.DB) error {
	rtx, err := db.Begin(false)
	if err != nil {
		return fmt.Errorf("read %s: %w", e.path, err)
	}
	defer rtx.Rollback()
	return e.guard(func() error {
		return ndb.Update(func(wtx *bolt.Tx) error {
			return rtx.ForEach(func(name []byte, b *bolt.Bucket) error {
				if bytes.Equal(name, bucketData) {
					return nil
				}
				if wtx.Bucket(name) != nil {
					if err := wtx.DeleteBucket(name); err != nil {
						return err
					}
				}
				nb, err := wtx.CreateBucket(name)
				if err != nil {
					return err
				}
				return copyBucket(b, nb)
			})
		})
	})
}

// copyBucket copies every pair and nested bucket of src into dst.
func copyBucket(src, dst *bolt.Bucket) error {
	return src.ForEach(func(k, v []byte) error {
		if v != nil {
			return dst.Put(k, v)
		}
		nb, err := dst.CreateBucket(k)
		if err != nil {
			return err
		}
		return copyBucket(src.Bucket(k), nb)
	})
}

// shouldCompactAtOpen says whether db (a file of size bytes) is worth
// compacting at open: at least minSize bytes, and more than
// AutoCompactFreeRatio of it free pages.
func shouldCompactAtOpen(db *bolt.DB, size, minSize int64) bool {
	if minSize < 0 || size < minSize || size == 0 {
		return false
	}
	s := db.Stats()
	free := int64(s.FreeAlloc)
	return float64(free) > AutoCompactFreeRatio*float64(size)
}

// compactAtOpen compacts the data file of an engine that OpenBolt has just
// opened, before its committer runs, when shouldCompactAtOpen says so. A
// failure is logged, and the engine goes on with its file.
func (e *Bolt) compactAtOpen() {
	min := e.opts.AutoCompactMinSize
	if min == 0 {
		min = DefaultAutoCompactMinSize
	}
	fi, err := os.Stat(e.path)
	if err != nil || !shouldCompactAtOpen(e.db, fi.Size(), min) {
		return
	}
	log := e.opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	st, err := e.Compact(context.Background())
	if err != nil {
		log.Warn("data file compaction at open failed; going on with the file as it is", "path", e.path, "error", err)
		return
	}
	log.Info("data file compacted at open", "path", e.path, "before", st.Before, "after", st.After, "took", st.Took)
}
