package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	bolt "go.etcd.io/bbolt"
)

var (
	bucketData = []byte("kv")
	bucketMeta = []byte("meta")
	keyApplied = []byte("applied")
	keyFormat  = []byte("format")
)

// boltFormat is the data file's format, kept under keyFormat: 2 stores each
// value followed by a CRC-32C of its key and value (bbolt checksums only its
// meta pages, so a damaged data page would otherwise read back as a wrong
// value).
const boltFormat = 2

// recordCRCSize is the size of the checksum after each stored value.
const recordCRCSize = 4

func recordCRC(key, value []byte) uint32 {
	return crc32.Update(crc32.Checksum(key, castagnoli), castagnoli, value)
}

// BoltOptions tune a Bolt engine. The zero value is durable.
type BoltOptions struct {
	// NoSync skips fsync on commit. Only for data that need not survive a
	// crash.
	NoSync bool
	// InitialMmapSize is the address space bbolt maps for the file at
	// first (address space, not memory); past it, a commit remaps the file,
	// which waits for every open read transaction. Snapshots read a copy of
	// the file and no commit starts while one is copied, so a remap waits
	// only for short reads whatever this is; a larger mapping only remaps
	// less often. 0 means 1 GiB.
	InitialMmapSize int
	// AutoCompactMinSize is the smallest data file OpenBolt compacts
	// before use when more than AutoCompactFreeRatio of it is free pages.
	// 0 means DefaultAutoCompactMinSize (64 MiB); negative never compacts
	// at open.
	AutoCompactMinSize int64
	// Logger receives the engine's own messages (a compaction at open).
	// nil discards them.
	Logger *slog.Logger
	// CommitInterval is how long writes may wait in memory before the
	// background committer writes them to the file (sooner once they hold
	// 24 MiB). Longer intervals write each page of random keys less often;
	// after a crash up to this much of the log (and never more than those
	// 24 MiB of writes) is applied again. 0 means 4 s.
	CommitInterval time.Duration
	// ObserveCommit, when set, is called with the duration of every commit
	// of the file that succeeds (the bbolt transaction with its fsync). It
	// must not block.
	ObserveCommit func(time.Duration)
}

// Bolt is an Engine on one bbolt file: data larger than memory, with the
// applied index stored in the same transactions as the data. Every value is
// stored with a CRC-32C of its key and value, checked on every read: a
// damaged record fails the read with an error wrapping ErrCorruptData that
// names the file and the key, and a panic of bbolt on a damaged page is
// turned into such an error too.
type Bolt struct {
	path string
	opts BoltOptions

	// Lock order: wmu, then fmu, then gate, then mu. No lock of the
	// engine is held across a bbolt Begin or a read of the file: a commit
	// that grows the file past bbolt's mapping remaps it, the remap waits
	// for every open read transaction, and every Begin waits for the remap.
	wmu  sync.Mutex   // one Update, layer swap or Restore at a time
	fmu  sync.Mutex   // one commit of a layer into the file at a time
	gate sync.RWMutex // held shared by snapshots while they read the live file, exclusively by a commit
	mu   sync.RWMutex // guards the fields below, briefly: never across a bbolt call that may wait

	// copying counts snapshots reading the live file (holding gate).
	copying atomic.Int32

	// Compaction (compact.go): one at a time; dirty is the keys commits
	// touched since it started recording, guarded by dmu (taken alone).
	// cmu is held by a running compaction, and taken by Close after it
	// closed stop: Close returns once the compaction has stopped and
	// removed its file. Taken before wmu.
	compacting atomic.Bool
	cmu        sync.Mutex
	dmu        sync.Mutex
	dirty      *dirtySet

	db       *bolt.DB
	closed   bool
	pending  *layer // writes since the last swap; never nil while open
	flushing *layer // the layer being committed, or nil
	flushErr error  // the last failed commit, until one succeeds
	broken   error  // set when an Install failed after its rename: every call returns it

	applied atomic.Uint64 // the last Update, in memory
	durable atomic.Uint64 // the applied index the file records
	gen     atomic.Uint64 // bumped by every commit and Restore, for cache
	cache   *readCache
	staged  atomic.Pointer[boltStaged] // the one staged restore, if any

	// The file's size and the part of it in use, as of the last commit by
	// the committer (or the open, or an Install): see FileSize.
	size, inUse atomic.Int64

	// Snapshots open on each file handle, and the handles a Restore
	// replaced while snapshots still read them: the last Release closes
	// such a handle (see Restore).
	smu     sync.Mutex
	snaps   map[*bolt.DB]int
	retired map[*bolt.DB]bool

	kick     chan struct{} // asks the committer for a commit now
	stop     chan struct{} // closed by Close
	stopOnce sync.Once
	done     chan struct{} // closed when the committer returns
}

var (
	_ Engine      = (*Bolt)(nil)
	_ PointReader = (*Bolt)(nil)
)

// OpenBolt opens (or creates) the bbolt data file at path. A leftover file of
// an interrupted Restore is removed.
func OpenBolt(path string, opts BoltOptions) (*Bolt, error) {
	if opts.InitialMmapSize == 0 {
		opts.InitialMmapSize = 1 << 30
	}
	if opts.CommitInterval <= 0 {
		opts.CommitInterval = flushInterval
	}
	e := &Bolt{path: path, opts: opts, pending: newIndexedLayer(), cache: newReadCache(cacheBytes),
		snaps: map[*bolt.DB]int{}, retired: map[*bolt.DB]bool{},
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	db, err := e.open(path)
	if err != nil {
		return nil, err
	}
	// Only once the file's lock is ours: a second process started on the
	// same DataDir by mistake must not delete a running Restore's file.
	_ = fsRemove(path + ".restore")
	_ = fsRemove(path + compactSuffix)
	removeSnapCopies(path)
	e.db = db
	if err := e.loadApplied(); err != nil {
		db.Close()
		return nil, err
	}
	e.compactAtOpen()
	if err := e.usable(); err != nil {
		e.db.Close()
		return nil, err
	}
	e.noteSize(e.db)
	go e.committer()
	return e, nil
}

func (e *Bolt) open(path string) (*bolt.DB, error) {
	db, err := openDB(path, "data file", &bolt.Options{
		Timeout:         time.Second,
		NoSync:          e.opts.NoSync,
		NoFreelistSync:  false,
		FreelistType:    bolt.FreelistMapType,
		InitialMmapSize: e.opts.InitialMmapSize,
	})
	if err != nil {
		return nil, err
	}
	err = guard(path, "data file", func() error { return db.Update(initDataFile) })
	if err != nil {
		db.Close()
		if errors.Is(err, ErrCorrupt) {
			return nil, err
		}
		return nil, fmt.Errorf("storage: init data file %s: %w", path, err)
	}
	// A file without a synced freelist (written with NoFreelistSync) made
	// bolt.Open read every page to rebuild it: drop them from resident
	// memory (nobody else uses db yet, so its mapping stays put).
	_ = releaseMapped(path, db.Info().Data)
	return db, nil
}

// initDataFile creates the buckets of a new data file and checks the format
// of an existing one.
func initDataFile(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		if tx.Bucket(bucketData) != nil {
			return fmt.Errorf("%w: data bucket without meta bucket", ErrCorruptData)
		}
		var err error
		if meta, err = tx.CreateBucket(bucketMeta); err != nil {
			return err
		}
		if _, err := tx.CreateBucket(bucketData); err != nil {
			return err
		}
		return meta.Put(keyFormat, []byte{boltFormat})
	}
	if tx.Bucket(bucketData) == nil {
		return fmt.Errorf("%w: meta bucket without data bucket", ErrCorruptData)
	}
	switch f := meta.Get(keyFormat); {
	case len(f) != 1:
		return fmt.Errorf("%w: format marker of %d bytes", ErrCorruptData, len(f))
	case f[0] != boltFormat:
		return fmt.Errorf("storage: data file format %d, this version reads format %d", f[0], boltFormat)
	}
	return nil
}

// loadApplied sets the applied and durable indexes from what the file
// records.
func (e *Bolt) loadApplied() error {
	idx, err := e.readApplied(e.db)
	if err == nil {
		e.applied.Store(idx)
		e.durable.Store(idx)
	}
	return err
}

// readApplied returns the applied index db records.
func (e *Bolt) readApplied(db *bolt.DB) (idx uint64, err error) {
	err = e.guard(func() error {
		return db.View(func(tx *bolt.Tx) error {
			v := tx.Bucket(bucketMeta).Get(keyApplied)
			switch len(v) {
			case 0:
			case 8:
				idx = binary.BigEndian.Uint64(v)
			default:
				return fmt.Errorf("%w %s: applied index of %d bytes", ErrCorruptData, e.path, len(v))
			}
			return nil
		})
	})
	return idx, err
}

// Path returns the data file's path.
func (e *Bolt) Path() string { return e.path }

// AppliedIndex implements Engine.
func (e *Bolt) AppliedIndex() uint64 { return e.applied.Load() }

// Update implements Engine. The writes are visible to every reader when it
// returns, and reach the file with a later commit (BoltOptions.CommitInterval).
func (e *Bolt) Update(index uint64, fn func(WriteTx) error) error {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	if e.pendingBytes() >= maxPendingBytes && e.copying.Load() == 0 {
		// The committer cannot keep up, or the file cannot be written:
		// commit here, and fail while that fails. Not while a snapshot
		// copies the file: the commit would wait for the copy, and the
		// layer may grow for that long instead.
		if err := e.flushAll(); err != nil {
			return err
		}
	}
	// The writes collect in buf and join the pending layer only if fn
	// succeeds. Only Update changes the pending layer, and no layer is
	// swapped while we hold wmu; the layer being committed may go, but
	// then the file holds the same writes. A file transaction is begun
	// only if fn reads a key that neither the layers nor the cache know.
	e.mu.RLock()
	if err := e.usable(); err != nil {
		e.mu.RUnlock()
		return err
	}
	p, f, db, gen := e.pending, e.flushing, e.db, e.gen.Load()
	e.mu.RUnlock()
	buf := &writeBuf{m: map[string]layerItem{}}
	file := e.lazyTx(db)
	defer file.lazy.rollback()
	err := e.guard(func() error {
		tx := writeLayerTx{layeredTx: layeredTx{top: p, mid: f, file: file, cache: e.cache, gen: gen, cur: &e.gen}, buf: buf}
		err := fn(tx)
		if *file.err != nil {
			return *file.err // a damaged record, or the file could not be read: keep nothing
		}
		return err
	})
	if err != nil {
		return err
	}
	e.mu.Lock()
	if err := e.usable(); err != nil {
		e.mu.Unlock()
		return err
	}
	for k, it := range buf.m {
		p.put(k, it)
	}
	p.bytes += buf.bytes
	p.index = index
	if p.since.IsZero() {
		p.since = time.Now()
	}
	big := p.bytes >= flushBytes
	e.mu.Unlock()
	e.applied.Store(index)
	if big {
		select {
		case e.kick <- struct{}{}:
		default:
		}
	}
	return nil
}

// pendingDirty says whether the pending layer holds anything the file does
// not: writes, or only a newer applied index (entries without writes, such
// as Raft's configuration changes, advance it too; a file left behind them
// would look behind the next snapshot at restart). The caller holds mu.
func (e *Bolt) pendingDirty() bool {
	return !e.pending.empty() || e.pending.index > e.durable.Load()
}

func (e *Bolt) pendingBytes() int {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.pending.bytes
}

// View implements Engine.
func (e *Bolt) View(fn func(ReadTx) error) error {
	return e.view(func(p, f *layer, file boltTx, _ uint64) error {
		err := fn(layeredTx{top: p, mid: f, file: file})
		if *file.err != nil {
			return *file.err
		}
		return err
	})
}

// ViewApplied implements Engine. The index is the newest layer's, or else
// the one the file records, read in the view's own transaction.
func (e *Bolt) ViewApplied(fn func(ReadTx, uint64) error) error {
	return e.viewApplied(func(p, f *layer, file boltTx, index uint64) error {
		err := fn(layeredTx{top: p, mid: f, file: file}, index)
		if *file.err != nil {
			return *file.err
		}
		return err
	})
}

// view begins a read transaction of the file, then captures the layers,
// and runs fn on them: one point in time. No lock is held across Begin
// (which waits while bbolt remaps the file). The file the transaction
// reads must be the one the layers sit on: if a commit dropped a layer,
// or Restore replaced the file, between the two (the generation tells),
// it starts over. A commit that lands without dropping its layer yet is
// harmless: the layer holds the same writes as the file.
//
// gen is the cache generation the file transaction belongs to.
//
// The pending layer changes in place with every Update: a view gets a
// clone of it (O(1); the next Update copies the nodes it changes), so that
// it reads one point in time.
func (e *Bolt) view(fn func(p, f *layer, file boltTx, gen uint64) error) error {
	return e.viewAt(false, func(p, f *layer, file boltTx, gen, _ uint64) error { return fn(p, f, file, gen) })
}

// viewApplied is view with the applied index the view reflects instead of
// the cache generation.
func (e *Bolt) viewApplied(fn func(p, f *layer, file boltTx, index uint64) error) error {
	return e.viewAt(true, func(p, f *layer, file boltTx, _, index uint64) error { return fn(p, f, file, index) })
}

// viewAt is view; with index set it also finds the applied index of the
// view: the pending layer's (set by every Update since the last swap, with
// writes or without), else the flushing layer's, else the file's.
func (e *Bolt) viewAt(index bool, fn func(p, f *layer, file boltTx, gen, index uint64) error) error {
	for {
		e.mu.RLock()
		uerr, db := e.usable(), e.db
		e.mu.RUnlock()
		if uerr != nil {
			return uerr
		}
		gen := e.gen.Load() // before Begin: see readCache.put
		tx, err := db.Begin(false)
		e.mu.Lock() // Clone writes to the tree's header
		if uerr := e.usable(); uerr != nil {
			e.mu.Unlock()
			if err == nil {
				tx.Rollback()
			}
			return uerr
		}
		if e.db != db || e.gen.Load() != gen {
			e.mu.Unlock()
			if err == nil {
				tx.Rollback()
			}
			continue
		}
		if err != nil {
			e.mu.Unlock()
			return fmt.Errorf("storage: read %s: %w", e.path, err)
		}
		p, f := e.pending, e.flushing
		var idx uint64
		if index {
			if idx = p.index; idx == 0 && f != nil {
				idx = f.index
			}
		}
		if p.empty() {
			p = nil // not the live layer: Update fills it in place
		} else {
			p = &layer{t: p.t.Clone(), index: p.index}
		}
		e.mu.Unlock()
		defer tx.Rollback()
		return e.guard(func() error {
			if index && idx == 0 {
				if v := tx.Bucket(bucketMeta).Get(keyApplied); len(v) == 8 {
					idx = binary.BigEndian.Uint64(v)
				}
			}
			return fn(p, f, e.tx(tx), gen, idx)
		})
	}
}

// Lookup implements PointReader. It looks in the layers, then in a cache of
// what the file holds, and only then reads the file (in a transaction,
// caching what it finds).
func (e *Bolt) Lookup(key string, dst []byte) ([]byte, bool, error) {
	kb := unsafe.Slice(unsafe.StringData(key), len(key)) // read only
	e.mu.RLock()
	if err := e.usable(); err != nil {
		e.mu.RUnlock()
		return dst, false, err
	}
	// Under the lock: Update changes the pending layer in place.
	if v, ok, found := e.pending.get(kb); found {
		out := append(dst, v...)
		e.mu.RUnlock()
		return out, ok, nil
	}
	if v, ok, found := e.flushing.get(kb); found {
		out := append(dst, v...)
		e.mu.RUnlock()
		return out, ok, nil
	}
	e.mu.RUnlock()
	if out, present, hit := e.cache.get(key, dst); hit {
		return out, present, nil
	}
	out, present := dst, false
	err := e.view(func(p, f *layer, file boltTx, gen uint64) error {
		if v, ok, found := p.get(kb); found {
			out, present = append(dst, v...), ok
			return nil
		}
		if v, ok, found := f.get(kb); found {
			out, present = append(dst, v...), ok
			return nil
		}
		v, ok := file.Get(kb)
		if *file.err != nil {
			return *file.err
		}
		out, present = append(dst, v...), ok
		e.cache.put(key, v, ok, gen, &e.gen)
		return nil
	})
	return out, present, err
}

// committer commits the pending layer every CommitInterval, or when Update
// asks, until Close. Owned by the Bolt.
func (e *Bolt) committer() {
	defer close(e.done)
	tick := time.NewTicker(e.opts.CommitInterval / 2)
	defer tick.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-tick.C:
		case <-e.kick:
		}
		e.wmu.Lock()
		e.mu.RLock()
		due := e.flushing == nil && e.pendingDirty() &&
			(e.pending.bytes >= flushBytes || time.Since(e.pending.since) >= e.opts.CommitInterval)
		e.mu.RUnlock()
		if due {
			e.swap()
		}
		e.wmu.Unlock()
		e.fmu.Lock()
		e.mu.RLock()
		committing := e.flushing != nil
		e.mu.RUnlock()
		err := e.commitFlushing() // on failure it stays, and is retried
		e.fmu.Unlock()
		if committing && err == nil {
			e.mu.RLock()
			db, closed := e.db, e.closed || e.broken != nil
			e.mu.RUnlock()
			if !closed {
				// A swap may retire db meanwhile: noteSize then
				// fails its read transaction and records nothing.
				e.noteSize(db)
			}
		}
	}
}

// noteSize records the size of db's file and the bytes of it in use. No
// lock of the engine may be held: it begins a read transaction.
//
// db may be closed at any moment (a swap retires it once its snapshots are
// released): everything that reads the mapping runs inside the read
// transaction, which holds it mapped, and a closed db fails the View.
func (e *Bolt) noteSize(db *bolt.DB) {
	var size, free int64
	if db.View(func(tx *bolt.Tx) error {
		size = tx.Size()
		free = int64(db.Stats().FreePageN) * int64(db.Info().PageSize)
		return nil
	}) != nil {
		return
	}
	e.size.Store(size)
	e.inUse.Store(max(size-free, 0))
}

// FileSize implements Engine: the file's size and the bytes of it in use
// (its size less its free pages), as of the last commit of the background
// committer. It never blocks.
func (e *Bolt) FileSize() (size, inUse int64) { return e.size.Load(), e.inUse.Load() }

// swap makes the pending layer the one to commit. The caller holds wmu, and
// no layer is being committed.
func (e *Bolt) swap() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.flushing == nil && e.pendingDirty() {
		e.flushing, e.pending = e.pending, newIndexedLayer()
	}
}

// commitFlushing writes the flushing layer into the file in one transaction
// that also records its index, then drops it. The caller holds fmu.
func (e *Bolt) commitFlushing() error { return e.commitLayer(true) }

// commitLayer is commitFlushing; with gate false the caller holds the gate
// exclusively already (a compaction's final step).
func (e *Bolt) commitLayer(gate bool) error {
	e.mu.RLock()
	f, db, closed := e.flushing, e.db, e.closed || e.broken != nil
	e.mu.RUnlock()
	if f == nil || closed {
		return nil
	}
	// Not while a snapshot reads the live file: a commit that grows the
	// file remaps it, and the remap, and every Begin after it, would wait
	// for the snapshot's transaction.
	if gate {
		e.gate.Lock()
	}
	start := time.Now()
	err := e.guard(func() error {
		return db.Update(func(tx *bolt.Tx) error {
			file := e.tx(tx)
			var err error
			f.t.Ascend(func(it layerItem) bool {
				if it.del {
					err = file.Delete(it.key)
				} else {
					err = file.Put(it.key, it.value)
				}
				return err == nil
			})
			if err != nil {
				return err
			}
			var buf [8]byte
			binary.BigEndian.PutUint64(buf[:], f.index)
			return tx.Bucket(bucketMeta).Put(keyApplied, buf[:])
		})
	})
	if gate {
		e.gate.Unlock()
	}
	if err == nil && e.opts.ObserveCommit != nil {
		e.opts.ObserveCommit(time.Since(start))
	}
	if err == nil {
		// Before the layer goes: until then readers take these keys from
		// it, and from then on the cache must answer for them with what
		// the file now holds. The new generation refuses what readers of
		// the file as it was would put back.
		e.gen.Add(1)
		f.t.Ascend(func(it layerItem) bool {
			e.cache.refresh(it.key, it.value, it.del)
			return true
		})
		// After the commit, never before: a compaction that takes its
		// set between the two copies these keys again in its next round.
		e.noteDirty(f)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err != nil {
		if !errors.Is(err, ErrCorrupt) {
			err = diskFull(fmt.Errorf("storage: write %s: %w", e.path, err))
		}
		e.flushErr = err
		return err
	}
	e.flushing, e.flushErr = nil, nil
	e.durable.Store(f.index)
	return nil
}

// flushAll commits every layer: the one being committed, then the pending
// one. The caller holds wmu.
func (e *Bolt) flushAll() error {
	e.fmu.Lock()
	defer e.fmu.Unlock()
	if err := e.commitFlushing(); err != nil {
		return err
	}
	e.swap()
	return e.commitFlushing()
}

// Flush commits every write made so far to the file. Snapshot and Close
// do it too; it is for callers that want the file current now.
func (e *Bolt) Flush() error {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	return e.flushAll()
}

// DurableIndex returns the applied index the file itself records: what the
// engine reopens at after a crash. It trails AppliedIndex by the writes not
// yet committed.
func (e *Bolt) DurableIndex() uint64 { return e.durable.Load() }

// tx wraps a bbolt transaction as a ReadTx/WriteTx of this file.
func (e *Bolt) tx(tx *bolt.Tx) boltTx {
	return boltTx{b: tx.Bucket(bucketData), path: e.path, err: new(error)}
}

// guard runs fn, turning a bbolt panic on a damaged page into an error.
func (e *Bolt) guard(fn func() error) error {
	return guard(e.path, "data file", fn)
}

// Snapshot implements Engine. It commits every layer first, then begins a
// read transaction of the file. That transaction is copied into a file of
// the snapshot's own (next to the data file, removed by Release) when the
// snapshot is first read, and then let go: reads of the snapshot use the
// copy. A consumer of the snapshot that stalls (a slow network, a Backup
// writer that never returns) thus holds only the copy. Without the copy its
// transaction would keep bbolt from remapping the growing file, and the
// commit waiting for the remap would make every Begin wait too.
//
// While the live file is being copied (at disk speed, starting at once) no
// commit starts, so that no remap waits for the copy; readers and Update go
// on.
func (e *Bolt) Snapshot() (Snapshot, error) {
	if err := e.commitThrough(e.applied.Load()); err != nil {
		return nil, fmt.Errorf("storage: snapshot %s: %w", e.path, err)
	}
	e.gate.RLock()
	e.copying.Add(1)
	for {
		e.mu.RLock()
		uerr, db := e.usable(), e.db
		e.mu.RUnlock()
		if uerr != nil {
			e.copying.Add(-1)
			e.gate.RUnlock()
			return nil, uerr
		}
		tx, err := db.Begin(false)
		e.mu.RLock()
		same := e.db == db
		e.mu.RUnlock()
		if !same { // Restore replaced the file
			if err == nil {
				tx.Rollback()
			}
			continue
		}
		if err != nil {
			e.copying.Add(-1)
			e.gate.RUnlock()
			return nil, fmt.Errorf("storage: snapshot %s: %w", e.path, err)
		}
		var idx uint64
		err = e.guard(func() error {
			if v := tx.Bucket(bucketMeta).Get(keyApplied); len(v) == 8 {
				idx = binary.BigEndian.Uint64(v)
			}
			return nil
		})
		if err != nil {
			tx.Rollback()
			e.copying.Add(-1)
			e.gate.RUnlock()
			return nil, err
		}
		e.smu.Lock()
		e.snaps[db]++
		e.smu.Unlock()
		// The copy starts now, not at the first read: the live
		// transaction holds the gate that commits wait for, and a caller
		// may hold the snapshot a long time before it reads (raft holds
		// it while it waits for its main loop, which may be waiting for
		// the state machine, which may need a commit to finish). The
		// copy ends at disk speed; Release waits for it.
		s := &boltSnap{e: e, live: tx, index: idx}
		go s.load()
		return s, nil
	}
}

// commitThrough commits layers until the file records index idx (or the
// applied index, if a Restore set it lower). It holds wmu only to swap
// layers, so that Update goes on while the commits are written.
func (e *Bolt) commitThrough(idx uint64) error {
	for e.durable.Load() < min(idx, e.applied.Load()) {
		e.wmu.Lock()
		e.swap()
		e.wmu.Unlock()
		e.fmu.Lock()
		e.mu.RLock()
		uerr := e.usable()
		e.mu.RUnlock()
		err := e.commitFlushing()
		e.fmu.Unlock()
		if uerr != nil {
			return uerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// release ends a snapshot's transaction on db and, when it was the last
// one on a handle a Restore replaced, closes that handle.
func (e *Bolt) release(db *bolt.DB, tx *bolt.Tx) {
	tx.Rollback()
	e.smu.Lock()
	e.snaps[db]--
	last := e.snaps[db] == 0
	if last {
		delete(e.snaps, db)
	}
	retired := last && e.retired[db]
	if retired {
		delete(e.retired, db)
	}
	e.smu.Unlock()
	if retired {
		_ = db.Close()
	}
}

// retire closes a handle that a Restore replaced, at once if no snapshot
// reads it, or else at the last snapshot's Release.
func (e *Bolt) retire(db *bolt.DB) error {
	e.smu.Lock()
	if e.snaps[db] > 0 {
		e.retired[db] = true
		e.smu.Unlock()
		return nil
	}
	e.smu.Unlock()
	return db.Close()
}

// Restore writes restoreBatch bytes of pairs per transaction: copies of the
// pairs, bbolt's nodes and the pages it writes come to about ten times that
// on the heap before the GC runs (the 1 GiB benchmark peaked at 79 MB; with
// 32 MiB, at 323 MB).
const (
	restoreBatch       = 8 << 20
	restoreFillPercent = 0.9
)

// Restore implements Engine: Stage, then Install at the stream's index.
func (e *Bolt) Restore(r io.Reader) error {
	st, err := e.stage(r)
	if err != nil {
		return err
	}
	return st.Install(st.index)
}

// Stage implements Engine. The stream is written into a new bbolt file next
// to the data file (path + ".restore"), checked and synced; Install stamps
// its applied index and renames it over the data file.
func (e *Bolt) Stage(r io.Reader) (Staged, error) {
	st, err := e.stage(r)
	if err != nil {
		return nil, err
	}
	return st, nil
}

func (e *Bolt) stage(r io.Reader) (*boltStaged, error) {
	e.mu.RLock()
	err := e.usable()
	e.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	tmp := e.path + ".restore"
	// The file has one name: an earlier staged restore is gone with it.
	if old := e.staged.Swap(nil); old != nil {
		old.done = true
	}
	_ = fsRemove(tmp)
	ndb, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: time.Second, NoSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return nil, diskFull(fmt.Errorf("storage: restore %s: %w", tmp, err))
	}
	fail := func(err error) (*boltStaged, error) {
		ndb.Close()
		fsRemove(tmp)
		return nil, diskFull(err)
	}
	var (
		index   uint64
		tx      *bolt.Tx
		pending int
		putErr  error // the first write error; the stream is still read to the end
	)
	commit := func() error {
		if tx == nil {
			return nil
		}
		err := tx.Commit()
		tx = nil
		pending = 0
		return err
	}
	begin := func() (err error) {
		tx, err = ndb.Begin(true)
		if err != nil {
			return err
		}
		if tx.Bucket(bucketMeta) == nil {
			if err := initDataFile(tx); err != nil {
				return err
			}
		}
		// Keys arrive in ascending order: fill pages up when they split
		// instead of leaving them half empty (bbolt's default of 0.5 makes
		// the file twice as large, and twice as long to write).
		tx.Bucket(bucketData).FillPercent = restoreFillPercent
		return nil
	}
	err = ReadSnapshot(r, func(i uint64) error {
		index = i
		return begin()
	}, func(k, v []byte) error {
		if putErr != nil {
			return nil
		}
		// bbolt keeps the slices until commit; ReadSnapshot reuses them.
		k = append([]byte(nil), k...)
		v = binary.BigEndian.AppendUint32(append(make([]byte, 0, len(v)+recordCRCSize), v...), recordCRC(k, v))
		if putErr = tx.Bucket(bucketData).Put(k, v); putErr != nil {
			return nil
		}
		pending += len(k) + len(v)
		if pending >= restoreBatch {
			if putErr = commit(); putErr == nil {
				putErr = begin()
			}
		}
		return nil
	})
	if err == nil {
		err = putErr
	}
	if err == nil && tx == nil {
		err = begin()
	}
	if err == nil {
		err = commit()
	}
	if err != nil {
		if tx != nil {
			tx.Rollback()
		}
		return fail(fmt.Errorf("storage: restore %s: %w", e.path, err))
	}
	if !e.opts.NoSync {
		if err := ndb.Sync(); err != nil {
			return fail(fmt.Errorf("storage: restore %s: sync: %w", tmp, err))
		}
	}
	if err := ndb.Close(); err != nil {
		fsRemove(tmp)
		return nil, diskFull(fmt.Errorf("storage: restore %s: %w", tmp, err))
	}
	st := &boltStaged{e: e, path: tmp, index: index}
	e.staged.Store(st)
	return st, nil
}

// boltStaged is a Bolt engine's staged restore: a complete, synced bbolt
// file beside the data file.
type boltStaged struct {
	e     *Bolt
	path  string
	index uint64 // the stream's
	done  bool
}

// Discard implements Staged.
func (s *boltStaged) Discard() {
	if s.done {
		return
	}
	s.done = true
	if s.e.staged.CompareAndSwap(s, nil) {
		fsRemove(s.path)
	}
}

// Install implements Staged: it records index in the staged file (one
// synced transaction), then renames the file over the data file and
// switches readers and writers to it. A failure before the rename keeps
// the old data; one after it (syncing the directory, opening the new file)
// breaks the engine: every later call returns the error, and the member
// must be reopened (which finds the new file in place, or the old one if
// the rename did not reach the disk).
func (s *boltStaged) Install(index uint64) error {
	e := s.e
	if s.done || !e.staged.CompareAndSwap(s, nil) {
		s.done = true
		return errStagedGone
	}
	s.done = true
	ndb, err := bolt.Open(s.path, 0o600, &bolt.Options{Timeout: time.Second, NoSync: e.opts.NoSync, FreelistType: bolt.FreelistMapType})
	if err == nil {
		err = ndb.Update(func(tx *bolt.Tx) error {
			var buf [8]byte
			binary.BigEndian.PutUint64(buf[:], index)
			return tx.Bucket(bucketMeta).Put(keyApplied, buf[:])
		})
		if cerr := ndb.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fsRemove(s.path)
		return diskFull(fmt.Errorf("storage: restore %s: stamp index %d: %w", s.path, index, err))
	}
	return e.swapIn(s.path)
}

// swapIn renames the complete file tmp over the data file (the open handle
// keeps the old inode), opens it, switches readers and writers to it, then
// closes the old handle. The layers are dropped: the new file supersedes
// them.
//
// A Snapshot still open on the old handle keeps it open until its Release,
// and swapIn does not wait for that: bbolt's Close waits for every read
// transaction, and raft holds a snapshot (between the state machine's
// Snapshot and Persist) while it waits for its main loop, which is itself
// waiting for this install to end a snapshot install. Waiting here would
// deadlock the member.
func (e *Bolt) swapIn(tmp string) error {
	e.wmu.Lock()
	e.fmu.Lock()
	old, err := e.swapInLocked(tmp, "restore")
	e.fmu.Unlock()
	e.wmu.Unlock()
	if err != nil {
		return err
	}
	return e.retireReplaced(old)
}

// retireReplaced retires the handle of a file swapIn replaced. Not under
// wmu: closing the last handle of a large unlinked file frees its blocks,
// which can take long, and Update need not wait for it.
func (e *Bolt) retireReplaced(old *bolt.DB) error {
	if cerr := e.retire(old); cerr != nil {
		return fmt.Errorf("storage: close replaced %s: %w", e.path, cerr)
	}
	return nil
}

// swapInLocked is swapIn for a caller that holds wmu and fmu; it returns
// the replaced handle, for retireReplaced once the locks are released. op
// names what swaps the file in its errors: "restore" or "compact".
func (e *Bolt) swapInLocked(tmp, op string) (*bolt.DB, error) {
	e.mu.RLock()
	err := e.usable() // Close takes wmu first: it cannot change now
	e.mu.RUnlock()
	if err != nil {
		fsRemove(tmp)
		return nil, err
	}
	if err := fsRename(tmp, e.path); err != nil {
		fsRemove(tmp)
		return nil, fmt.Errorf("storage: %s %s: %w", op, e.path, err)
	}
	// From here the old file is unlinked: the engine is on the new file or
	// refuses to go on. Readers go on with the old file until the switch:
	// mu is held only for it.
	if afterRename != nil {
		afterRename(e.path)
	}
	if !e.opts.NoSync {
		if err = fsSyncDir(filepath.Dir(e.path)); err != nil {
			err = fmt.Errorf("sync dir: %w", err)
		}
	}
	var db *bolt.DB
	if err == nil {
		db, err = e.open(e.path)
	}
	var applied uint64
	if err == nil {
		if applied, err = e.readApplied(db); err != nil {
			db.Close()
		}
	}
	if err == nil {
		e.noteSize(db) // no one else has db yet: nothing to wait for
	}
	e.mu.Lock()
	if err != nil {
		e.broken = diskFull(fmt.Errorf("storage: %s %s: the data file was replaced and the engine cannot go on with it (reopen the member): %w", op, e.path, err))
		e.pending, e.flushing, e.flushErr = newIndexedLayer(), nil, nil
		e.gen.Add(1)
		e.cache.clear()
		err = e.broken
		e.mu.Unlock()
		return nil, err
	}
	old := e.db
	e.db = db
	e.pending, e.flushing, e.flushErr = newIndexedLayer(), nil, nil
	e.gen.Add(1)
	e.cache.clear()
	e.applied.Store(applied)
	e.durable.Store(applied)
	e.mu.Unlock()
	return old, nil
}

// afterRename, when set (by tests), runs right after the rename of an
// Install or compaction, and of a compaction of raft.db at open.
var afterRename func(path string)

// usable returns ErrClosed after Close, the error that broke the engine
// after a failed Install, or nil. The caller holds mu.
func (e *Bolt) usable() error {
	if e.closed {
		return ErrClosed
	}
	return e.broken
}

// Close implements Engine: it commits what the layers hold, then closes
// the file. It is idempotent.
func (e *Bolt) Close() error {
	e.stopOnce.Do(func() { close(e.stop) })
	<-e.done
	// A running compaction stops at its next step (compactCheck sees
	// stop) and removes its file: wait for it.
	e.cmu.Lock()
	e.cmu.Unlock()
	e.wmu.Lock()
	defer e.wmu.Unlock()
	e.mu.RLock()
	closed := e.closed
	e.mu.RUnlock()
	if closed {
		return nil
	}
	ferr := e.flushAll()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed = true
	e.pending, e.flushing = newIndexedLayer(), nil
	errs := []error{ferr, e.db.Close()}
	// Handles a Restore replaced whose snapshots are still open: their
	// Close waits for those snapshots' Release.
	e.smu.Lock()
	retired := e.retired
	e.retired = map[*bolt.DB]bool{}
	e.smu.Unlock()
	for db := range retired {
		errs = append(errs, db.Close())
	}
	return errors.Join(errs...)
}

// syncDir fsyncs the directory dir (callers go through fsSyncDir).
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// boltTx is a transaction on the data bucket. err records the first damaged
// record read through it; View and Update return it, whatever fn returned.
type boltTx struct {
	b    *bolt.Bucket
	lazy *lazyTx // when b is nil: the transaction reads begin on demand
	path string
	err  *error
}

// lazyTx is a read transaction begun at the first read that needs it (an
// Update whose reads the layers and the cache answer never begins one).
type lazyTx struct {
	db *bolt.DB
	tx *bolt.Tx
	b  *bolt.Bucket
}

// lazyTx returns a boltTx of db that begins its transaction on demand;
// the caller ends it with lazy.rollback.
func (e *Bolt) lazyTx(db *bolt.DB) boltTx {
	return boltTx{lazy: &lazyTx{db: db}, path: e.path, err: new(error)}
}

func (l *lazyTx) rollback() {
	if l != nil && l.tx != nil {
		l.tx.Rollback()
		l.tx, l.b = nil, nil
	}
}

// bucket returns the data bucket, beginning the transaction if it is
// lazy and not begun yet; nil (with the error recorded) if that fails.
func (t boltTx) bucket() *bolt.Bucket {
	if t.b != nil || t.lazy == nil {
		return t.b
	}
	if t.lazy.b == nil && *t.err == nil {
		tx, err := t.lazy.db.Begin(false)
		if err != nil {
			t.fail(fmt.Errorf("storage: read %s: %w", t.path, err))
			return nil
		}
		t.lazy.tx, t.lazy.b = tx, tx.Bucket(bucketData)
	}
	return t.lazy.b
}

// check strips and verifies the checksum of a stored value.
func (t boltTx) check(key, stored []byte) ([]byte, error) {
	n := len(stored) - recordCRCSize
	if n < 0 {
		return nil, fmt.Errorf("%w %s: key %q: record of %d bytes", ErrCorruptData, t.path, clip(key), len(stored))
	}
	v := stored[:n:n]
	if got, want := binary.BigEndian.Uint32(stored[n:]), recordCRC(key, v); got != want {
		return nil, fmt.Errorf("%w %s: key %q: checksum %08x, want %08x", ErrCorruptData, t.path, clip(key), got, want)
	}
	return v, nil
}

func (t boltTx) fail(err error) {
	if *t.err == nil {
		*t.err = err
	}
}

func (t boltTx) Get(key []byte) ([]byte, bool) {
	b := t.bucket()
	if b == nil {
		return nil, false
	}
	stored := b.Get(key)
	if stored == nil {
		return nil, false
	}
	v, err := t.check(key, stored)
	if err != nil {
		t.fail(err)
		return nil, false
	}
	return v, true
}

func (t boltTx) Scan(from []byte, fn func(k, v []byte) bool) error {
	b := t.bucket()
	if b == nil {
		return *t.err
	}
	return guard(t.path, "data file", func() error {
		c := b.Cursor()
		var k, stored []byte
		if from == nil {
			k, stored = c.First()
		} else {
			k, stored = c.Seek(from)
		}
		for ; k != nil; k, stored = c.Next() {
			v, err := t.check(k, stored)
			if err != nil {
				t.fail(err)
				return err
			}
			if !fn(k, v) {
				break
			}
		}
		return nil
	})
}

// Put stores value followed by its checksum. The stored slice is a copy, so
// the caller's value is not kept.
func (t boltTx) Put(key, value []byte) error {
	stored := make([]byte, len(value)+recordCRCSize)
	copy(stored, value)
	binary.BigEndian.PutUint32(stored[len(value):], recordCRC(key, value))
	return t.b.Put(key, stored)
}

// clip shortens a key for an error message.
func clip(key []byte) []byte {
	if len(key) > 64 {
		return key[:64]
	}
	return key
}

func (t boltTx) Delete(key []byte) error { return t.b.Delete(key) }

// snapCopyInfix names the copies snapshots read: the data file's name,
// this, and a random suffix. OpenBolt removes the ones a crash left.
const snapCopyInfix = ".snap-"

// removeSnapCopies removes the snapshot copies of the data file at path.
func removeSnapCopies(path string) {
	names, _ := filepath.Glob(path + snapCopyInfix + "*")
	for _, n := range names {
		_ = os.Remove(n)
	}
}

// boltSnap is a snapshot of a Bolt: a read transaction of the live file
// until the first read, then a read-only copy of the file as that
// transaction saw it. Safe for concurrent use; Release must not be called
// while a read is in progress.
type boltSnap struct {
	e     *Bolt
	index uint64

	mu       sync.Mutex
	live     *bolt.Tx // of the live file, until copied; holds e.gate shared
	tmp      string   // the copy's path
	db       *bolt.DB // the copy
	tx       *bolt.Tx // of the copy
	file     boltTx
	err      error // the copy failed
	released bool
}

func (s *boltSnap) AppliedIndex() uint64 { return s.index }

// load returns the transaction of the copy, copying the live transaction
// on the first call.
func (s *boltSnap) load() (boltTx, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.released {
		return boltTx{}, ErrClosed
	}
	if s.live != nil {
		s.err = s.copyLive()
		s.dropLive()
	}
	return s.file, s.err
}

// copyLive writes the live transaction into a new file and opens it
// read-only. The caller holds s.mu.
func (s *boltSnap) copyLive() error {
	path := s.e.path
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+snapCopyInfix+"*")
	if err != nil {
		return fmt.Errorf("storage: snapshot %s: %w", path, diskFull(err))
	}
	s.tmp = f.Name()
	if snapCopyHook != nil {
		snapCopyHook()
	}
	err = guard(path, "data file", func() error {
		_, err := s.live.WriteTo(f)
		return err
	})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if errors.Is(err, ErrCorrupt) {
			return err
		}
		return fmt.Errorf("storage: snapshot %s: copy to %s: %w", path, s.tmp, diskFull(err))
	}
	db, err := bolt.Open(s.tmp, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return fmt.Errorf("storage: snapshot %s: open copy %s: %w", path, s.tmp, err)
	}
	tx, err := db.Begin(false)
	if err != nil {
		db.Close()
		return fmt.Errorf("storage: snapshot %s: read copy %s: %w", path, s.tmp, err)
	}
	b := tx.Bucket(bucketData)
	if b == nil {
		tx.Rollback()
		db.Close()
		return fmt.Errorf("%w %s: snapshot copy without data bucket", ErrCorruptData, path)
	}
	s.db, s.tx, s.file = db, tx, boltTx{b: b, path: path, err: new(error)}
	return nil
}

// snapCopyHook, when set (by tests), runs in every snapshot's copy of the
// live file before it writes: a copy that takes that long.
var snapCopyHook func()

// dropLive ends the live transaction, and lets commits go on. The caller
// holds s.mu.
func (s *boltSnap) dropLive() {
	if s.live == nil {
		return
	}
	s.e.release(s.live.DB(), s.live)
	s.live = nil
	s.e.copying.Add(-1)
	s.e.gate.RUnlock()
}

func (s *boltSnap) Get(key []byte) ([]byte, bool) {
	f, err := s.load()
	if err != nil {
		return nil, false
	}
	return f.Get(key)
}

func (s *boltSnap) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.released {
		return
	}
	s.released = true
	s.dropLive()
	if s.tx != nil {
		s.tx.Rollback()
	}
	if s.db != nil {
		s.db.Close()
	}
	if s.tmp != "" {
		os.Remove(s.tmp)
	}
}

// releaseEvery is how many bytes a long read goes through a bbolt mapping
// between two calls of releaseMapped.
const releaseEvery = 16 << 20

// Scan is boltTx.Scan that drops the pages it has read from this process's
// resident memory every releaseEvery bytes and at the end (see
// releaseMapped): a snapshot reads the whole file, and every page it touched
// would otherwise stay counted in the process's RSS. The snapshot's open
// transaction keeps the mapping in place.
func (s *boltSnap) Scan(from []byte, fn func(k, v []byte) bool) error {
	f, err := s.load()
	if err != nil {
		return err
	}
	addr := s.db.Info().Data
	defer func() { _ = releaseMapped(s.tmp, addr) }()
	// The copy is in file order what the scan reads in key order, about
	// sequentially: if its pages left the page cache, read them ahead of
	// the scan rather than one per fault (see readAheadMapped).
	defer readAheadMapped(s.tmp, addr)()
	read := 0
	return f.Scan(from, func(k, v []byte) bool {
		more := fn(k, v)
		if read += len(k) + len(v); read >= releaseEvery {
			read = 0
			_ = releaseMapped(s.tmp, addr)
		}
		return more
	})
}
