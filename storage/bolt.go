package storage

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	bucketData = []byte("kv")
	bucketMeta = []byte("meta")
	keyApplied = []byte("applied")
)

// BoltOptions tune a Bolt engine. The zero value is durable.
type BoltOptions struct {
	// NoSync skips fsync on commit. Only for data that need not survive a
	// crash.
	NoSync bool
	// InitialMmapSize reserves address space for the file so that a long
	// snapshot read does not block writers while the file grows. 0 means 1 GiB
	// (address space, not memory).
	InitialMmapSize int
}

// Bolt is an Engine on one bbolt file: data larger than memory, with the
// applied index stored in the same transactions as the data.
type Bolt struct {
	path string
	opts BoltOptions

	mu      sync.RWMutex // guards db against Restore's swap
	db      *bolt.DB
	applied atomic.Uint64
	closed  bool
}

var _ Engine = (*Bolt)(nil)

// OpenBolt opens (or creates) the bbolt data file at path. A leftover file of
// an interrupted Restore is removed.
func OpenBolt(path string, opts BoltOptions) (*Bolt, error) {
	if opts.InitialMmapSize == 0 {
		opts.InitialMmapSize = 1 << 30
	}
	_ = os.Remove(path + ".restore")
	e := &Bolt{path: path, opts: opts}
	db, err := e.open(path)
	if err != nil {
		return nil, err
	}
	e.db = db
	if err := e.loadApplied(); err != nil {
		db.Close()
		return nil, err
	}
	return e, nil
}

func (e *Bolt) open(path string) (*bolt.DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:         time.Second,
		NoSync:          e.opts.NoSync,
		NoFreelistSync:  true,
		FreelistType:    bolt.FreelistMapType,
		InitialMmapSize: e.opts.InitialMmapSize,
	})
	if err != nil {
		return nil, fmt.Errorf("storage: open data file %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(bucketData); err != nil {
			return err
		}
		_, err := tx.CreateBucketIfNotExists(bucketMeta)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("storage: init data file %s: %w", path, err)
	}
	return db, nil
}

func (e *Bolt) loadApplied() error {
	return e.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketMeta).Get(keyApplied)
		switch len(v) {
		case 0:
			e.applied.Store(0)
		case 8:
			e.applied.Store(binary.BigEndian.Uint64(v))
		default:
			return fmt.Errorf("storage: data file %s: applied index of %d bytes", e.path, len(v))
		}
		return nil
	})
}

// Path returns the data file's path.
func (e *Bolt) Path() string { return e.path }

// AppliedIndex implements Engine.
func (e *Bolt) AppliedIndex() uint64 { return e.applied.Load() }

// Update implements Engine.
func (e *Bolt) Update(index uint64, fn func(WriteTx) error) error {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return ErrClosed
	}
	err := e.db.Update(func(tx *bolt.Tx) error {
		if err := fn(boltTx{b: tx.Bucket(bucketData)}); err != nil {
			return err
		}
		var buf [8]byte
		binary.BigEndian.PutUint64(buf[:], index)
		return tx.Bucket(bucketMeta).Put(keyApplied, buf[:])
	})
	if err != nil {
		return fmt.Errorf("storage: write %s: %w", e.path, err)
	}
	e.applied.Store(index)
	return nil
}

// View implements Engine.
func (e *Bolt) View(fn func(ReadTx) error) error {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return ErrClosed
	}
	return e.db.View(func(tx *bolt.Tx) error {
		return fn(boltTx{b: tx.Bucket(bucketData)})
	})
}

// Snapshot implements Engine. The view is a bbolt read transaction.
func (e *Bolt) Snapshot() (Snapshot, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return nil, ErrClosed
	}
	tx, err := e.db.Begin(false)
	if err != nil {
		return nil, fmt.Errorf("storage: snapshot %s: %w", e.path, err)
	}
	var idx uint64
	if v := tx.Bucket(bucketMeta).Get(keyApplied); len(v) == 8 {
		idx = binary.BigEndian.Uint64(v)
	}
	return &boltSnap{boltTx: boltTx{b: tx.Bucket(bucketData)}, tx: tx, index: idx}, nil
}

// Restore implements Engine. The stream is written into a new file next to
// the data file, synced, checked, and only then renamed over it.
func (e *Bolt) Restore(r io.Reader) error {
	tmp := e.path + ".restore"
	_ = os.Remove(tmp)
	ndb, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: time.Second, NoSync: true, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return fmt.Errorf("storage: restore %s: %w", tmp, err)
	}
	fail := func(err error) error {
		ndb.Close()
		os.Remove(tmp)
		return err
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
		if _, err = tx.CreateBucketIfNotExists(bucketData); err != nil {
			return err
		}
		_, err = tx.CreateBucketIfNotExists(bucketMeta)
		return err
	}
	err = ReadSnapshot(r, func(i uint64) error {
		index = i
		return begin()
	}, func(k, v []byte) error {
		if putErr != nil {
			return nil
		}
		// bbolt keeps the slices until commit; ReadSnapshot reuses them.
		k, v = append([]byte(nil), k...), append([]byte(nil), v...)
		if putErr = tx.Bucket(bucketData).Put(k, v); putErr != nil {
			return nil
		}
		pending += len(k) + len(v)
		if pending >= 32<<20 {
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
		var buf [8]byte
		binary.BigEndian.PutUint64(buf[:], index)
		err = tx.Bucket(bucketMeta).Put(keyApplied, buf[:])
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
		os.Remove(tmp)
		return fmt.Errorf("storage: restore %s: %w", tmp, err)
	}

	// Swap: rename the new file over the old one (the open handle keeps the
	// old inode), open it, switch readers and writers to it, then close the
	// old handle, which waits for snapshots still reading it without
	// blocking anyone else.
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		os.Remove(tmp)
		return ErrClosed
	}
	if err := os.Rename(tmp, e.path); err != nil {
		e.mu.Unlock()
		os.Remove(tmp)
		return fmt.Errorf("storage: restore %s: %w", e.path, err)
	}
	if !e.opts.NoSync {
		if err := syncDir(filepath.Dir(e.path)); err != nil {
			e.mu.Unlock()
			return fmt.Errorf("storage: restore %s: sync dir: %w", e.path, err)
		}
	}
	db, err := e.open(e.path)
	if err != nil {
		e.mu.Unlock()
		return err
	}
	old := e.db
	e.db = db
	err = e.loadApplied()
	e.mu.Unlock()
	if cerr := old.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("storage: restore: close old %s: %w", e.path, cerr)
	}
	return err
}

// Close implements Engine.
func (e *Bolt) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	return e.db.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

type boltTx struct{ b *bolt.Bucket }

func (t boltTx) Get(key []byte) ([]byte, bool) {
	v := t.b.Get(key)
	return v, v != nil
}

func (t boltTx) Scan(from []byte, fn func(k, v []byte) bool) error {
	c := t.b.Cursor()
	var k, v []byte
	if from == nil {
		k, v = c.First()
	} else {
		k, v = c.Seek(from)
	}
	for ; k != nil; k, v = c.Next() {
		if !fn(k, v) {
			break
		}
	}
	return nil
}

func (t boltTx) Put(key, value []byte) error {
	if value == nil {
		value = []byte{} // bbolt reads a nil value back as absent within the transaction
	}
	return t.b.Put(key, value)
}

func (t boltTx) Delete(key []byte) error { return t.b.Delete(key) }

type boltSnap struct {
	boltTx
	tx    *bolt.Tx
	index uint64
	once  sync.Once
}

func (s *boltSnap) AppliedIndex() uint64 { return s.index }
func (s *boltSnap) Release()             { s.once.Do(func() { s.tx.Rollback() }) }
