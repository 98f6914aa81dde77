package kv

import (
	"errors"
	"fmt"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/storage"
)

// faultyStores fails the calls a test names, as a failing disk would.
type faultyStores struct {
	*raft.InmemStore
	failSet, failGet, failStore error
}

func (f *faultyStores) SetUint64(k []byte, v uint64) error {
	if f.failSet != nil {
		return f.failSet
	}
	return f.InmemStore.SetUint64(k, v)
}

func (f *faultyStores) Set(k, v []byte) error {
	if f.failSet != nil {
		return f.failSet
	}
	return f.InmemStore.Set(k, v)
}

func (f *faultyStores) GetLog(i uint64, l *raft.Log) error {
	if f.failGet != nil {
		return f.failGet
	}
	return f.InmemStore.GetLog(i, l)
}

func (f *faultyStores) StoreLogs(logs []*raft.Log) error {
	if f.failStore != nil {
		return f.failStore
	}
	return f.InmemStore.StoreLogs(logs)
}

func newFaultyRaftStorage() (*raftStorage, *faultyStores, *[]error) {
	f := &faultyStores{InmemStore: raft.NewInmemStore()}
	var halts []error
	return &raftStorage{logs: f, stable: f, halt: func(err error) { halts = append(halts, err) }}, f, &halts
}

func TestRaftStorage_FailuresRaftWouldPanicOnHalt(t *testing.T) {
	rs, f, halts := newFaultyRaftStorage()
	if err := rs.StoreLogs([]*raft.Log{{Index: 1, Term: 1, Type: raft.LogCommand, Data: []byte("x")}}); err != nil {
		t.Fatal(err)
	}

	f.failSet = errors.New("EIO")
	if err := rs.SetUint64(keyCurrentTerm, 7); err != nil {
		t.Fatalf("failed term write reported as %v: raft panics on it", err)
	}
	if len(*halts) != 1 {
		t.Fatalf("failed term write: %d halts, want 1", len(*halts))
	}
	if err := rs.Set([]byte("LastVoteCand"), []byte("n1")); err == nil {
		t.Fatal("failed vote write reported as success")
	}
	f.failSet = nil

	f.failGet = fmt.Errorf("%w at index 1", storage.ErrCorruptLog)
	var l raft.Log
	if err := rs.GetLog(1, &l); err != nil || l.Type != raft.LogNoop || l.Index != 1 {
		t.Fatalf("unreadable entry: %+v, %v; want a no-op (raft panics on an error)", l, err)
	}
	f.failGet = raft.ErrLogNotFound
	if err := rs.GetLog(9, &l); err != raft.ErrLogNotFound {
		t.Fatalf("missing entry: %v, want raft.ErrLogNotFound unwrapped", err)
	}
	f.failGet = nil
	before := len(*halts)

	// A full disk is no reason to halt: appends work again with space.
	f.failStore = fmt.Errorf("%w: no space left on device", storage.ErrDiskFull)
	if err := rs.StoreLogs([]*raft.Log{{Index: 2, Term: 1, Type: raft.LogCommand}}); !errors.Is(err, storage.ErrDiskFull) {
		t.Fatalf("append with the disk full: %v", err)
	}
	if len(*halts) != before {
		t.Fatal("a full disk halted the member")
	}
	f.failStore = fmt.Errorf("%w: bad page", storage.ErrCorrupt)
	if err := rs.StoreLogs([]*raft.Log{{Index: 2, Term: 1, Type: raft.LogCommand}}); err == nil {
		t.Fatal("damaged append reported as success")
	}
	if len(*halts) != before+1 {
		t.Fatal("a damaged log did not halt the member")
	}
}

func TestRaftStorage_RefusesEntriesRaftCannotApply(t *testing.T) {
	rs, _, halts := newFaultyRaftStorage()
	good := raft.EncodeConfiguration(raft.Configuration{Servers: []raft.Server{{ID: "n1", Address: "a"}}})
	for _, l := range []*raft.Log{
		{Index: 1, Term: 1, Type: raft.LogConfiguration, Data: []byte{0x93, 0x01}},
		{Index: 1, Term: 1, Type: raft.LogConfiguration, Data: nil},
		{Index: 1, Term: 1, Type: raft.LogType(200)},
	} {
		if err := rs.StoreLogs([]*raft.Log{l}); err == nil {
			t.Errorf("stored %+v", l)
		}
	}
	if err := rs.StoreLogs([]*raft.Log{{Index: 1, Term: 1, Type: raft.LogConfiguration, Data: good}, {Index: 2, Term: 1, Type: raft.LogNoop}}); err != nil {
		t.Fatalf("valid entries refused: %v", err)
	}
	if len(*halts) != 0 {
		t.Fatalf("refusing a peer's bad entries halted the member: %v", *halts)
	}
}

// Once the member halted, raft can no longer change its files: a read that
// failed (and read as a no-op) must not lead raft to truncate entries the
// member acknowledged.
func TestRaftStorage_HaltedWritesNothing(t *testing.T) {
	rs, f, _ := newFaultyRaftStorage()
	for i := uint64(1); i <= 3; i++ {
		if err := rs.StoreLogs([]*raft.Log{{Index: i, Term: 1, Type: raft.LogCommand}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := rs.SetUint64(keyCurrentTerm, 1); err != nil {
		t.Fatal(err)
	}
	rs.halted = func() bool { return true }
	if err := rs.DeleteRange(2, 3); err == nil {
		t.Fatal("DeleteRange on a halted member succeeded")
	}
	if err := rs.StoreLogs([]*raft.Log{{Index: 4, Term: 2, Type: raft.LogCommand}}); err == nil {
		t.Fatal("StoreLogs on a halted member succeeded")
	}
	if err := rs.SetUint64(keyCurrentTerm, 9); err != nil {
		t.Fatalf("term write on a halted member: %v (raft panics on an error)", err)
	}
	if err := rs.Set([]byte("LastVoteCand"), []byte("x")); err == nil {
		t.Fatal("vote write on a halted member succeeded")
	}
	if last, _ := f.LastIndex(); last != 3 {
		t.Fatalf("last index %d after the halt, want 3", last)
	}
	if term, _ := f.GetUint64(keyCurrentTerm); term != 1 {
		t.Fatalf("term %d after the halt, want 1", term)
	}
}
