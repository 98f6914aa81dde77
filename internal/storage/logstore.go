package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"maps"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// Bucket names inside the bbolt file.
var (
	logStoreBucketLogs = []byte("logs") // 8-byte big-endian index -> encoded raft.Log
	logStoreBucketConf = []byte("conf") // stable-store key -> value
)

const (
	// logRecordVersion is the first byte of every encoded log record.
	logRecordVersion byte = 1

	// logFlagAppendedAt marks a record that carries a non-zero AppendedAt.
	logFlagAppendedAt byte = 1 << 0

	// logKnownFlags is the set of flag bits this version understands.
	logKnownFlags = logFlagAppendedAt

	// logCRCSize is the size of the trailing CRC32-C checksum.
	logCRCSize = 4

	// minLogRecordSize is version + index + term + type + flags + two
	// zero lengths + CRC (all varints at their minimum of one byte).
	minLogRecordSize = 1 + 1 + 1 + 1 + 1 + 1 + 1 + logCRCSize

	// logStoreOpenTimeout bounds how long OpenLogStore waits for the file lock.
	logStoreOpenTimeout = time.Second

	// logStoreMmapSize is the initial mmap size; large enough that read
	// transactions rarely block a writer that needs to remap.
	logStoreMmapSize = 64 << 20

	// logStoreMaxWriteBuf is the largest write buffer kept between
	// StoreLogs calls; bigger buffers are released to the GC.
	logStoreMaxWriteBuf = 4 << 20
)

// logCRCTable is the CRC32-C table used for record checksums.
var logCRCTable = crc32.MakeTable(crc32.Castagnoli)

// ErrCorruptLog reports a log record that failed its checksum or could not
// be decoded. Errors returned by GetLog wrap it together with the index;
// test for it with errors.Is. It wraps ErrCorrupt.
var ErrCorruptLog = fmt.Errorf("%w log record", ErrCorrupt)

// ErrStableKeyNotFound is returned, unwrapped, by Get and GetUint64 for a
// key that was never set. Its text is exactly "not found" because hashicorp/raft
// recognises a missing stable key by comparing err.Error() with that string.
var ErrStableKeyNotFound = errors.New("not found")

// LogStore keeps hashicorp/raft's log and stable state: a bbolt file at
// path, the log tail beside it (path + ".tail", logtail.go) where new
// entries go first, and the state file (path + ".state", state.go) for
// raft's term and vote. It implements raft.LogStore and raft.StableStore
// and is safe for concurrent use.
//
// Errors of writes that failed for lack of space wrap ErrDiskFull; errors
// of damaged bytes wrap ErrCorrupt (ErrCorruptLog for log records).
type LogStore struct {
	path   string
	noSync bool

	// db is the bbolt file. Every transaction of it runs under swapMu held
	// shared (view, update); a compaction's final step holds it
	// exclusively while it replaces db (logcompact.go). broken, set when a
	// replacement failed after its rename, fails every transaction.
	swapMu sync.RWMutex
	db     *bolt.DB
	broken error

	// Online compaction (logcompact.go): one at a time (compacting); cmu
	// is held by a running one, and taken by Close after it set stopping,
	// to wait for it; dirty, guarded by dmu, is what commits changed since
	// it started.
	compacting atomic.Bool
	stopping   atomic.Bool
	cmu        sync.Mutex
	dmu        sync.Mutex
	dirty      *logDirty

	closeMu sync.Mutex
	closed  bool

	// writeMu guards wbuf and keyBuf. bbolt only copies keys on Put, so
	// values must stay untouched until the transaction ends; the buffer is
	// therefore reused only across, never within, transactions.
	writeMu sync.Mutex
	wbuf    []byte
	keyBuf  [8]byte

	// read counts the bytes read through the file's mapping since the last
	// releaseMapped (see readMapped).
	read atomic.Int64

	// The log tail (logtail.go), nil with NoSync. tail, tailPath, tailLen,
	// epoch, salt, tailOff and tailBad are guarded by writeMu; mem, the
	// records in the tail, by memMu.
	tail     *os.File
	tailPath string
	tailLen  int // the size of the tail file
	epoch    uint32
	salt     [tailSaltSize]byte
	tailOff  int
	tailBad  bool // no appends before a new epoch's header is durable
	memMu    sync.RWMutex
	mem      tailRun

	// full is set when a write failed for lack of space, and cleared by a
	// checkpoint that succeeds (see DiskFull).
	full atomic.Bool
	// shut is set by Close, under writeMu.
	shut bool

	// state holds raft's term and vote (state.go).
	state *stateFile

	observe func(time.Duration) // LogStoreOptions.ObserveAppend
}

// readMapped counts n bytes read through the mapping of tx and, every
// releaseEvery bytes, drops the pages read from this process's resident
// memory (see releaseMapped; the open tx keeps the mapping in place).
// Raft reads the whole log after the last snapshot as it starts, and every
// entry a follower needs; the pages would otherwise stay counted in RSS.
func (s *LogStore) readMapped(tx *bolt.Tx, n int) {
	if s.read.Add(int64(n)) >= releaseEvery {
		s.read.Store(0)
		_ = releaseMapped(s.path, tx.DB().Info().Data)
	}
}

// LogStoreOptions configures OpenLogStore.
type LogStoreOptions struct {
	// NoSync skips fsync after each commit, and the log tail: entries go
	// straight into the bbolt file. Only for tests or data that may be lost
	// on a crash. The default (false) makes every StoreLog, StoreLogs,
	// DeleteRange and Set durable before it returns.
	NoSync bool
	// AutoCompactMinSize is the smallest bbolt file OpenLogStore compacts
	// before use when more than AutoCompactFreeRatio of it is free pages
	// (Raft deletes old entries, and bbolt keeps the pages). 0 means
	// DefaultAutoCompactMinSize (64 MiB); negative never compacts.
	AutoCompactMinSize int64
	// Logger receives the store's own messages (a compaction at open).
	// nil discards them.
	Logger *slog.Logger
	// ObserveAppend, when set, is called with the duration of every
	// StoreLogs that succeeds: the append and its fdatasync, without the
	// wait for an earlier append. It must not block.
	ObserveAppend func(time.Duration)
}

var (
	_ raft.LogStore    = (*LogStore)(nil)
	_ raft.StableStore = (*LogStore)(nil)
)

// OpenLogStore opens (creating if needed) the bbolt file at path and ensures
// its buckets exist, opens the state file (creating it from the bbolt
// file's values of raft's keys if it does not exist) and replays the log
// tail into the bbolt file. If another LogStore holds the file, it fails
// after about one second instead of blocking.
func OpenLogStore(path string, opts LogStoreOptions) (*LogStore, error) {
	db, err := openDB(path, "raft log", logStoreBoltOptions(opts))
	if err != nil {
		return nil, err
	}
	err = guard(path, "raft log", func() error {
		return db.Update(func(tx *bolt.Tx) error {
			for _, name := range [][]byte{logStoreBucketLogs, logStoreBucketConf} {
				if _, err := tx.CreateBucketIfNotExists(name); err != nil {
					return fmt.Errorf("create bucket %q: %w", name, err)
				}
			}
			return nil
		})
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("storage: init log store %s: %w", path, err)
	}
	// Only once the file's lock is ours.
	_ = fsRemove(path + compactSuffix)
	if db, err = compactLogAtOpen(path, db, opts); err != nil {
		return nil, err
	}
	// A file without a synced freelist made bolt.Open read every page: drop
	// them from resident memory (see releaseMapped).
	_ = releaseMapped(path, db.Info().Data)
	s := &LogStore{db: db, path: path, noSync: opts.NoSync, observe: opts.ObserveAppend}
	s.state, err = openStateFile(path+".state", db, opts.NoSync)
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	if !opts.NoSync {
		if err := s.openTail(); err != nil {
			if s.tail != nil {
				s.tail.Close()
			}
			_ = s.state.close()
			_ = db.Close()
			return nil, err
		}
		// The files created above (bbolt's, the state file, the tail)
		// durable in the directory; at every Open, in case an earlier one
		// failed before it got here.
		if err := fsSyncDir(dirOf(path)); err != nil {
			s.tail.Close()
			_ = s.state.close()
			_ = db.Close()
			return nil, fmt.Errorf("storage: sync dir of %s: %w", path, diskFull(err))
		}
	}
	return s, nil
}

func logStoreBoltOptions(opts LogStoreOptions) *bolt.Options {
	return &bolt.Options{
		Timeout:         logStoreOpenTimeout,
		NoFreelistSync:  false,
		FreelistType:    bolt.FreelistMapType,
		InitialMmapSize: logStoreMmapSize,
		NoSync:          opts.NoSync,
	}
}

// compactLogAtOpen rewrites the bbolt file of a log store that is being
// opened (db, holding its lock) without its free pages, when
// shouldCompactAtOpen says so, and returns the handle to use: the new file,
// or db as it was if the compaction failed before its rename (logged). The
// new file is renamed in only if it holds what db holds (sameLogContent).
// The log tail and the state file are separate files, untouched. A failure
// after the rename is returned: the store cannot be opened.
//
// The file at path stays locked throughout: the new file is opened, and
// locked, with the store's own options before the copy, renamed over path
// while both handles are open, and becomes the store's handle; only then
// is db, the replaced file's, closed. Another process opening path finds
// either file locked.
//
// A store in use is compacted by LogStore.Compact (logcompact.go).
func compactLogAtOpen(path string, db *bolt.DB, opts LogStoreOptions) (*bolt.DB, error) {
	min := opts.AutoCompactMinSize
	if min == 0 {
		min = DefaultAutoCompactMinSize
	}
	fi, err := os.Stat(path)
	if err != nil || !shouldCompactAtOpen(db, fi.Size(), min) {
		return db, nil
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	tmp := path + compactSuffix
	ndb, err := openDB(tmp, "raft log", logStoreBoltOptions(opts))
	if err == nil {
		ndb.NoSync = true // while it is written: one Sync at the end
		// Compact reads all of db, nobody else uses it yet, and its
		// mapping stays put (db is only read): read it ahead of the walk,
		// not one page per fault, when the page cache is cold (see
		// readAheadMapped).
		restore := readAheadMapped(path, db.Info().Data)
		err = guard(path, "raft log", func() error { return bolt.Compact(ndb, db, compactChunk) })
		restore()
		if err == nil && logCompactHook != nil {
			logCompactHook(ndb)
		}
		if err == nil {
			err = sameLogContent(db, ndb)
		}
		if err == nil && !opts.NoSync {
			err = ndb.Sync()
		}
		ndb.NoSync = opts.NoSync
		if err == nil {
			err = fsRename(tmp, path)
		}
		if err != nil {
			_ = ndb.Close()
		}
	}
	if err != nil {
		_ = fsRemove(tmp)
		log.Warn("raft log compaction at open failed; going on with the file as it is", "path", path, "error", diskFull(err))
		return db, nil
	}
	// From here path is the new file; db's is unlinked, its handle no
	// longer needed.
	if afterRename != nil {
		afterRename(path)
	}
	if err := db.Close(); err != nil {
		log.Warn("raft log compaction at open: closing the replaced file failed", "path", path, "error", err)
	}
	if !opts.NoSync {
		if err := fsSyncDir(dirOf(path)); err != nil {
			_ = ndb.Close()
			return nil, fmt.Errorf("storage: compact %s: sync dir: %w", path, diskFull(err))
		}
	}
	after := int64(0)
	if fi, err := os.Stat(path); err == nil {
		after = fi.Size()
	}
	log.Info("raft log compacted at open", "path", path, "before", fi.Size(), "after", after, "took", time.Since(start))
	return ndb, nil
}

// logCompactHook, when set (by tests), runs in compactLogAtOpen with the
// new file once it is written, before it is compared with the original.
var logCompactHook func(ndb *bolt.DB)

// sameLogContent returns an error when the compacted raft.db ndb does not
// hold what db holds: the same first and last index and number of entries
// in the log bucket, and the same pairs in the stable bucket.
func sameLogContent(db, ndb *bolt.DB) error {
	type summary struct {
		first, last []byte
		n           int
		conf        map[string]string
	}
	sum := func(d *bolt.DB) (summary, error) {
		var s summary
		err := guard(d.Path(), "raft log", func() error {
			return d.View(func(tx *bolt.Tx) error {
				logs, conf := tx.Bucket(logStoreBucketLogs), tx.Bucket(logStoreBucketConf)
				if logs == nil || conf == nil {
					return errors.New("a bucket is missing")
				}
				c := logs.Cursor()
				k, _ := c.First()
				s.first = bytes.Clone(k)
				k, _ = c.Last()
				s.last = bytes.Clone(k)
				s.n = logs.Stats().KeyN
				s.conf = map[string]string{}
				return conf.ForEach(func(k, v []byte) error {
					s.conf[string(k)] = string(v)
					return nil
				})
			})
		})
		return s, err
	}
	a, err := sum(db)
	if err != nil {
		return err
	}
	b, err := sum(ndb)
	if err != nil {
		return err
	}
	switch {
	case !bytes.Equal(a.first, b.first) || !bytes.Equal(a.last, b.last) || a.n != b.n:
		return fmt.Errorf("the compacted file differs from the original: entries %x..%x (%d) in it, %x..%x (%d) in the original", b.first, b.last, b.n, a.first, a.last, a.n)
	case !maps.Equal(a.conf, b.conf):
		return fmt.Errorf("the compacted file differs from the original: %d stable keys in it, %d in the original, or other values", len(b.conf), len(a.conf))
	}
	return nil
}

// Close closes the underlying bbolt file. It waits for running transactions
// and is safe to call more than once; later calls return nil.
func (s *LogStore) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	// A running compaction stops at its next step and removes its file.
	s.stopping.Store(true)
	s.cmu.Lock()
	s.cmu.Unlock()
	var errs []error
	s.writeMu.Lock()
	if s.tail != nil {
		// Into the bbolt file, so that the next Open has nothing to replay;
		// if it fails the tail keeps the records.
		errs = append(errs, s.checkpoint(), s.tail.Close())
	}
	s.shut = true
	s.writeMu.Unlock()
	errs = append(errs, s.state.close())
	s.swapMu.Lock()
	defer s.swapMu.Unlock()
	if err := s.db.Close(); err != nil {
		errs = append(errs, fmt.Errorf("storage: close log store %s: %w", s.path, err))
	}
	return errors.Join(errs...)
}

// view and update run bbolt transactions, turning a panic on a damaged
// page into an error that wraps ErrCorrupt and names the file.
func (s *LogStore) view(fn func(*bolt.Tx) error) error {
	s.swapMu.RLock()
	defer s.swapMu.RUnlock()
	if s.broken != nil {
		return s.broken
	}
	return guard(s.path, "raft log", func() error { return s.db.View(fn) })
}

// update wraps an error for lack of space with ErrDiskFull; the fault
// seam can fail it before it starts.
func (s *LogStore) update(fn func(*bolt.Tx) error) error {
	if err := fsCommit(s.path); err != nil {
		return diskFull(err)
	}
	s.swapMu.RLock()
	defer s.swapMu.RUnlock()
	if s.broken != nil {
		return s.broken
	}
	return diskFull(guard(s.path, "raft log", func() error { return s.db.Update(fn) }))
}

// noteFull records a write that failed for lack of space (see DiskFull).
func (s *LogStore) noteFull(err error) error {
	if errors.Is(err, ErrDiskFull) {
		s.full.Store(true)
	}
	return err
}

// DiskFull reports whether a write of the store failed for lack of space
// and no checkpoint has succeeded since. While it is true, StoreLogs still
// takes batches as long as the log tail has room, and batches without
// raft.LogCommand entries into the tail's reserve; a batch with commands
// that needs a checkpoint fails with an error wrapping ErrDiskFull. Safe for
// concurrent use.
func (s *LogStore) DiskFull() bool { return s.full.Load() }

// Checkpoint moves the entries held in the log tail into the bbolt file
// now and starts the tail over. It returns nil, and clears DiskFull, when
// that succeeds (with nothing in the tail, it needs no space); an error
// wrapping ErrDiskFull while there is still no room. After Close it returns
// ErrClosed.
func (s *LogStore) Checkpoint() error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.shut {
		return ErrClosed
	}
	if err := s.checkpoint(); err != nil {
		return fmt.Errorf("storage: checkpoint: %w", err)
	}
	return nil
}

// Path returns the path of the bbolt file.
func (s *LogStore) Path() string { return s.path }

// FirstIndex returns the lowest stored log index, or 0 if the log is empty.
func (s *LogStore) FirstIndex() (uint64, error) {
	s.memMu.RLock()
	run := s.mem
	s.memMu.RUnlock()
	idx, err := s.edgeIndex(true)
	if err == nil && idx == 0 && len(run.recs) > 0 {
		idx = run.first
	}
	return idx, err
}

// LastIndex returns the highest stored log index, or 0 if the log is empty.
func (s *LogStore) LastIndex() (uint64, error) {
	s.memMu.RLock()
	run := s.mem
	s.memMu.RUnlock()
	idx, err := s.edgeIndex(false)
	if err == nil && len(run.recs) > 0 {
		idx = max(idx, run.last())
	}
	return idx, err
}

func (s *LogStore) edgeIndex(first bool) (uint64, error) {
	var idx uint64
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(logStoreBucketLogs).Cursor()
		var k []byte
		if first {
			k, _ = c.First()
		} else {
			k, _ = c.Last()
		}
		if k == nil {
			return nil
		}
		if len(k) != 8 {
			return fmt.Errorf("%w: log key %x is %d bytes, want 8", ErrCorruptLog, k, len(k))
		}
		idx = binary.BigEndian.Uint64(k)
		return nil
	})
	if err != nil {
		if errors.Is(err, ErrCorrupt) {
			return 0, fmt.Errorf("%w (in %s)", err, s.path)
		}
		which := "last"
		if first {
			which = "first"
		}
		return 0, fmt.Errorf("storage: %s index: %w", which, err)
	}
	return idx, nil
}

// Verify reads every entry from index from to the last one and checks that
// each decodes, passes its checksum and follows the one before. It returns
// an error wrapping ErrCorruptLog that names the file and the index of the
// first bad entry. hashicorp/raft panics on a log entry it cannot read while
// it starts, so the entries it will read are checked before it starts.
func (s *LogStore) Verify(from uint64) error {
	s.writeMu.Lock()
	err := s.checkpoint() // everything into the bbolt file, checked below
	s.writeMu.Unlock()
	if err != nil {
		return err
	}
	var start [8]byte
	binary.BigEndian.PutUint64(start[:], from)
	err = s.view(func(tx *bolt.Tx) error {
		// The tail can be most of the file: drop what it read from
		// resident memory as it goes (the transaction keeps the mapping).
		defer func() { _ = releaseMapped(s.path, tx.DB().Info().Data) }()
		// With a cold page cache, read the file ahead of the walk rather
		// than one page per fault (see readAheadMapped). Only the
		// kernel's readahead advice changes: a point read elsewhere
		// meanwhile (Open runs Verify before raft reads the log) would
		// read more than its page, no more.
		defer readAheadMapped(s.path, tx.DB().Info().Data)()
		c := tx.Bucket(logStoreBucketLogs).Cursor()
		var l raft.Log
		want := uint64(0)
		for k, v := c.Seek(start[:]); k != nil; k, v = c.Next() {
			if len(k) != 8 {
				return fmt.Errorf("%w: log key %x is %d bytes, want 8", ErrCorruptLog, k, len(k))
			}
			idx := binary.BigEndian.Uint64(k)
			if want != 0 && idx != want {
				return fmt.Errorf("%w at index %d: the log jumps to %d", ErrCorruptLog, want, idx)
			}
			if err := checkLog(idx, v, &l); err != nil {
				return err
			}
			want = idx + 1
			s.readMapped(tx, len(v))
			if verifyHook != nil {
				verifyHook()
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w (in %s)", err, s.path)
	}
	return nil
}

// verifyHook, when set (by tests), runs in Verify after each entry it has
// checked, inside its read transaction.
var verifyHook func()

// GetLog reads the log at index into log. It returns raft.ErrLogNotFound
// (unwrapped, as raft compares it with ==) if there is no such entry, and an
// error wrapping ErrCorruptLog if the stored record is damaged.
func (s *LogStore) GetLog(index uint64, log *raft.Log) error {
	return s.getLog(index, log, decodeLog)
}

// getLog finds the record of index, in the tail or the bbolt file, and
// reads it with read, which must not keep b.
func (s *LogStore) getLog(index uint64, log *raft.Log, read func(index uint64, b []byte, log *raft.Log) error) error {
	s.memMu.RLock()
	rec, ok := s.mem.get(index)
	s.memMu.RUnlock()
	if ok {
		if err := read(index, rec, log); err != nil {
			return fmt.Errorf("%w (in %s)", err, s.tailPath)
		}
		return nil
	}
	var key [8]byte
	binary.BigEndian.PutUint64(key[:], index)
	var found bool
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(logStoreBucketLogs).Get(key[:])
		if v == nil {
			return nil
		}
		found = true
		err := read(index, v, log)
		s.readMapped(tx, len(v))
		return err
	})
	if err != nil {
		if errors.Is(err, ErrCorrupt) {
			return fmt.Errorf("%w (in %s)", err, s.path)
		}
		return fmt.Errorf("storage: get log %d: %w", index, err)
	}
	if !found {
		return raft.ErrLogNotFound
	}
	return nil
}

// GetLogHeader is GetLog without the data of a command entry: such an
// entry reads with a nil Data (its checksum is still checked), any other
// entry whole. It is for a scan that looks only for configuration
// entries, as raft makes of the log after the last snapshot when it
// starts: reading the commands there would copy the whole tail into the
// heap for nothing.
func (s *LogStore) GetLogHeader(index uint64, log *raft.Log) error {
	return s.getLog(index, log, func(index uint64, b []byte, log *raft.Log) error {
		var hdr raft.Log
		if err := checkLog(index, b, &hdr); err != nil {
			return err
		}
		if hdr.Type != raft.LogCommand {
			return decodeLog(index, b, log)
		}
		hdr.Data, hdr.Extensions = nil, nil
		*log = hdr
		return nil
	})
}

// StoreLog durably stores a single log entry.
func (s *LogStore) StoreLog(log *raft.Log) error {
	return s.StoreLogs([]*raft.Log{log})
}

// StoreLogs durably stores logs, whose indexes must be consecutive: one
// append to the log tail (one write, one fdatasync), or, for a batch larger
// than the tail or with NoSync, one bbolt transaction. Existing entries with
// the same index are overwritten. When the tail is full and the checkpoint
// that empties it fails for lack of space, a batch with raft.LogCommand
// entries fails with an error wrapping ErrDiskFull, and a batch without
// goes into the tail's reserve while it has room (see DiskFull).
func (s *LogStore) StoreLogs(logs []*raft.Log) error {
	return diskFull(s.storeLogs(logs))
}

func (s *LogStore) storeLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.shut {
		return ErrClosed
	}
	if err := s.brokenErr(); err != nil {
		return err // not even into the tail
	}
	var start time.Time
	if s.observe != nil {
		start = time.Now()
	}
	if s.tail != nil {
		ok, err := s.appendTail(logs)
		if err != nil {
			return s.noteFull(fmt.Errorf("storage: store %d logs (indexes %d..%d): %w",
				len(logs), logs[0].Index, logs[len(logs)-1].Index, err))
		}
		if ok {
			if s.observe != nil {
				s.observe(time.Since(start))
			}
			return nil
		}
		// Larger than the tail: straight into the bbolt file.
	}

	total := 0
	for _, l := range logs {
		total += encodedLogSize(l)
	}
	if cap(s.wbuf) < total {
		s.wbuf = make([]byte, 0, total)
	}
	buf := s.wbuf[:0]

	err := s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(logStoreBucketLogs)
		for _, l := range logs {
			start := len(buf)
			buf = appendLog(buf, l)
			binary.BigEndian.PutUint64(s.keyBuf[:], l.Index)
			// bbolt clones the key but keeps a reference to the value
			// until commit; buf was sized up front so it never moves.
			if err := b.Put(s.keyBuf[:], buf[start:len(buf):len(buf)]); err != nil {
				return fmt.Errorf("put log %d: %w", l.Index, err)
			}
		}
		return nil
	})
	if cap(s.wbuf) > logStoreMaxWriteBuf {
		s.wbuf = nil
	}
	if err != nil {
		return s.noteFull(fmt.Errorf("storage: store %d logs (indexes %d..%d): %w",
			len(logs), logs[0].Index, logs[len(logs)-1].Index, err))
	}
	s.notePut(logs[0].Index)
	if s.observe != nil {
		s.observe(time.Since(start))
	}
	return nil
}

// DeleteRange deletes the logs with indexes in [min, max], inclusive, in one
// transaction. A range that reaches into the entries held in the log tail
// checkpoints first; one below them (compaction) does not.
func (s *LogStore) DeleteRange(min, max uint64) error {
	if min > max {
		return nil
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.shut {
		return ErrClosed
	}
	s.memMu.RLock()
	run := s.mem
	s.memMu.RUnlock()
	if s.tailBad || (len(run.recs) > 0 && max >= run.first) {
		if err := s.checkpoint(); err != nil {
			return s.noteFull(fmt.Errorf("storage: delete logs %d..%d: %w", min, max, err))
		}
	}
	var minKey, maxKey [8]byte
	binary.BigEndian.PutUint64(minKey[:], min)
	binary.BigEndian.PutUint64(maxKey[:], max)
	err := s.update(func(tx *bolt.Tx) error {
		c := tx.Bucket(logStoreBucketLogs).Cursor()
		cur := make([]byte, 0, 8)
		for k, _ := c.Seek(minKey[:]); k != nil && bytes.Compare(k, maxKey[:]) <= 0; {
			cur = append(cur[:0], k...)
			if err := c.Delete(); err != nil {
				return err
			}
			// Re-seek rather than c.Next(): in bbolt a Delete followed by
			// Next can skip an element
			// (https://github.com/etcd-io/bbolt/issues/146). Seeking the
			// deleted key lands on its successor.
			k, _ = c.Seek(cur)
		}
		return nil
	})
	if err != nil {
		return s.noteFull(fmt.Errorf("storage: delete logs %d..%d: %w", min, max, err))
	}
	s.noteDelete(min, max)
	return nil
}

// Set durably stores val under key in the stable store. Raft's term and
// vote (CurrentTerm, LastVoteTerm, LastVoteCand) go to the state file,
// where a write needs no new space; other keys to the bbolt file.
func (s *LogStore) Set(key []byte, val []byte) error {
	if err := s.brokenErr(); err != nil {
		return err
	}
	if i := stateKeyIndex(key); i >= 0 {
		if err := s.state.put(i, val); err != nil {
			return fmt.Errorf("storage: set %q: %w", key, err)
		}
		return nil
	}
	err := s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(logStoreBucketConf).Put(key, val)
	})
	if err != nil {
		return s.noteFull(fmt.Errorf("storage: set %q: %w", key, err))
	}
	return nil
}

// Get returns a copy of the value stored under key. A missing key yields
// (nil, ErrStableKeyNotFound), whose text is exactly "not found" as raft expects.
func (s *LogStore) Get(key []byte) ([]byte, error) {
	if i := stateKeyIndex(key); i >= 0 {
		if v, ok := s.state.get(i); ok {
			return v, nil
		}
		return nil, ErrStableKeyNotFound
	}
	var val []byte
	var found bool
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(logStoreBucketConf).Get(key)
		if v == nil {
			return nil
		}
		found = true
		val = append(make([]byte, 0, len(v)), v...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("storage: get %q: %w", key, err)
	}
	if !found {
		return nil, ErrStableKeyNotFound
	}
	return val, nil
}

// SetUint64 durably stores val (8 bytes, big-endian) under key.
func (s *LogStore) SetUint64(key []byte, val uint64) error {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], val)
	return s.Set(key, b[:])
}

// GetUint64 returns the uint64 stored under key by SetUint64. A missing key
// yields (0, ErrStableKeyNotFound).
func (s *LogStore) GetUint64(key []byte) (uint64, error) {
	if i := stateKeyIndex(key); i >= 0 {
		v, ok := s.state.get(i)
		if !ok {
			return 0, ErrStableKeyNotFound
		}
		if len(v) != 8 {
			return 0, fmt.Errorf("storage: get uint64 %q: value is %d bytes, want 8", key, len(v))
		}
		return binary.BigEndian.Uint64(v), nil
	}
	var val uint64
	var found bool
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(logStoreBucketConf).Get(key)
		if v == nil {
			return nil
		}
		found = true
		if len(v) != 8 {
			return fmt.Errorf("value is %d bytes, want 8", len(v))
		}
		val = binary.BigEndian.Uint64(v)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("storage: get uint64 %q: %w", key, err)
	}
	if !found {
		return 0, ErrStableKeyNotFound
	}
	return val, nil
}

// Record format (version 1), all varints unsigned (encoding/binary):
//
//	version      1 byte  (= 1)
//	Index        uvarint
//	Term         uvarint
//	Type         1 byte
//	flags        1 byte  (bit 0: AppendedAt present)
//	len(Data)    uvarint, then Data
//	len(Ext)     uvarint, then Extensions
//	AppendedAt   8 bytes big-endian int64 UnixNano, only if flag bit 0
//	CRC32-C      4 bytes big-endian over all preceding bytes
//
// A zero AppendedAt is not stored and decodes as the zero time. Non-zero
// times must lie in UnixNano's range (years 1678-2262); they decode in the
// Local location without a monotonic clock reading.

func logUvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// encodedLogSize returns the exact number of bytes appendLog will add.
func encodedLogSize(l *raft.Log) int {
	n := 1 + logUvarintLen(l.Index) + logUvarintLen(l.Term) + 1 + 1 +
		logUvarintLen(uint64(len(l.Data))) + len(l.Data) +
		logUvarintLen(uint64(len(l.Extensions))) + len(l.Extensions) +
		logCRCSize
	if !l.AppendedAt.IsZero() {
		n += 8
	}
	return n
}

// appendLog appends the encoded record for l to dst.
func appendLog(dst []byte, l *raft.Log) []byte {
	start := len(dst)
	var flags byte
	if !l.AppendedAt.IsZero() {
		flags |= logFlagAppendedAt
	}
	dst = append(dst, logRecordVersion)
	dst = binary.AppendUvarint(dst, l.Index)
	dst = binary.AppendUvarint(dst, l.Term)
	dst = append(dst, byte(l.Type), flags)
	dst = binary.AppendUvarint(dst, uint64(len(l.Data)))
	dst = append(dst, l.Data...)
	dst = binary.AppendUvarint(dst, uint64(len(l.Extensions)))
	dst = append(dst, l.Extensions...)
	if flags&logFlagAppendedAt != 0 {
		dst = binary.BigEndian.AppendUint64(dst, uint64(l.AppendedAt.UnixNano()))
	}
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], logCRCTable))
}

// decodeLog decodes the record stored under key index into out. Any failure,
// including a record whose Index differs from the key, is reported as an
// error wrapping ErrCorruptLog that names the index. It never panics.
func decodeLog(index uint64, b []byte, out *raft.Log) error {
	return parseLog(index, b, out, true)
}

// checkLog is decodeLog without the copy: out's Data and Extensions alias
// b. Verify uses it, so that checking a long log allocates nothing per
// entry.
func checkLog(index uint64, b []byte, out *raft.Log) error {
	return parseLog(index, b, out, false)
}

func parseLog(index uint64, b []byte, out *raft.Log, copied bool) error {
	if err := unmarshalLogTo(b, out, copied); err != nil {
		return fmt.Errorf("%w at index %d: %v", ErrCorruptLog, index, err)
	}
	if out.Index != index {
		return fmt.Errorf("%w at index %d: record holds index %d", ErrCorruptLog, index, out.Index)
	}
	return nil
}

// unmarshalLog verifies the checksum of b and decodes it into out. Data and
// Extensions are copied (into one allocation) so out does not alias b; empty
// slices decode as nil.
func unmarshalLog(b []byte, out *raft.Log) error { return unmarshalLogTo(b, out, true) }

// unmarshalLogTo is unmarshalLog; with copied false, out's Data and
// Extensions alias b instead of being copied.
func unmarshalLogTo(b []byte, out *raft.Log, copied bool) error {
	if len(b) < minLogRecordSize {
		return fmt.Errorf("record too short (%d bytes)", len(b))
	}
	body := b[:len(b)-logCRCSize]
	want := binary.BigEndian.Uint32(b[len(b)-logCRCSize:])
	if got := crc32.Checksum(body, logCRCTable); got != want {
		return fmt.Errorf("checksum mismatch (stored %08x, computed %08x)", want, got)
	}
	if body[0] != logRecordVersion {
		return fmt.Errorf("unknown record version %d", body[0])
	}
	d := logDecoder{buf: body[1:]}
	index := d.uvarint("index")
	term := d.uvarint("term")
	typ := d.u8("type")
	flags := d.u8("flags")
	data := d.bytes("data")
	ext := d.bytes("extensions")
	var appendedAt time.Time
	if flags&logFlagAppendedAt != 0 {
		appendedAt = time.Unix(0, int64(d.u64("appended_at")))
	}
	if d.err != nil {
		return d.err
	}
	if flags&^logKnownFlags != 0 {
		return fmt.Errorf("unknown flags %#02x", flags)
	}
	if len(d.buf) != 0 {
		return fmt.Errorf("%d trailing bytes", len(d.buf))
	}

	out.Index = index
	out.Term = term
	out.Type = raft.LogType(typ)
	out.Data, out.Extensions = nil, nil
	if !copied {
		if len(data) > 0 {
			out.Data = data
		}
		if len(ext) > 0 {
			out.Extensions = ext
		}
	} else if n := len(data) + len(ext); n > 0 {
		all := make([]byte, n)
		copy(all, data)
		copy(all[len(data):], ext)
		if len(data) > 0 {
			out.Data = all[:len(data):len(data)]
		}
		if len(ext) > 0 {
			out.Extensions = all[len(data):]
		}
	}
	out.AppendedAt = appendedAt
	return nil
}

// logDecoder reads fields from a byte slice, recording the first error; after
// an error every read returns a zero value.
type logDecoder struct {
	buf []byte
	err error
}

func (d *logDecoder) fail(field, msg string) {
	if d.err == nil {
		d.err = fmt.Errorf("field %s: %s", field, msg)
	}
	d.buf = nil
}

func (d *logDecoder) uvarint(field string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	if n <= 0 {
		if n == 0 {
			d.fail(field, "truncated")
		} else {
			d.fail(field, "varint overflow")
		}
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *logDecoder) u8(field string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.buf) < 1 {
		d.fail(field, "truncated")
		return 0
	}
	v := d.buf[0]
	d.buf = d.buf[1:]
	return v
}

func (d *logDecoder) u64(field string) uint64 {
	if d.err != nil {
		return 0
	}
	if len(d.buf) < 8 {
		d.fail(field, "truncated")
		return 0
	}
	v := binary.BigEndian.Uint64(d.buf)
	d.buf = d.buf[8:]
	return v
}

// bytes returns a length-prefixed slice aliasing d.buf.
func (d *logDecoder) bytes(field string) []byte {
	n := d.uvarint(field + " length")
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.buf)) {
		d.fail(field, fmt.Sprintf("length %d exceeds remaining %d bytes", n, len(d.buf)))
		return nil
	}
	v := d.buf[:n:n]
	d.buf = d.buf[n:]
	return v
}

// RecordSizes calls fn with the index and stored size (bytes of the
// record) of every log entry, newest first, until fn returns false. It
// reads no entry's data: the sizes come from the tail's records in memory
// and the bbolt file's keys and value lengths.
func (s *LogStore) RecordSizes(fn func(index uint64, size int) bool) error {
	s.memMu.RLock()
	run := s.mem
	s.memMu.RUnlock()
	below := uint64(0) // the bbolt file's entries start below the tail's
	if len(run.recs) > 0 {
		for i := len(run.recs) - 1; i >= 0; i-- {
			if !fn(run.first+uint64(i), len(run.recs[i])) {
				return nil
			}
		}
		below = run.first
	}
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(logStoreBucketLogs).Cursor()
		k, v := c.Last()
		if below > 0 {
			var key [8]byte
			binary.BigEndian.PutUint64(key[:], below)
			if k, v = c.Seek(key[:]); k == nil {
				k, v = c.Last()
			} else {
				k, v = c.Prev()
			}
		}
		for ; k != nil; k, v = c.Prev() {
			if len(k) != 8 {
				return fmt.Errorf("%w: log key %x is %d bytes, want 8", ErrCorruptLog, k, len(k))
			}
			if !fn(binary.BigEndian.Uint64(k), len(v)) {
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("storage: log record sizes: %w (in %s)", err, s.path)
	}
	return nil
}
