package storage

import (
	"bytes"
	"io"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/google/btree"
)

// Memory is an Engine that keeps everything in a copy-on-write B-tree in
// memory; nothing survives Close. Each Update works on a lazy clone of the
// current tree and publishes it on success, so readers and snapshots never
// wait for a writer and a snapshot costs O(1).
type Memory struct {
	wmu    sync.Mutex // one writer (Update, Restore) at a time
	cur    atomic.Pointer[memState]
	staged atomic.Pointer[memStaged] // the one staged restore, if any
	closed atomic.Bool
}

type memState struct {
	tree    *btree.BTreeG[memItem]
	applied uint64
}

type memItem struct {
	key, value []byte
}

func memLess(a, b memItem) bool { return bytes.Compare(a.key, b.key) < 0 }

var (
	_ Engine      = (*Memory)(nil)
	_ PointReader = (*Memory)(nil)
)

// NewMemory returns an empty in-memory Engine.
func NewMemory() *Memory {
	m := &Memory{}
	m.cur.Store(&memState{tree: btree.NewG(32, memLess)})
	return m
}

// AppliedIndex implements Engine.
func (m *Memory) AppliedIndex() uint64 { return m.cur.Load().applied }

// Update implements Engine.
func (m *Memory) Update(index uint64, fn func(WriteTx) error) error {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	if m.closed.Load() {
		return ErrClosed
	}
	next := m.cur.Load().tree.Clone()
	if err := fn(memTx{t: next, write: true}); err != nil {
		return err
	}
	m.cur.Store(&memState{tree: next, applied: index})
	return nil
}

// Lookup implements PointReader.
func (m *Memory) Lookup(key string, dst []byte) ([]byte, bool, error) {
	t := m.cur.Load().tree
	if m.closed.Load() {
		return dst, false, ErrClosed
	}
	it, ok := t.Get(memItem{key: unsafe.Slice(unsafe.StringData(key), len(key))})
	if !ok {
		return dst, false, nil
	}
	return append(dst, it.value...), true, nil
}

// View implements Engine.
func (m *Memory) View(fn func(ReadTx) error) error {
	t := m.cur.Load().tree // before the closed check: Close empties cur after setting closed
	if m.closed.Load() {
		return ErrClosed
	}
	return fn(memTx{t: t})
}

// ViewApplied implements Engine.
func (m *Memory) ViewApplied(fn func(ReadTx, uint64) error) error {
	st := m.cur.Load()
	if m.closed.Load() {
		return ErrClosed
	}
	return fn(memTx{t: st.tree}, st.applied)
}

// Snapshot implements Engine.
func (m *Memory) Snapshot() (Snapshot, error) {
	st := m.cur.Load()
	if m.closed.Load() {
		return nil, ErrClosed
	}
	return &memSnap{memTx: memTx{t: st.tree}, index: st.applied}, nil
}

// Restore implements Engine.
func (m *Memory) Restore(r io.Reader) error {
	st, err := m.stage(r)
	if err != nil {
		return err
	}
	return st.Install(st.index)
}

// Stage implements Engine: the staged data is a tree in memory.
func (m *Memory) Stage(r io.Reader) (Staged, error) {
	st, err := m.stage(r)
	if err != nil {
		return nil, err
	}
	return st, nil
}

func (m *Memory) stage(r io.Reader) (*memStaged, error) {
	t := btree.NewG(32, memLess)
	var index uint64
	err := ReadSnapshot(r, func(i uint64) error {
		index = i
		return nil
	}, func(k, v []byte) error {
		t.ReplaceOrInsert(memItem{key: bytes.Clone(k), value: bytes.Clone(v)})
		return nil
	})
	if err != nil {
		return nil, err
	}
	st := &memStaged{m: m, tree: t, index: index}
	if old := m.staged.Swap(st); old != nil {
		old.Discard()
	}
	return st, nil
}

// memStaged is a Memory engine's staged restore.
type memStaged struct {
	m     *Memory
	tree  *btree.BTreeG[memItem]
	index uint64 // the stream's
}

// Install implements Staged.
func (s *memStaged) Install(index uint64) error {
	m := s.m
	m.wmu.Lock()
	defer m.wmu.Unlock()
	if !m.staged.CompareAndSwap(s, nil) {
		return errStagedGone
	}
	if m.closed.Load() {
		return ErrClosed
	}
	m.cur.Store(&memState{tree: s.tree, applied: index})
	s.tree = nil
	return nil
}

// Discard implements Staged.
func (s *memStaged) Discard() {
	s.m.staged.CompareAndSwap(s, nil)
	s.tree = nil
}

// FileSize implements Engine: there is no file.
func (m *Memory) FileSize() (size, inUse int64) { return 0, 0 }

// Close implements Engine.
func (m *Memory) Close() error {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	if !m.closed.Swap(true) {
		m.cur.Store(&memState{tree: btree.NewG(2, memLess)})
	}
	return nil
}

type memTx struct {
	t     *btree.BTreeG[memItem]
	write bool
}

func (t memTx) Get(key []byte) ([]byte, bool) {
	it, ok := t.t.Get(memItem{key: key})
	return it.value, ok
}

func (t memTx) Scan(from []byte, fn func(k, v []byte) bool) error {
	iter := func(it memItem) bool { return fn(it.key, it.value) }
	if from == nil {
		t.t.Ascend(iter)
	} else {
		t.t.AscendGreaterOrEqual(memItem{key: from}, iter)
	}
	return nil
}

func (t memTx) Put(key, value []byte) error {
	t.t.ReplaceOrInsert(memItem{key: bytes.Clone(key), value: bytes.Clone(value)})
	return nil
}

func (t memTx) Delete(key []byte) error {
	t.t.Delete(memItem{key: key})
	return nil
}

type memSnap struct {
	memTx
	index uint64
}

func (s *memSnap) AppliedIndex() uint64 { return s.index }
func (s *memSnap) Release()             {}
