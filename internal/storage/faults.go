package storage

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/cohortkv/kv/internal/faultinject"
)

func init() {
	faultinject.Install = func(f faultinject.Fault) func() bool {
		op := numFaultOps
		for i, name := range faultOpNames {
			if name == f.Op {
				op = faultOp(i)
			}
		}
		if op == numFaultOps {
			panic("faultinject: unknown operation " + f.Op)
		}
		fs := newFaultSet(op, f.N, f.Err)
		fs.sticky = f.Sticky
		if f.PathPrefix != "" {
			fs.prefix = filepath.Clean(f.PathPrefix)
		}
		faults.Store(fs)
		return func() bool {
			faults.CompareAndSwap(fs, nil)
			fs.mu.Lock()
			defer fs.mu.Unlock()
			return fs.fired
		}
	}
}

// The fault seam: the package's own file operations (the log tail, the
// state file, renames and removals of the data file's restore, directory
// syncs) and the bbolt write transactions of the log store go through the
// fs* functions below. Without a fault set (faults is nil, always outside
// tests) each is the plain operation after one atomic load. Tests install a
// faultSet to make the Nth operation of a kind fail with an error, or act as
// a power loss. bbolt's own writes cannot be intercepted: a failing commit
// is simulated by failing the Update call before it starts.

// faultOp is a kind of operation that goes through the seam.
type faultOp uint8

const (
	opWrite    faultOp = iota // pwrite
	opSync                    // fdatasync, fsync, and the fsync of a directory
	opRename                  // rename
	opTruncate                // ftruncate
	opRead                    // pread
	opCreate                  // open with O_CREATE
	opRemove                  // unlink
	opCommit                  // a bbolt write transaction of the log store
	numFaultOps
)

var faultOpNames = [numFaultOps]string{"write", "sync", "rename", "truncate", "read", "create", "remove", "commit"}

func (o faultOp) String() string {
	if o < numFaultOps {
		return faultOpNames[o]
	}
	return fmt.Sprintf("op%d", o)
}

// faults is the installed fault set; nil except in tests.
var faults atomic.Pointer[faultSet]

// faultSet counts the operations of each kind and fails one of them. With
// err nil the failing operation is a power loss: every file written through
// the seam goes back to what its last successful sync made durable, files
// and renames not followed by a sync of their directory are undone, and
// every later operation fails with EIO until the set is removed.
type faultSet struct {
	mu      sync.Mutex
	counts  [numFaultOps]int
	op      faultOp
	n       int    // fail the nth operation of op (1-based); 0: none
	err     error  // what it fails with; nil: a power loss
	sticky  bool   // fail every operation of op from the nth on, not only the nth
	prefix  string // only files under it count and fail; "" for all
	fired   bool
	crashed bool
	files   map[string]*shadowFile
	dirOps  map[string][]dirOp
}

// shadowFile is what a power loss leaves of one file.
type shadowFile struct {
	durable []byte     // the content as of the last successful sync
	dirty   [][2]int64 // ranges written since then
	resized bool       // truncated since then
	lost    bool       // a failed sync dropped writes: the file differs from durable
}

// dirOp is a creation (from == "") or a rename in a directory that no sync
// of the directory has made durable yet.
type dirOp struct{ from, to string }

// newFaultSet returns a set that fails the nth operation of op with err
// (a power loss when err is nil); n == 0 only counts.
func newFaultSet(op faultOp, n int, err error) *faultSet {
	return &faultSet{op: op, n: n, err: err, files: map[string]*shadowFile{}, dirOps: map[string][]dirOp{}}
}

var errPowerLost = syscall.EIO

// enter counts an operation on path and says whether it fails: the error
// to return, or nil. The caller holds fs.mu.
func (fs *faultSet) enter(op faultOp, path string) error {
	if fs.prefix != "" && !strings.HasPrefix(filepath.Clean(path), fs.prefix) {
		return nil
	}
	if fs.crashed {
		return &os.PathError{Op: op.String(), Path: path, Err: errPowerLost}
	}
	fs.counts[op]++
	if fs.n == 0 || op != fs.op || (fs.sticky && fs.counts[op] < fs.n) || (!fs.sticky && (fs.fired || fs.counts[op] != fs.n)) {
		return nil
	}
	fs.fired = true
	if fs.err == nil {
		fs.powerLoss()
		return &os.PathError{Op: op.String(), Path: path, Err: errPowerLost}
	}
	return &os.PathError{Op: op.String(), Path: path, Err: fs.err}
}

// shadow returns the shadow of path, reading its content (durable, as the
// files a test starts from are) the first time.
func (fs *faultSet) shadow(path string) *shadowFile {
	sh := fs.files[path]
	if sh == nil {
		b, _ := os.ReadFile(path)
		sh = &shadowFile{durable: b}
		fs.files[path] = sh
	}
	return sh
}

// synced makes what f holds durable in its shadow.
func (fs *faultSet) synced(f *os.File) {
	sh := fs.shadow(f.Name())
	fi, err := f.Stat()
	if err != nil {
		return
	}
	size := fi.Size()
	if int64(len(sh.durable)) != size {
		d := make([]byte, size)
		copy(d, sh.durable)
		sh.durable = d
	}
	for _, r := range sh.dirty {
		lo, hi := min(r[0], size), min(r[1], size)
		if lo < hi {
			_, _ = f.ReadAt(sh.durable[lo:hi], lo)
		}
	}
	sh.dirty, sh.resized = nil, false
}

// powerLoss puts every shadowed file back to its durable content and undoes
// the directory operations no directory sync made durable. The caller
// holds fs.mu.
func (fs *faultSet) powerLoss() {
	fs.crashed = true
	for path, sh := range fs.files {
		if fs.prefix != "" && !strings.HasPrefix(filepath.Clean(path), fs.prefix) {
			continue
		}
		if len(sh.dirty) == 0 && !sh.resized && !sh.lost {
			continue
		}
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			continue
		}
		_, _ = f.WriteAt(sh.durable, 0)
		_ = f.Truncate(int64(len(sh.durable)))
		_ = f.Close()
		sh.dirty, sh.resized, sh.lost = nil, false, false
	}
	for _, ops := range fs.dirOps {
		for i := len(ops) - 1; i >= 0; i-- {
			if op := ops[i]; op.from == "" {
				_ = os.Remove(op.to)
			} else {
				_ = os.Rename(op.to, op.from)
			}
		}
	}
	fs.dirOps = map[string][]dirOp{}
}

func (fs *faultSet) count(op faultOp) int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.counts[op]
}

func cleanDir(path string) string { return filepath.Clean(filepath.Dir(path)) }

// fsOpen opens path; with O_CREATE it counts as a creation.
func fsOpen(path string, flag int, perm os.FileMode) (*os.File, error) {
	fs := faults.Load()
	if fs == nil || flag&os.O_CREATE == 0 {
		return os.OpenFile(path, flag, perm)
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if err := fs.enter(opCreate, path); err != nil {
		return nil, err
	}
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, flag, perm)
	if err == nil && errors.Is(statErr, os.ErrNotExist) {
		dir := cleanDir(path)
		fs.dirOps[dir] = append(fs.dirOps[dir], dirOp{to: path})
		fs.files[path] = &shadowFile{}
	}
	return f, err
}

// fsWriteAt writes b at off. A failure injected with EIO writes the first
// half of b (as a write torn by a failing device may); with another error,
// nothing.
func fsWriteAt(f *os.File, b []byte, off int64) (int, error) {
	fs := faults.Load()
	if fs == nil {
		return f.WriteAt(b, off)
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	sh := fs.shadow(f.Name())
	if err := fs.enter(opWrite, f.Name()); err != nil {
		n := 0
		if !fs.crashed && errors.Is(err, syscall.EIO) {
			n, _ = f.WriteAt(b[:len(b)/2], off)
			sh.dirty = append(sh.dirty, [2]int64{off, off + int64(n)})
		}
		return n, err
	}
	n, err := f.WriteAt(b, off)
	sh.dirty = append(sh.dirty, [2]int64{off, off + int64(n)})
	return n, err
}

// fsReadAt reads len(b) bytes at off (io.ReadFull semantics: an error
// unless all of b is read).
func fsReadAt(f *os.File, b []byte, off int64) (int, error) {
	if fs := faults.Load(); fs != nil {
		fs.mu.Lock()
		err := fs.enter(opRead, f.Name())
		fs.mu.Unlock()
		if err != nil {
			return 0, err
		}
	}
	return io.ReadFull(io.NewSectionReader(f, off, int64(len(b))), b)
}

// fsSync flushes f with fdatasync (full is false) or fsync. An injected
// failure leaves what was written since the last sync to be lost at the
// next power loss, even if a later sync succeeds: Linux reports a failed
// writeback once and marks the pages clean.
func fsSync(f *os.File, full bool) error {
	do := func() error {
		if full {
			return f.Sync()
		}
		return fdatasync(f)
	}
	fs := faults.Load()
	if fs == nil {
		return do()
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if err := fs.enter(opSync, f.Name()); err != nil {
		if sh := fs.files[f.Name()]; sh != nil && len(sh.dirty) > 0 {
			sh.dirty, sh.lost = nil, true
		}
		return err
	}
	if err := do(); err != nil {
		return err
	}
	fs.synced(f)
	return nil
}

// fsSyncDir fsyncs the directory dir, which makes the creations and renames
// in it durable.
func fsSyncDir(dir string) error {
	fs := faults.Load()
	if fs == nil {
		return syncDir(dir)
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if err := fs.enter(opSync, dir); err != nil {
		return err
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	delete(fs.dirOps, filepath.Clean(dir))
	return nil
}

// fsTruncate sets the size of f.
func fsTruncate(f *os.File, size int64) error {
	fs := faults.Load()
	if fs == nil {
		return f.Truncate(size)
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	sh := fs.shadow(f.Name())
	if err := fs.enter(opTruncate, f.Name()); err != nil {
		return err
	}
	sh.resized = true
	return f.Truncate(size)
}

// fsRename renames from to to.
func fsRename(from, to string) error {
	fs := faults.Load()
	if fs == nil {
		return os.Rename(from, to)
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if err := fs.enter(opRename, to); err != nil {
		return err
	}
	if err := os.Rename(from, to); err != nil {
		return err
	}
	if sh, ok := fs.files[from]; ok {
		fs.files[to] = sh
		delete(fs.files, from)
	}
	dir := cleanDir(to)
	fs.dirOps[dir] = append(fs.dirOps[dir], dirOp{from: from, to: to})
	return nil
}

// fsRemove removes path.
func fsRemove(path string) error {
	fs := faults.Load()
	if fs == nil {
		return os.Remove(path)
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if err := fs.enter(opRemove, path); err != nil {
		return err
	}
	delete(fs.files, path)
	return os.Remove(path)
}

// fsCommit is called before each bbolt write transaction of the log store
// on path: an error fails the transaction before it starts.
func fsCommit(path string) error {
	fs := faults.Load()
	if fs == nil {
		return nil
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.enter(opCommit, path)
}
