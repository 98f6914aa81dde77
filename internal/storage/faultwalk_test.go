package storage

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// walkModel is what a LogStore must hold after a fault walk's workload:
// the entries and stable values acknowledged, and what a failed call may
// have left instead.
type walkModel struct {
	logs   map[uint64]*raft.Log // acknowledged and not deleted since
	stable map[string][][]byte  // the values a key may hold (nil: unset)
}

// walkRun is one run of the workload under one fault.
type walkRun struct {
	t      *testing.T
	fs     *faultSet
	path   string
	s      *LogStore
	m      walkModel
	next   uint64 // the next index to store
	first  uint64 // the first index not compacted
	term   uint64
	errs   int // calls that returned an error
	enospc bool
}

// call runs one call of the workload, turning a panic into a test failure,
// and checks that an error caused by an injected ENOSPC wraps ErrDiskFull.
func (w *walkRun) call(what string, fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			w.t.Fatalf("%s panicked: %v", what, r)
		}
	}()
	err = fn()
	if err != nil {
		w.errs++
		if errors.Is(err, syscall.ENOSPC) && !errors.Is(err, ErrDiskFull) {
			w.t.Fatalf("%s: %v: ENOSPC without ErrDiskFull", what, err)
		}
	}
	return err
}

// retry runs fn until it succeeds, at most 3 times, like raft sending
// again what failed. It stops at a power loss.
func (w *walkRun) retry(what string, fn func() error) bool {
	for range 3 {
		if w.crashed() || w.s == nil {
			return false
		}
		if w.call(what, fn) == nil {
			return true
		}
	}
	w.t.Fatalf("%s fails three times in a row once the fault is gone", what)
	return false
}

func (w *walkRun) crashed() bool {
	w.fs.mu.Lock()
	defer w.fs.mu.Unlock()
	return w.fs.crashed
}

func (w *walkRun) store(n int, typ raft.LogType, data []byte) {
	logs := make([]*raft.Log, n)
	for i := range logs {
		logs[i] = &raft.Log{Index: w.next + uint64(i), Term: w.term, Type: typ, Data: data,
			AppendedAt: time.Unix(1700000000, int64(w.next)+int64(i))}
	}
	if w.retry(fmt.Sprintf("StoreLogs(%d..%d)", w.next, w.next+uint64(n)-1), func() error { return w.s.StoreLogs(logs) }) {
		for _, l := range logs {
			w.m.logs[l.Index] = l
		}
		w.next += uint64(n)
	}
}

func (w *walkRun) set(key string, val []byte) {
	if _, ok := w.m.stable[key]; !ok {
		w.m.stable[key] = [][]byte{nil}
	}
	w.m.stable[key] = append(w.m.stable[key], val)
	if w.retry("Set("+key+")", func() error { return w.s.Set([]byte(key), val) }) {
		w.m.stable[key] = [][]byte{val}
	}
}

func (w *walkRun) deleteRange(lo, hi uint64) bool {
	ok := w.retry(fmt.Sprintf("DeleteRange(%d, %d)", lo, hi), func() error { return w.s.DeleteRange(lo, hi) })
	// Failed or not, the entries are no longer required.
	for i := lo; i <= hi; i++ {
		delete(w.m.logs, i)
	}
	return ok
}

func (w *walkRun) reopen() {
	if w.s != nil {
		_ = w.call("Close", w.s.Close) // an error leaves the tail to replay
		w.s = nil
	}
	var last error
	for range 3 {
		if w.crashed() {
			return
		}
		var s *LogStore
		if last = w.call("OpenLogStore", func() (err error) {
			s, err = OpenLogStore(w.path, LogStoreOptions{})
			return err
		}); last == nil {
			w.s = s
			return
		}
	}
	w.t.Fatalf("OpenLogStore fails three times in a row once the fault is gone: %v", last)
}

// workload stores, sets, compacts, truncates a suffix, checkpoints and
// reopens, through a small tail so that it fills several times.
func (w *walkRun) workload() {
	data := bytes.Repeat([]byte{0xAB}, 2000)
	w.reopen()
	for r := range 6 {
		w.store(5, raft.LogCommand, data)
		w.store(1, raft.LogNoop, nil)
		w.set("CurrentTerm", bigEndian(w.term))
		w.set("LastVoteCand", fmt.Appendf(nil, "node-%d", r))
		w.set("other", fmt.Appendf(nil, "v-%d", r))
		switch r {
		case 1, 4:
			if w.s != nil {
				w.retry("Checkpoint", w.s.Checkpoint)
			}
		case 2:
			if w.deleteRange(w.first, w.first+4) {
				w.first += 5
			}
		case 3:
			// A new leader's suffix replaces ours.
			if w.deleteRange(w.next-3, w.next-1) {
				w.next -= 3
				w.term++
			}
		case 5:
			w.reopen()
		}
	}
	w.store(3, raft.LogConfiguration, []byte("conf"))
}

func bigEndian(v uint64) []byte {
	return []byte{byte(v >> 56), byte(v >> 48), byte(v >> 40), byte(v >> 32), byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
}

// check opens the files a power loss left and compares them with the
// model; the store must then take writes.
func (w *walkRun) check() {
	t := w.t
	s, err := OpenLogStore(w.path, LogStoreOptions{})
	if err != nil {
		t.Fatalf("OpenLogStore after the fault and a power loss: %v", err)
	}
	defer s.Close()
	for idx, want := range w.m.logs {
		var got raft.Log
		if err := s.GetLog(idx, &got); err != nil {
			t.Fatalf("acknowledged entry %d: %v", idx, err)
		}
		if got.Term != want.Term || got.Type != want.Type || !bytes.Equal(got.Data, want.Data) {
			t.Fatalf("entry %d: term %d type %v, want term %d type %v", idx, got.Term, got.Type, want.Term, want.Type)
		}
	}
	for key, vals := range w.m.stable {
		got, err := s.Get([]byte(key))
		if errors.Is(err, ErrStableKeyNotFound) {
			got, err = nil, nil
		}
		if err != nil {
			t.Fatalf("Get(%s): %v", key, err)
		}
		ok := false
		for _, v := range vals {
			ok = ok || bytes.Equal(v, got)
		}
		if !ok {
			t.Fatalf("%s = %q, want one of %q", key, got, vals)
		}
	}
	first, _ := s.FirstIndex()
	if first > 0 {
		if err := s.Verify(first); err != nil {
			t.Fatal(err)
		}
	}
	last, _ := s.LastIndex()
	if err := s.StoreLogs([]*raft.Log{{Index: last + 1, Term: w.term + 1, Type: raft.LogNoop}}); err != nil {
		t.Fatalf("StoreLogs after recovery: %v", err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), w.term+1); err != nil {
		t.Fatalf("SetUint64 after recovery: %v", err)
	}
}

// runWalk runs the workload with the nth operation of op failing with err
// (a power loss for nil), then a power loss, and checks what is left. It
// returns the fault set (for its counts) and whether the fault fired.
func runWalk(t *testing.T, op faultOp, n int, err error) (*faultSet, bool) {
	t.Helper()
	w := &walkRun{t: t, path: filepath.Join(t.TempDir(), "raft.db"), next: 1, first: 1, term: 1,
		m: walkModel{logs: map[uint64]*raft.Log{}, stable: map[string][][]byte{}}}
	w.fs = newFaultSet(op, n, err)
	faults.Store(w.fs)
	defer faults.Store(nil)
	w.workload()
	fired := w.fs.fired
	// Whatever happened, the power goes.
	w.fs.crashNow()
	if w.s != nil {
		_ = w.s.Close()
	}
	faults.Store(nil)
	w.check()
	return w.fs, fired
}

// TestLogStore_FaultWalk fails, in turn, the Nth operation of each kind the
// log store does (writes, syncs, renames, truncations, reads, creations,
// removals, bbolt commits) with EIO, with ENOSPC, and as a power loss, in
// a workload of StoreLogs, Set, DeleteRange, checkpoints and reopens. No
// call panics; ENOSPC comes back as ErrDiskFull; the store keeps working
// once the fault is gone; and after a power loss at the end, every
// acknowledged entry and value is there. COHORT_FAULT_WALK_DEEP=1 walks
// every operation of each kind instead of the first few.
func TestLogStore_FaultWalk(t *testing.T) {
	smallTail(t, 32<<10, 4<<10)
	maxN := 12
	if os.Getenv("COHORT_FAULT_WALK_DEEP") == "1" {
		maxN = 1 << 30
	}
	counter, _ := runWalk(t, 0, 0, nil)
	start := time.Now()
	runs := 0
	for op := range numFaultOps {
		total := counter.counts[op]
		for _, mode := range []struct {
			name string
			err  error
		}{{"EIO", syscall.EIO}, {"ENOSPC", syscall.ENOSPC}, {"power loss", nil}} {
			if mode.err == syscall.ENOSPC && (op == opRead || op == opRemove) {
				continue
			}
			for n := 1; n <= min(total, maxN); n++ {
				t.Run(fmt.Sprintf("%v/%s/%d", op, mode.name, n), func(t *testing.T) {
					if _, fired := runWalk(t, op, n, mode.err); !fired {
						t.Fatalf("the fault did not fire (%d operations counted)", total)
					}
				})
				runs++
			}
		}
	}
	t.Logf("%d runs in %v; operations in the workload: %v", runs, time.Since(start).Round(time.Millisecond), counter.counts)
}
