package kv

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/logging"
	"github.com/cohortkv/kv/internal/storage"
)

// The state machine's tests run without Raft: logs are built by hand.

type fsmTestEngine struct {
	name string
	open func(t *testing.T) storage.Engine
}

var fsmTestEngines = []fsmTestEngine{
	{"memory", func(t *testing.T) storage.Engine {
		e := storage.NewMemory()
		t.Cleanup(func() { e.Close() })
		return e
	}},
	{"bolt", func(t *testing.T) storage.Engine {
		e, err := storage.OpenBolt(filepath.Join(t.TempDir(), "data.db"), storage.BoltOptions{NoSync: true})
		if err != nil {
			t.Fatalf("open bolt: %v", err)
		}
		t.Cleanup(func() { e.Close() })
		return e
	}},
}

// forEachFSMEngine runs fn once per Engine implementation.
func forEachFSMEngine(t *testing.T, fn func(t *testing.T, open func(t *testing.T) storage.Engine)) {
	t.Helper()
	for _, e := range fsmTestEngines {
		t.Run(e.name, func(t *testing.T) { fn(t, e.open) })
	}
}

// countingEngine counts the Update calls of the engine it wraps and can make
// the first failUpdates of them fail.
type countingEngine struct {
	storage.Engine
	updates     []uint64 // index of every Update call that reached the engine
	failUpdates int
	calls       atomic.Int32
}

var errFSMTestDisk = errors.New("disk on fire")

func (e *countingEngine) Update(index uint64, fn func(tx storage.WriteTx) error) error {
	e.calls.Add(1)
	if e.failUpdates > 0 {
		e.failUpdates--
		return errFSMTestDisk
	}
	e.updates = append(e.updates, index)
	return e.Engine.Update(index, fn)
}

func newTestFSM(t *testing.T, eng storage.Engine) *fsm {
	t.Helper()
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	return newFSM(eng, logging.Discard(), stop, func(error) {}, WatchHistory{})
}

func setOp(k, v string) Op { return OpSet(k, []byte(v)) }
func delOp(k string) Op    { return OpDelete(k) }

// mustEncodeCommand encodes ops as one command without a session.
func mustEncodeCommand(t testing.TB, ops ...Op) []byte {
	t.Helper()
	if len(ops) == 0 {
		return encodeEntry(0)
	}
	return encodeEntry(0, []command{{kind: cmdTxn, then: ops}})
}

func cmdLog(t testing.TB, index uint64, ops ...Op) *raft.Log {
	t.Helper()
	return &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: mustEncodeCommand(t, ops...)}
}

func configLog(index uint64) *raft.Log {
	return &raft.Log{Index: index, Term: 1, Type: raft.LogConfiguration, Data: []byte("not a command")}
}

type fsmPair struct {
	key, value  string
	create, mod uint64
}

func (p fsmPair) String() string {
	return fmt.Sprintf("%q=%q@%d/%d", p.key, p.value, p.create, p.mod)
}

// fsmDump returns every key of eng with its decoded record.
func fsmDump(t *testing.T, eng storage.Engine) []fsmPair {
	t.Helper()
	var out []fsmPair
	err := eng.View(func(tx storage.ReadTx) error {
		var derr error
		err := tx.Scan(nil, func(k, v []byte) bool {
			if isSysKey(k) {
				return true // the session table
			}
			r, err := decodeRecord(v)
			if err != nil {
				derr = fmt.Errorf("key %q: %w", k, err)
				return false
			}
			out = append(out, fsmPair{string(k), string(r.value), r.create, r.mod})
			return true
		})
		if err != nil {
			return err
		}
		return derr
	})
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	return out
}

func checkDump(t *testing.T, eng storage.Engine, want ...fsmPair) {
	t.Helper()
	got := fsmDump(t, eng)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("data:\n got %v\nwant %v", got, want)
	}
}

func checkApplied(t *testing.T, eng storage.Engine, want uint64) {
	t.Helper()
	if got := eng.AppliedIndex(); got != want {
		t.Errorf("AppliedIndex = %d, want %d", got, want)
	}
}

// checkNilResponses checks that every response but those of except says
// the entry applied: nil (no commands), or a result per command, each OK.
func checkNilResponses(t *testing.T, resp []any, n int, except ...int) {
	t.Helper()
	if len(resp) != n {
		t.Fatalf("%d responses for %d logs", len(resp), n)
	}
	skip := map[int]bool{}
	for _, i := range except {
		skip[i] = true
	}
	for i, r := range resp {
		if skip[i] || r == nil {
			continue
		}
		res, ok := r.([]cmdResult)
		if !ok {
			t.Errorf("response %d = %v, want results", i, r)
			continue
		}
		for j, c := range res {
			if c.status != resOK {
				t.Errorf("response %d, command %d: %+v, want OK", i, j, c)
			}
		}
	}
}

func TestFSMApplyBatchOrderOneTransaction(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := &countingEngine{Engine: open(t)}
		f := newTestFSM(t, eng)
		logs := []*raft.Log{
			cmdLog(t, 1, setOp("gone", "1"), setOp("kept", "1")),
			cmdLog(t, 2, delOp("gone"), setOp("back", "x")),
			cmdLog(t, 3, delOp("back"), setOp("back", "y")),
			cmdLog(t, 4, setOp("same", "a"), delOp("same")),
			cmdLog(t, 5, setOp("twice", "a"), setOp("twice", "b"), delOp("never-existed")),
		}
		resp := f.ApplyBatch(logs)
		checkNilResponses(t, resp, len(logs))
		if fmt.Sprint(eng.updates) != "[5]" {
			t.Errorf("engine Update calls %v, want one at index 5", eng.updates)
		}
		checkApplied(t, eng, 5)
		checkDump(t, eng,
			fsmPair{"back", "y", 3, 3},
			fsmPair{"kept", "1", 1, 1},
			fsmPair{"twice", "b", 5, 5},
		)
	})
}

func TestFSMApplyBatchConfigurationLast(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := &countingEngine{Engine: open(t)}
		f := newTestFSM(t, eng)
		resp := f.ApplyBatch([]*raft.Log{cmdLog(t, 1, setOp("k", "v")), configLog(2)})
		checkNilResponses(t, resp, 2)
		checkApplied(t, eng, 2)
		checkDump(t, eng, fsmPair{"k", "v", 1, 1})

		// A batch of nothing but a configuration entry.
		resp = f.ApplyBatch([]*raft.Log{configLog(3)})
		checkNilResponses(t, resp, 1)
		checkApplied(t, eng, 3)
		checkDump(t, eng, fsmPair{"k", "v", 1, 1})
		if fmt.Sprint(eng.updates) != "[2 3]" {
			t.Errorf("engine Update calls %v", eng.updates)
		}
		// Apply (one log) goes the same way.
		if r := f.Apply(configLog(4)); r != nil {
			t.Errorf("Apply(configuration) = %v", r)
		}
		checkApplied(t, eng, 4)
	})
}

func TestFSMApplyTermMarker(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := open(t)
		f := newTestFSM(t, eng)
		f.ApplyBatch([]*raft.Log{cmdLog(t, 1, setOp("k", "v"))})
		if r := f.Apply(cmdLog(t, 2)); r != nil {
			t.Errorf("Apply(term marker) = %v", r)
		}
		checkApplied(t, eng, 2)
		checkDump(t, eng, fsmPair{"k", "v", 1, 1})
		// An empty batch changes nothing.
		if resp := f.ApplyBatch(nil); len(resp) != 0 {
			t.Errorf("ApplyBatch(nil) = %v", resp)
		}
		checkApplied(t, eng, 2)
	})
}

func TestFSMApplyRevisions(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := open(t)
		f := newTestFSM(t, eng)
		step := func(want fsmPair, logs ...*raft.Log) {
			t.Helper()
			checkNilResponses(t, f.ApplyBatch(logs), len(logs))
			var got []fsmPair
			for _, p := range fsmDump(t, eng) {
				if p.key == "k" {
					got = append(got, p)
				}
			}
			if want.key == "" {
				if len(got) != 0 {
					t.Errorf("after index %d: k = %v, want absent", logs[len(logs)-1].Index, got)
				}
				return
			}
			if len(got) != 1 || got[0] != want {
				t.Errorf("after index %d: k = %v, want %v", logs[len(logs)-1].Index, got, want)
			}
		}
		step(fsmPair{"k", "v1", 1, 1}, cmdLog(t, 1, setOp("k", "v1")))
		step(fsmPair{"k", "v2", 1, 2}, cmdLog(t, 2, setOp("k", "v2")))
		// Other keys and term markers leave k's revisions alone.
		step(fsmPair{"k", "v2", 1, 2}, cmdLog(t, 3, setOp("other", "x")), cmdLog(t, 4))
		step(fsmPair{"k", "v3", 1, 6}, cmdLog(t, 5, setOp("other", "y")), cmdLog(t, 6, setOp("k", "v3")), configLog(7))
		// A delete ends the key's life; the next set creates it anew.
		step(fsmPair{}, cmdLog(t, 8, delOp("k")))
		step(fsmPair{"k", "v4", 9, 10}, cmdLog(t, 9, setOp("k", "v4")), cmdLog(t, 10, setOp("k", "v5"), setOp("k", "v4")))
		checkDump(t, eng, fsmPair{"k", "v4", 9, 10}, fsmPair{"other", "y", 3, 5})
	})
}

func TestFSMApplySkipsReplayedEntries(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := &countingEngine{Engine: open(t)}
		f := newTestFSM(t, eng)
		checkNilResponses(t, f.ApplyBatch([]*raft.Log{cmdLog(t, 4, setOp("j", "0")), cmdLog(t, 5, setOp("k", "a"))}), 2)

		// The whole batch is at or below the applied index.
		ch := f.appliedChan()
		resp := f.ApplyBatch([]*raft.Log{cmdLog(t, 5, setOp("k", "b"))})
		checkNilResponses(t, resp, 1)
		resp = f.ApplyBatch([]*raft.Log{cmdLog(t, 3, setOp("k", "c")), cmdLog(t, 4, delOp("k"))})
		checkNilResponses(t, resp, 2)
		checkApplied(t, eng, 5)
		checkDump(t, eng, fsmPair{"j", "0", 4, 4}, fsmPair{"k", "a", 5, 5})
		if fmt.Sprint(eng.updates) != "[5]" {
			t.Errorf("engine Update calls %v: a replayed batch must not write", eng.updates)
		}
		select {
		case <-ch:
			t.Error("appliedChan closed by a batch that applied nothing")
		default:
		}

		// A batch that straddles the applied index applies only the new part.
		resp = f.ApplyBatch([]*raft.Log{
			cmdLog(t, 4, delOp("j")),
			cmdLog(t, 5, setOp("k", "b")),
			cmdLog(t, 6, setOp("m", "z")),
		})
		checkNilResponses(t, resp, 3)
		checkApplied(t, eng, 6)
		checkDump(t, eng, fsmPair{"j", "0", 4, 4}, fsmPair{"k", "a", 5, 5}, fsmPair{"m", "z", 6, 6})
	})
}

func TestFSMApplyUndecodableEntry(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := open(t)
		f := newTestFSM(t, eng)
		good := mustEncodeCommand(t, setOp("b", "2"))
		logs := []*raft.Log{
			cmdLog(t, 1, setOp("a", "1")),
			{Index: 2, Term: 1, Type: raft.LogCommand, Data: []byte{cmdVersion, 0xff, 0x00}},
			{Index: 3, Term: 1, Type: raft.LogCommand, Data: nil},
			{Index: 4, Term: 1, Type: raft.LogCommand, Data: good[:len(good)-2]},
			{Index: 5, Term: 1, Type: raft.LogCommand, Data: good},
			{Index: 6, Term: 1, Type: raft.LogCommand, Data: mustEncodeCommand(t, setOp("c", "3"), Op{kind: 9, key: "d"})},
		}
		resp := f.ApplyBatch(logs)
		checkNilResponses(t, resp, len(logs), 1, 2, 3, 5)
		for _, i := range []int{1, 2, 3, 5} {
			if err, ok := resp[i].(error); !ok || err == nil {
				t.Errorf("response %d (index %d) = %v, want an error", i, logs[i].Index, resp[i])
			}
		}
		checkApplied(t, eng, 6)
		// A command that fails to decode applies none of its operations.
		checkDump(t, eng, fsmPair{"a", "1", 1, 1}, fsmPair{"b", "2", 5, 5})

		if r, ok := f.Apply(&raft.Log{Index: 7, Type: raft.LogCommand, Data: []byte{cmdVersion, 0xc1}}).(error); !ok || r == nil {
			t.Errorf("Apply(garbage) = %v, want an error", r)
		}
		checkApplied(t, eng, 7)
	})
}

// An entry in a format this version does not read was written by a newer
// version: the member halts before it, instead of skipping it as the
// members of the newer version would not.
func TestFSMNewerFormatHalts(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := open(t)
		stop := make(chan struct{})
		t.Cleanup(func() { close(stop) })
		var halted error
		f := newFSM(eng, logging.Discard(), stop, func(err error) { halted = err }, WatchHistory{})
		resp := f.ApplyBatch([]*raft.Log{
			cmdLog(t, 1, setOp("a", "1")),
			{Index: 2, Term: 1, Type: raft.LogCommand, Data: []byte{cmdVersion4 + 1, 0, 0}},
			cmdLog(t, 3, setOp("b", "2")),
		})
		if !errors.Is(halted, ErrNewerFormat) {
			t.Fatalf("halt error %v, want ErrNewerFormat", halted)
		}
		for i, r := range resp {
			if err, ok := r.(error); !ok || !errors.Is(err, ErrClosed) {
				t.Errorf("response %d = %v, want ErrClosed (not applied here)", i, r)
			}
		}
		checkApplied(t, eng, 0)
	})
}

// A damaged restore entry is damage, the same on every member: skipped,
// not taken for an entry of a newer version.
func TestFSMDamagedRestoreEntryIsSkipped(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := open(t)
		stop := make(chan struct{})
		t.Cleanup(func() { close(stop) })
		var halted error
		f := newFSM(eng, logging.Discard(), stop, func(err error) { halted = err }, WatchHistory{})
		resp := f.ApplyBatch([]*raft.Log{
			{Index: 1, Term: 1, Type: raft.LogCommand, Data: []byte{entryRestore, 0xff}},
			cmdLog(t, 2, setOp("a", "1")),
		})
		if halted != nil {
			t.Fatalf("halted: %v", halted)
		}
		if err, ok := resp[0].(error); !ok || err == nil {
			t.Errorf("response to the damaged restore entry = %v, want an error", resp[0])
		}
		checkApplied(t, eng, 2)
	})
}

func TestFSMAppliedChan(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		f := newTestFSM(t, open(t))
		ch := f.appliedChan()
		select {
		case <-ch:
			t.Fatal("appliedChan closed before any apply")
		default:
		}
		f.ApplyBatch([]*raft.Log{cmdLog(t, 1, setOp("k", "v"))})
		select {
		case <-ch:
		default:
			t.Fatal("appliedChan not closed after an apply")
		}
		next := f.appliedChan()
		if next == ch {
			t.Fatal("appliedChan returned the closed channel again")
		}
		select {
		case <-next:
			t.Fatal("new appliedChan already closed")
		default:
		}
		// A configuration entry or a term marker is an apply too.
		f.Apply(configLog(2))
		select {
		case <-next:
		default:
			t.Fatal("appliedChan not closed after a configuration entry")
		}
	})
}

func TestFSMApplyRetriesFailedCommit(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := &countingEngine{Engine: open(t), failUpdates: 2}
		f := newTestFSM(t, eng)
		resp := f.ApplyBatch([]*raft.Log{cmdLog(t, 1, setOp("k", "v"))})
		checkNilResponses(t, resp, 1)
		if n := eng.calls.Load(); n != 3 {
			t.Errorf("%d Update calls, want 3 (two failures, then success)", n)
		}
		checkApplied(t, eng, 1)
		checkDump(t, eng, fsmPair{"k", "v", 1, 1})
	})
}

func TestFSMApplyStopsRetryingOnShutdown(t *testing.T) {
	eng := &countingEngine{Engine: storage.NewMemory(), failUpdates: 1 << 30}
	stop := make(chan struct{})
	close(stop)
	f := newFSM(eng, logging.Discard(), stop, func(error) {}, WatchHistory{})
	resp := f.ApplyBatch([]*raft.Log{cmdLog(t, 1, setOp("k", "v")), configLog(2)})
	for i, r := range resp {
		if r != ErrClosed {
			t.Errorf("response %d = %v, want ErrClosed", i, r)
		}
	}
	if eng.AppliedIndex() != 0 {
		t.Errorf("AppliedIndex = %d", eng.AppliedIndex())
	}
}

// fsmTestSink is a raft.SnapshotSink over a buffer.
type fsmTestSink struct {
	bytes.Buffer
	closed, canceled int
	writeErr         error
}

func (s *fsmTestSink) ID() string { return "test-snapshot" }

func (s *fsmTestSink) Cancel() error {
	s.canceled++
	return nil
}

func (s *fsmTestSink) Close() error {
	s.closed++
	return nil
}

func (s *fsmTestSink) Write(p []byte) (int, error) {
	if s.writeErr != nil {
		return 0, s.writeErr
	}
	return s.Buffer.Write(p)
}

var _ raft.SnapshotSink = (*fsmTestSink)(nil)

// fsmTestReadCloser records whether Restore closed it.
type fsmTestReadCloser struct {
	io.Reader
	closed bool
}

func (r *fsmTestReadCloser) Close() error {
	r.closed = true
	return nil
}

// persist takes a snapshot of f and persists it into a buffer.
func persist(t *testing.T, f *fsm) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	defer snap.Release()
	var sink fsmTestSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	if sink.closed != 1 || sink.canceled != 0 {
		t.Errorf("sink closed %d times, canceled %d times; want 1 and 0", sink.closed, sink.canceled)
	}
	return sink.Bytes()
}

func restore(f *fsm, b []byte) (*fsmTestReadCloser, error) {
	rc := &fsmTestReadCloser{Reader: bytes.NewReader(b)}
	return rc, f.Restore(rc)
}

func TestFSMSnapshotRestore(t *testing.T) {
	for _, src := range fsmTestEngines {
		for _, dst := range fsmTestEngines {
			t.Run(src.name+" to "+dst.name, func(t *testing.T) {
				from := newTestFSM(t, src.open(t))
				from.ApplyBatch([]*raft.Log{
					cmdLog(t, 1, setOp("a", "1"), setOp("b", "2"), setOp("\x00bin", "\xff")),
					cmdLog(t, 2, setOp("a", "1'"), delOp("b"), setOp("empty", "")),
					configLog(3),
				})
				want := fsmDump(t, from.eng)

				// The snapshot is a point-in-time view: later writes are
				// not in it.
				snap, err := from.Snapshot()
				if err != nil {
					t.Fatal(err)
				}
				from.ApplyBatch([]*raft.Log{cmdLog(t, 4, setOp("a", "later"), setOp("z", "later"))})
				var sink fsmTestSink
				if err := snap.Persist(&sink); err != nil {
					t.Fatalf("Persist: %v", err)
				}
				snap.Release()
				snap.Release() // idempotent
				if sink.closed != 1 || sink.canceled != 0 {
					t.Errorf("sink closed %d times, canceled %d times", sink.closed, sink.canceled)
				}

				to := newTestFSM(t, dst.open(t))
				to.ApplyBatch([]*raft.Log{cmdLog(t, 1, setOp("stale", "x"))})
				ch := to.appliedChan()
				rc, err := restore(to, sink.Bytes())
				if err != nil {
					t.Fatalf("Restore: %v", err)
				}
				if !rc.closed {
					t.Error("Restore did not close its reader")
				}
				select {
				case <-ch:
				default:
					t.Error("appliedChan not closed by Restore")
				}
				checkApplied(t, to.eng, 3)
				checkDump(t, to.eng, want...)

				// The restored machine goes on from there.
				checkNilResponses(t, to.ApplyBatch([]*raft.Log{cmdLog(t, 3, setOp("a", "skipped")), cmdLog(t, 4, setOp("a", "2"))}), 2)
				if got := fsmDump(t, to.eng)[1]; got != (fsmPair{"a", "2", 1, 4}) {
					t.Errorf("after restore and apply: %v", got)
				}
			})
		}
	}
}

func TestFSMRestoreCorruptSnapshot(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		src := newTestFSM(t, open(t))
		src.ApplyBatch([]*raft.Log{cmdLog(t, 10, setOp("new", "data"), setOp("more", strings.Repeat("m", 100)))})
		good := persist(t, src)

		dst := newTestFSM(t, open(t))
		dst.ApplyBatch([]*raft.Log{cmdLog(t, 1, setOp("old", "data"))})
		wantData := fsmDump(t, dst.eng)

		flipped := bytes.Clone(good)
		flipped[len(flipped)/2] ^= 0x40
		for _, tc := range []struct {
			name string
			b    []byte
		}{
			{"empty", nil},
			{"byte flipped", flipped},
			{"truncated", good[:len(good)-5]},
			{"header only", good[:17]},
			{"not a snapshot", []byte("definitely not a snapshot stream")},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ch := dst.appliedChan()
				rc, err := restore(dst, tc.b)
				if err == nil {
					t.Fatal("Restore of a corrupt snapshot succeeded")
				}
				if !rc.closed {
					t.Error("Restore did not close its reader")
				}
				checkApplied(t, dst.eng, 1)
				checkDump(t, dst.eng, wantData...)
				select {
				case <-ch:
					t.Error("a failed Restore closed appliedChan")
				default:
				}
			})
		}
		// The good one still works afterwards.
		if _, err := restore(dst, good); err != nil {
			t.Fatalf("Restore: %v", err)
		}
		checkApplied(t, dst.eng, 10)
		checkDump(t, dst.eng, fsmDump(t, src.eng)...)
	})
}

func TestFSMPersistFailureCancelsSink(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		f := newTestFSM(t, open(t))
		f.ApplyBatch([]*raft.Log{cmdLog(t, 1, setOp("k", "v"))})
		snap, err := f.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		defer snap.Release()
		sink := &fsmTestSink{writeErr: errFSMTestDisk}
		if err := snap.Persist(sink); !errors.Is(err, errFSMTestDisk) {
			t.Errorf("Persist into a failing sink = %v, want %v", err, errFSMTestDisk)
		}
		if sink.canceled != 1 || sink.closed != 0 {
			t.Errorf("sink canceled %d times, closed %d times; want 1 and 0", sink.canceled, sink.closed)
		}
	})
}

func TestFSMApplyVersions(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := open(t)
		f := newTestFSM(t, eng)
		version := func(want uint64) {
			t.Helper()
			err := eng.View(func(tx storage.ReadTx) error {
				b, ok := tx.Get([]byte("k"))
				if !ok {
					if want != 0 {
						t.Errorf("k absent, want version %d", want)
					}
					return nil
				}
				r, err := decodeRecord(b)
				if err != nil || r.version != want {
					t.Errorf("k = %+v, %v; want version %d", r, err, want)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		f.ApplyBatch([]*raft.Log{cmdLog(t, 1, setOp("k", "1"))})
		version(1)
		f.ApplyBatch([]*raft.Log{cmdLog(t, 2, setOp("k", "2"), setOp("k", "3")), cmdLog(t, 3, setOp("other", "x"))})
		version(3)
		f.ApplyBatch([]*raft.Log{cmdLog(t, 4, delOp("k"))})
		version(0)
		f.ApplyBatch([]*raft.Log{cmdLog(t, 5, setOp("k", "again"))})
		version(1)
		// A format 1 record counts on from the version it decodes with.
		if err := eng.Update(6, func(tx storage.WriteTx) error { return tx.Put([]byte("k"), record1(2, 5, "old")) }); err != nil {
			t.Fatal(err)
		}
		version(2)
		f.ApplyBatch([]*raft.Log{cmdLog(t, 7, setOp("k", "new"))})
		version(3)
		checkDump(t, eng, fsmPair{"k", "new", 2, 7}, fsmPair{"other", "x", 3, 3})
	})
}
