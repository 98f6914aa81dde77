package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The conformance suite, in the manner of testing/fstest.TestFS: every Engine
// implementation runs testEngine with a function that opens a fresh, empty
// engine (and arranges for its Close at the end of the test).

func TestBolt_Conformance(t *testing.T) {
	testEngine(t, func(t *testing.T) Engine {
		e, err := OpenBolt(filepath.Join(t.TempDir(), "data.db"), BoltOptions{NoSync: false})
		if err != nil {
			t.Fatalf("OpenBolt: %v", err)
		}
		t.Cleanup(func() { e.Close() })
		return e
	})
}

func TestMemory_Conformance(t *testing.T) {
	testEngine(t, func(t *testing.T) Engine {
		e := NewMemory()
		t.Cleanup(func() { e.Close() })
		return e
	})
}

var errBoom = errors.New("boom")

// kv is one pair, copied out of a transaction.
type kv struct{ k, v string }

func (p kv) String() string { return fmt.Sprintf("%q=%q", p.k, p.v) }

// dump returns every pair of e in Scan order.
func dump(t testing.TB, e Engine) []kv {
	t.Helper()
	var out []kv
	err := e.View(func(tx ReadTx) error {
		out = scanAll(t, tx, nil)
		return nil
	})
	if err != nil {
		t.Fatalf("View: %v", err)
	}
	return out
}

func scanAll(t testing.TB, tx ReadTx, from []byte) []kv {
	t.Helper()
	var out []kv
	if err := tx.Scan(from, func(k, v []byte) bool {
		out = append(out, kv{string(k), string(v)})
		return true
	}); err != nil {
		t.Fatalf("Scan: %v", err)
	}
	return out
}

func mustUpdate(t testing.TB, e Engine, index uint64, fn func(tx WriteTx) error) {
	t.Helper()
	if err := e.Update(index, fn); err != nil {
		t.Fatalf("Update(%d): %v", index, err)
	}
}

// putAll writes pairs in one Update at index.
func putAll(t testing.TB, e Engine, index uint64, pairs []kv) {
	t.Helper()
	mustUpdate(t, e, index, func(tx WriteTx) error {
		for _, p := range pairs {
			if err := tx.Put([]byte(p.k), []byte(p.v)); err != nil {
				return err
			}
		}
		return nil
	})
}

func getString(t testing.TB, tx ReadTx, key string) (string, bool) {
	t.Helper()
	v, ok := tx.Get([]byte(key))
	return string(v), ok
}

func sortedPairs(pairs []kv) []kv {
	out := slices.Clone(pairs)
	sort.Slice(out, func(i, j int) bool { return out[i].k < out[j].k }) // string < is bytewise
	return out
}

func diffPairs(t testing.TB, what string, got, want []kv) {
	t.Helper()
	if slices.Equal(got, want) {
		return
	}
	n := min(len(got), len(want))
	for i := range n {
		if got[i] != want[i] {
			t.Fatalf("%s: pair %d is %v, want %v (%d pairs, want %d)", what, i, got[i], want[i], len(got), len(want))
		}
	}
	t.Fatalf("%s: %d pairs, want %d", what, len(got), len(want))
}

// streamOf returns the snapshot stream of pairs at index, as written by a
// Memory engine.
func streamOf(t testing.TB, index uint64, pairs []kv) []byte {
	t.Helper()
	m := NewMemory()
	defer m.Close()
	putAll(t, m, index, pairs)
	return streamOfEngine(t, m)
}

func streamOfEngine(t testing.TB, e Engine) []byte {
	t.Helper()
	s, err := e.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	defer s.Release()
	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, s.AppliedIndex(), s); err != nil {
		t.Fatalf("WriteSnapshot: %v", err)
	}
	return buf.Bytes()
}

// withCRC appends the CRC-32C trailer of b, so that a hand-made stream fails
// for the reason under test rather than its checksum.
func withCRC(b []byte) []byte {
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func snapHeader(index uint64) []byte {
	b := append([]byte(snapMagic), snapVersion)
	return binary.BigEndian.AppendUint64(b, index)
}

// randomPairs returns n pairs with distinct, non-empty binary keys (including
// 0x00 and 0xff bytes) and values of which some are empty.
func randomPairs(seed uint64, n int) []kv {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	seen := make(map[string]bool, n)
	out := make([]kv, 0, n)
	for len(out) < n {
		k := make([]byte, 1+r.IntN(24))
		for i := range k {
			switch r.IntN(4) {
			case 0:
				k[i] = 0x00
			case 1:
				k[i] = 0xff
			default:
				k[i] = byte(r.Uint32())
			}
		}
		if seen[string(k)] {
			continue
		}
		seen[string(k)] = true
		var v []byte
		if len(out)%7 != 0 {
			v = make([]byte, r.IntN(200))
			for i := range v {
				v[i] = byte(r.Uint32())
			}
		}
		out = append(out, kv{string(k), string(v)})
	}
	return out
}

func testEngine(t *testing.T, open func(t *testing.T) Engine) {
	t.Run("Empty", func(t *testing.T) {
		e := open(t)
		if got := e.AppliedIndex(); got != 0 {
			t.Errorf("AppliedIndex of a new engine = %d, want 0", got)
		}
		err := e.View(func(tx ReadTx) error {
			if v, ok := tx.Get([]byte("a")); ok || v != nil {
				t.Errorf("Get on empty engine = %q, %v", v, ok)
			}
			if got := scanAll(t, tx, nil); len(got) != 0 {
				t.Errorf("Scan on empty engine = %v", got)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("View: %v", err)
		}
		s, err := e.Snapshot()
		if err != nil {
			t.Fatalf("Snapshot: %v", err)
		}
		defer s.Release()
		if got := s.AppliedIndex(); got != 0 {
			t.Errorf("Snapshot.AppliedIndex of a new engine = %d, want 0", got)
		}
		if got := scanAll(t, s, nil); len(got) != 0 {
			t.Errorf("Scan on snapshot of empty engine = %v", got)
		}
	})

	t.Run("RoundTrip", func(t *testing.T) {
		e := open(t)
		putAll(t, e, 1, []kv{{"a", "1"}, {"b", "2"}, {"c", ""}})
		if got := e.AppliedIndex(); got != 1 {
			t.Errorf("AppliedIndex = %d, want 1", got)
		}
		diffPairs(t, "after first Update", dump(t, e), []kv{{"a", "1"}, {"b", "2"}, {"c", ""}})

		mustUpdate(t, e, 2, func(tx WriteTx) error {
			if err := tx.Put([]byte("a"), []byte("one")); err != nil {
				return err
			}
			if err := tx.Delete([]byte("b")); err != nil {
				return err
			}
			return tx.Delete([]byte("absent")) // not an error
		})
		if got := e.AppliedIndex(); got != 2 {
			t.Errorf("AppliedIndex = %d, want 2", got)
		}
		err := e.View(func(tx ReadTx) error {
			if v, ok := getString(t, tx, "a"); !ok || v != "one" {
				t.Errorf("Get(a) = %q, %v; want one, true", v, ok)
			}
			if v, ok := tx.Get([]byte("b")); ok {
				t.Errorf("Get(b) after Delete = %q, true", v)
			}
			if v, ok := tx.Get([]byte("c")); !ok || len(v) != 0 {
				t.Errorf("Get(c) (empty value) = %q, %v; want \"\", true", v, ok)
			}
			if _, ok := tx.Get([]byte("absent")); ok {
				t.Errorf("Get(absent) found")
			}
			return nil
		})
		if err != nil {
			t.Fatalf("View: %v", err)
		}

		// An Update without writes still records its index.
		mustUpdate(t, e, 9, func(WriteTx) error { return nil })
		if got := e.AppliedIndex(); got != 9 {
			t.Errorf("AppliedIndex after empty Update = %d, want 9", got)
		}
		s, err := e.Snapshot()
		if err != nil {
			t.Fatalf("Snapshot: %v", err)
		}
		if got := s.AppliedIndex(); got != 9 {
			t.Errorf("Snapshot.AppliedIndex = %d, want 9", got)
		}
		s.Release()

		// View passes fn's error through.
		if err := e.View(func(ReadTx) error { return errBoom }); !errors.Is(err, errBoom) {
			t.Errorf("View returning errBoom = %v", err)
		}
	})

	t.Run("ViewApplied", func(t *testing.T) {
		e := open(t)
		viewed := func(want uint64, pairs []kv) {
			t.Helper()
			err := e.ViewApplied(func(tx ReadTx, index uint64) error {
				if index != want {
					t.Errorf("ViewApplied index %d, want %d", index, want)
				}
				diffPairs(t, "ViewApplied", scanAll(t, tx, nil), pairs)
				return nil
			})
			if err != nil {
				t.Fatalf("ViewApplied: %v", err)
			}
		}
		viewed(0, nil)
		putAll(t, e, 3, []kv{{"a", "1"}})
		viewed(3, []kv{{"a", "1"}})
		mustUpdate(t, e, 5, func(WriteTx) error { return nil }) // no writes
		viewed(5, []kv{{"a", "1"}})
		if f, ok := e.(interface{ Flush() error }); ok {
			if err := f.Flush(); err != nil {
				t.Fatal(err)
			}
			viewed(5, []kv{{"a", "1"}}) // from the file
			putAll(t, e, 6, []kv{{"b", "2"}})
			viewed(6, []kv{{"a", "1"}, {"b", "2"}})
		} else {
			putAll(t, e, 6, []kv{{"b", "2"}})
		}
		if err := e.Restore(bytes.NewReader(streamOf(t, 9, []kv{{"r", "x"}}))); err != nil {
			t.Fatal(err)
		}
		viewed(9, []kv{{"r", "x"}})
		if err := e.ViewApplied(func(ReadTx, uint64) error { return errBoom }); !errors.Is(err, errBoom) {
			t.Errorf("ViewApplied returning errBoom = %v", err)
		}
		e.Close()
		if err := e.ViewApplied(func(ReadTx, uint64) error { return nil }); !errors.Is(err, ErrClosed) {
			t.Errorf("ViewApplied after Close = %v, want ErrClosed", err)
		}
	})

	t.Run("CallerMayReuseSlicesAfterUpdate", func(t *testing.T) {
		e := open(t)
		k, v := []byte("key"), []byte("value")
		mustUpdate(t, e, 1, func(tx WriteTx) error { return tx.Put(k, v) })
		copy(k, "XXX")
		copy(v, "YYYYY")
		diffPairs(t, "after reusing buffers", dump(t, e), []kv{{"key", "value"}})
	})

	t.Run("ReadYourWrites", func(t *testing.T) {
		e := open(t)
		putAll(t, e, 1, []kv{{"a", "old"}, {"d", "gone"}})
		mustUpdate(t, e, 2, func(tx WriteTx) error {
			if err := tx.Put([]byte("a"), []byte("new")); err != nil {
				return err
			}
			if err := tx.Put([]byte("b"), []byte("added")); err != nil {
				return err
			}
			if err := tx.Delete([]byte("d")); err != nil {
				return err
			}
			if v, ok := getString(t, tx, "a"); !ok || v != "new" {
				t.Errorf("in Update: Get(a) = %q, %v; want new, true", v, ok)
			}
			if v, ok := getString(t, tx, "b"); !ok || v != "added" {
				t.Errorf("in Update: Get(b) = %q, %v; want added, true", v, ok)
			}
			if v, ok := tx.Get([]byte("d")); ok {
				t.Errorf("in Update: Get(d) after Delete = %q, true", v)
			}
			diffPairs(t, "in Update: Scan", scanAll(t, tx, nil), []kv{{"a", "new"}, {"b", "added"}})
			return nil
		})
		diffPairs(t, "after Update", dump(t, e), []kv{{"a", "new"}, {"b", "added"}})
	})

	// An empty value is a value: present, for Get and Scan, inside the
	// transaction that writes it and after. Both spellings of empty are used.
	t.Run("EmptyValues", func(t *testing.T) {
		e := open(t)
		mustUpdate(t, e, 1, func(tx WriteTx) error {
			if err := tx.Put([]byte("empty"), []byte{}); err != nil {
				return err
			}
			if err := tx.Put([]byte("nil"), nil); err != nil {
				return err
			}
			for _, k := range []string{"empty", "nil"} {
				if v, ok := tx.Get([]byte(k)); !ok || len(v) != 0 {
					t.Errorf("in Update: Get(%q) after Put(%q, empty) = %q, %v; want \"\", true", k, k, v, ok)
				}
			}
			diffPairs(t, "in Update: Scan", scanAll(t, tx, nil), []kv{{"empty", ""}, {"nil", ""}})
			return nil
		})
		err := e.View(func(tx ReadTx) error {
			for _, k := range []string{"empty", "nil"} {
				if v, ok := tx.Get([]byte(k)); !ok || len(v) != 0 {
					t.Errorf("Get(%q) = %q, %v; want \"\", true", k, v, ok)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("View: %v", err)
		}
		diffPairs(t, "after Update", dump(t, e), []kv{{"empty", ""}, {"nil", ""}})
	})

	t.Run("ScanOrder", func(t *testing.T) {
		e := open(t)
		keys := []string{
			"b", "a", "ab", "a\x00", "\x00", "\x00\x00", "\xff", "\xff\xff", "\x7f", "\x80",
			"B", "ba", "a\xff", "aa", "k/1", "k/10", "k/2", "z",
		}
		pairs := make([]kv, len(keys))
		for i, k := range keys {
			pairs[i] = kv{k, fmt.Sprint(i)}
		}
		putAll(t, e, 3, pairs)
		want := sortedPairs(pairs)

		err := e.View(func(tx ReadTx) error {
			diffPairs(t, "Scan(nil)", scanAll(t, tx, nil), want)
			diffPairs(t, "Scan(empty from)", scanAll(t, tx, []byte{}), want)
			for _, from := range []string{"a", "a\x00", "a\x01", "b", "ba", "bb", "k/", "\x00", "\x00\x01", "\xff", "\xff\xff\x00"} {
				i := sort.Search(len(want), func(i int) bool { return want[i].k >= from })
				diffPairs(t, fmt.Sprintf("Scan(from %q)", from), scanAll(t, tx, []byte(from)), want[i:])
			}
			// Stopping early.
			for _, stop := range []int{1, 3, len(want)} {
				var got []kv
				if err := tx.Scan([]byte("a"), func(k, v []byte) bool {
					got = append(got, kv{string(k), string(v)})
					return len(got) < stop
				}); err != nil {
					t.Fatalf("Scan: %v", err)
				}
				i := sort.Search(len(want), func(i int) bool { return want[i].k >= "a" })
				diffPairs(t, fmt.Sprintf("Scan stopping after %d", stop), got, want[i:min(len(want), i+stop)])
			}
			return nil
		})
		if err != nil {
			t.Fatalf("View: %v", err)
		}
		s, err := e.Snapshot()
		if err != nil {
			t.Fatalf("Snapshot: %v", err)
		}
		defer s.Release()
		diffPairs(t, "Snapshot Scan(nil)", scanAll(t, s, nil), want)
		diffPairs(t, "Snapshot Scan(from b)", scanAll(t, s, []byte("b")), want[sort.Search(len(want), func(i int) bool { return want[i].k >= "b" }):])
	})

	t.Run("FailedUpdateKeepsNothing", func(t *testing.T) {
		e := open(t)
		putAll(t, e, 5, []kv{{"a", "1"}, {"b", "2"}})
		before := dump(t, e)
		err := e.Update(6, func(tx WriteTx) error {
			if err := tx.Put([]byte("a"), []byte("changed")); err != nil {
				return err
			}
			if err := tx.Put([]byte("new"), []byte("x")); err != nil {
				return err
			}
			if err := tx.Delete([]byte("b")); err != nil {
				return err
			}
			return errBoom
		})
		if !errors.Is(err, errBoom) {
			t.Fatalf("Update returning errBoom = %v, want an error wrapping errBoom", err)
		}
		if got := e.AppliedIndex(); got != 5 {
			t.Errorf("AppliedIndex after failed Update = %d, want 5", got)
		}
		diffPairs(t, "after failed Update", dump(t, e), before)
		s, err := e.Snapshot()
		if err != nil {
			t.Fatalf("Snapshot: %v", err)
		}
		if got := s.AppliedIndex(); got != 5 {
			t.Errorf("Snapshot.AppliedIndex after failed Update = %d, want 5", got)
		}
		s.Release()

		// The engine still works.
		putAll(t, e, 7, []kv{{"c", "3"}})
		if got := e.AppliedIndex(); got != 7 {
			t.Errorf("AppliedIndex = %d, want 7", got)
		}
		diffPairs(t, "after next Update", dump(t, e), []kv{{"a", "1"}, {"b", "2"}, {"c", "3"}})
	})

	t.Run("SnapshotIsolation", func(t *testing.T) {
		e := open(t)
		old := []kv{{"a", "1"}, {"b", "2"}, {"c", "3"}}
		putAll(t, e, 10, old)
		s, err := e.Snapshot()
		if err != nil {
			t.Fatalf("Snapshot: %v", err)
		}
		mustUpdate(t, e, 11, func(tx WriteTx) error {
			if err := tx.Put([]byte("a"), []byte("changed")); err != nil {
				return err
			}
			if err := tx.Delete([]byte("b")); err != nil {
				return err
			}
			return tx.Put([]byte("d"), []byte("4"))
		})
		putAll(t, e, 12, []kv{{"e", "5"}})
		cur := []kv{{"a", "changed"}, {"c", "3"}, {"d", "4"}, {"e", "5"}}

		if got := s.AppliedIndex(); got != 10 {
			t.Errorf("Snapshot.AppliedIndex after more Updates = %d, want 10", got)
		}
		diffPairs(t, "snapshot after more Updates", scanAll(t, s, nil), old)
		if v, ok := getString(t, s, "a"); !ok || v != "1" {
			t.Errorf("snapshot Get(a) = %q, %v; want 1, true", v, ok)
		}
		if v, ok := getString(t, s, "b"); !ok || v != "2" {
			t.Errorf("snapshot Get(b) = %q, %v; want 2, true", v, ok)
		}
		if _, ok := s.Get([]byte("d")); ok {
			t.Errorf("snapshot sees key d written after it")
		}
		// The old view streams as the old state.
		var buf bytes.Buffer
		if err := WriteSnapshot(&buf, s.AppliedIndex(), s); err != nil {
			t.Fatalf("WriteSnapshot: %v", err)
		}
		if want := streamOf(t, 10, old); !bytes.Equal(buf.Bytes(), want) {
			t.Errorf("stream of the old snapshot differs from a stream of the old state")
		}

		if got := e.AppliedIndex(); got != 12 {
			t.Errorf("AppliedIndex = %d, want 12", got)
		}
		diffPairs(t, "engine", dump(t, e), cur)
		s2, err := e.Snapshot()
		if err != nil {
			t.Fatalf("Snapshot: %v", err)
		}
		if got := s2.AppliedIndex(); got != 12 {
			t.Errorf("second Snapshot.AppliedIndex = %d, want 12", got)
		}
		diffPairs(t, "second snapshot", scanAll(t, s2, nil), cur)

		s.Release()
		s.Release() // idempotent
		s2.Release()
		s2.Release()
		// Releasing does not disturb the engine.
		putAll(t, e, 13, []kv{{"f", "6"}})
		diffPairs(t, "after Release", dump(t, e), append(cur, kv{"f", "6"}))
	})

	t.Run("ConcurrentReaders", func(t *testing.T) { testConcurrentReaders(t, open(t)) })

	t.Run("SnapshotStreamRoundTrip", func(t *testing.T) {
		a := open(t)
		pairs := randomPairs(1, 5000)
		for i := 0; i < len(pairs); i += 1000 {
			putAll(t, a, uint64(4238+i/1000), pairs[i:min(len(pairs), i+1000)])
		}
		if got := a.AppliedIndex(); got != 4242 {
			t.Fatalf("AppliedIndex of A = %d, want 4242", got)
		}
		want := sortedPairs(pairs)
		diffPairs(t, "A", dump(t, a), want)
		stream := streamOfEngine(t, a)
		if want := streamOf(t, 4242, pairs); !bytes.Equal(stream, want) {
			t.Errorf("stream of A differs from the stream of the same pairs from a Memory engine")
		}

		b := open(t)
		// B has keys of its own (gone after Restore), keys also in A with other
		// values, and a higher applied index than the stream's.
		onlyB := []kv{{"only in B", "x"}, {"\x00only", ""}, {pairs[0].k, "B's value"}, {pairs[1].k + "\x00", "y"}}
		putAll(t, b, 9000, onlyB)
		if err := b.Restore(bytes.NewReader(stream)); err != nil {
			t.Fatalf("Restore: %v", err)
		}
		if got := b.AppliedIndex(); got != 4242 {
			t.Errorf("AppliedIndex after Restore = %d, want 4242", got)
		}
		diffPairs(t, "B after Restore", dump(t, b), want)
		err := b.View(func(tx ReadTx) error {
			for _, p := range onlyB[:2] {
				if _, ok := tx.Get([]byte(p.k)); ok {
					t.Errorf("key %q, only in B before Restore, is still there", p.k)
				}
			}
			for _, p := range pairs[:50] {
				if v, ok := getString(t, tx, p.k); !ok || v != p.v {
					t.Errorf("Get(%q) after Restore = %q, %v; want %q, true", p.k, v, ok, p.v)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("View: %v", err)
		}
		s, err := b.Snapshot()
		if err != nil {
			t.Fatalf("Snapshot: %v", err)
		}
		if got := s.AppliedIndex(); got != 4242 {
			t.Errorf("Snapshot.AppliedIndex after Restore = %d, want 4242", got)
		}
		s.Release()
		if got := streamOfEngine(t, b); !bytes.Equal(got, stream) {
			t.Errorf("stream of the restored engine differs from the stream restored")
		}
		// Updates go on after a Restore.
		putAll(t, b, 4243, []kv{{"after", "restore"}})
		if got := b.AppliedIndex(); got != 4243 {
			t.Errorf("AppliedIndex = %d, want 4243", got)
		}
		diffPairs(t, "B after Update", dump(t, b), sortedPairs(append(slices.Clone(pairs), kv{"after", "restore"})))

		// Restoring an empty stream empties the engine.
		if err := b.Restore(bytes.NewReader(streamOf(t, 0, nil))); err != nil {
			t.Fatalf("Restore(empty): %v", err)
		}
		if got := b.AppliedIndex(); got != 0 {
			t.Errorf("AppliedIndex after Restore(empty) = %d, want 0", got)
		}
		if got := dump(t, b); len(got) != 0 {
			t.Errorf("%d pairs after Restore(empty)", len(got))
		}
	})

	t.Run("RestoreRejectsDamage", func(t *testing.T) { testRestoreRejectsDamage(t, open) })

	t.Run("RestoreDoesNotWaitForSnapshots", func(t *testing.T) { testRestoreWithSnapshotOpen(t, open(t)) })

	t.Run("Closed", func(t *testing.T) {
		e := open(t)
		putAll(t, e, 1, []kv{{"a", "1"}})
		stream := streamOfEngine(t, e)
		if err := e.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := e.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		called := false
		if err := e.Update(2, func(WriteTx) error { called = true; return nil }); !errors.Is(err, ErrClosed) {
			t.Errorf("Update after Close = %v, want ErrClosed", err)
		}
		if err := e.View(func(ReadTx) error { called = true; return nil }); !errors.Is(err, ErrClosed) {
			t.Errorf("View after Close = %v, want ErrClosed", err)
		}
		if called {
			t.Errorf("fn called after Close")
		}
		if s, err := e.Snapshot(); !errors.Is(err, ErrClosed) {
			t.Errorf("Snapshot after Close = %v, want ErrClosed", err)
			if s != nil {
				s.Release()
			}
		}
		if err := e.Restore(bytes.NewReader(stream)); !errors.Is(err, ErrClosed) {
			t.Errorf("Restore after Close = %v, want ErrClosed", err)
		}
	})
}

// testConcurrentReaders runs Views and Snapshots while Updates (and a few
// Restores) run. Update i writes i under "a" and "z" and adds the key n/i: a
// consistent view has a == z == the number of n/ keys, and a snapshot's
// AppliedIndex equals them too.
func testConcurrentReaders(t *testing.T, e Engine) {
	const (
		updates   = 150
		restoreAt = 40 // every restoreAt Updates, Restore the engine's own snapshot
		maxReads  = 20000
	)
	update := func(i uint64) error {
		return e.Update(i, func(tx WriteTx) error {
			v := binary.BigEndian.AppendUint64(nil, i)
			if err := tx.Put([]byte("a"), v); err != nil {
				return err
			}
			if err := tx.Put([]byte(fmt.Sprintf("n/%08d", i)), []byte{byte(i)}); err != nil {
				return err
			}
			return tx.Put([]byte("z"), v)
		})
	}
	if err := update(1); err != nil {
		t.Fatal(err)
	}

	// check verifies one view and returns the counter it shows.
	check := func(tx ReadTx, who string) (uint64, bool) {
		a, okA := tx.Get([]byte("a"))
		z, okZ := tx.Get([]byte("z"))
		if !okA || !okZ || len(a) != 8 || !bytes.Equal(a, z) {
			t.Errorf("%s: a=%x (%v) z=%x (%v), want equal 8-byte counters", who, a, okA, z, okZ)
			return 0, false
		}
		n := binary.BigEndian.Uint64(a)
		var count, scanA, scanZ uint64
		tx.Scan(nil, func(k, v []byte) bool {
			switch {
			case string(k) == "a":
				scanA = binary.BigEndian.Uint64(v)
			case string(k) == "z":
				scanZ = binary.BigEndian.Uint64(v)
			case bytes.HasPrefix(k, []byte("n/")):
				count++
			}
			return true
		})
		if count != n || scanA != n || scanZ != n {
			t.Errorf("%s: counter %d, but Scan sees a=%d z=%d and %d n/ keys", who, n, scanA, scanZ, count)
			return 0, false
		}
		return n, true
	}

	var done atomic.Bool
	var wg sync.WaitGroup
	for r := range 4 {
		wg.Go(func() {
			who := fmt.Sprintf("View reader %d", r)
			var last uint64
			for i := 0; i < maxReads && !done.Load(); i++ {
				applied := e.AppliedIndex()
				if applied < last {
					t.Errorf("%s: AppliedIndex went back from %d to %d", who, last, applied)
					return
				}
				var n uint64
				var ok bool
				if err := e.View(func(tx ReadTx) error { n, ok = check(tx, who); return nil }); err != nil {
					t.Errorf("%s: View: %v", who, err)
					return
				}
				if !ok {
					return
				}
				if n < applied {
					t.Errorf("%s: View shows counter %d, older than AppliedIndex %d read before it", who, n, applied)
					return
				}
				last = applied
			}
		})
	}
	wg.Go(func() {
		who := "ViewApplied reader"
		for i := 0; i < maxReads && !done.Load(); i++ {
			var n, index uint64
			var ok bool
			if err := e.ViewApplied(func(tx ReadTx, idx uint64) error { index = idx; n, ok = check(tx, who); return nil }); err != nil {
				t.Errorf("%s: ViewApplied: %v", who, err)
				return
			}
			if !ok {
				return
			}
			if index != n {
				t.Errorf("%s: the view shows counter %d at applied index %d", who, n, index)
				return
			}
		}
	})
	for r := range 2 {
		wg.Go(func() {
			who := fmt.Sprintf("Snapshot reader %d", r)
			var last uint64
			for i := 0; i < maxReads && !done.Load(); i++ {
				s, err := e.Snapshot()
				if err != nil {
					t.Errorf("%s: Snapshot: %v", who, err)
					return
				}
				n, ok := check(s, who)
				idx := s.AppliedIndex()
				if ok && idx != n {
					t.Errorf("%s: snapshot AppliedIndex %d, data at counter %d", who, idx, n)
					ok = false
				}
				if ok && idx < last {
					t.Errorf("%s: snapshot AppliedIndex went back from %d to %d", who, last, idx)
					ok = false
				}
				last = idx
				if ok && i%10 == 0 {
					// Stream the snapshot while Updates go on, and read it back.
					var buf bytes.Buffer
					if err := WriteSnapshot(&buf, idx, s); err != nil {
						t.Errorf("%s: WriteSnapshot: %v", who, err)
						ok = false
					} else {
						m := NewMemory()
						if err := m.Restore(&buf); err != nil {
							t.Errorf("%s: Restore of a snapshot taken under load: %v", who, err)
							ok = false
						} else if m.AppliedIndex() != idx {
							t.Errorf("%s: restored AppliedIndex %d, want %d", who, m.AppliedIndex(), idx)
							ok = false
						} else {
							m.View(func(tx ReadTx) error { check(tx, who+" (restored copy)"); return nil })
						}
					}
				}
				s.Release()
				if !ok {
					return
				}
			}
		})
	}

	for i := uint64(2); i <= updates; i++ {
		if err := update(i); err != nil {
			t.Errorf("Update(%d): %v", i, err)
			break
		}
		if i%restoreAt == 0 {
			stream := streamOfEngine(t, e)
			if err := e.Restore(bytes.NewReader(stream)); err != nil {
				t.Errorf("Restore under readers: %v", err)
				break
			}
			if got := e.AppliedIndex(); got != i {
				t.Errorf("AppliedIndex after Restore = %d, want %d", got, i)
			}
		}
	}
	done.Store(true)
	wg.Wait()
	if got := e.AppliedIndex(); got != updates && !t.Failed() {
		t.Errorf("AppliedIndex = %d, want %d", got, updates)
	}
}

// testRestoreRejectsDamage feeds damaged streams to Restore: each must fail,
// wrapping ErrCorruptSnapshot, and leave the previous content and index.
func testRestoreRejectsDamage(t *testing.T, open func(t *testing.T) Engine) {
	pairs := randomPairs(2, 300)
	good := streamOf(t, 99, pairs)
	n := len(good)

	e := open(t)
	own := []kv{{"mine", "1"}, {pairs[0].k, "other"}, {"zz", ""}}
	putAll(t, e, 7, own)
	before := dump(t, e)

	type damaged struct {
		name string
		data []byte
		// anyErr: an error is enough (no need to wrap ErrCorruptSnapshot).
		anyErr bool
	}
	var cases []damaged

	for _, l := range []int{0, 1, 8, 9, 16, 17, 18, 30, n / 2, n - 14, n - 13, n - 12, n - 5, n - 4, n - 3, n - 1} {
		cases = append(cases, damaged{name: fmt.Sprintf("truncated to %d of %d", l, n), data: good[:l]})
	}

	flip := func(pos int, mask byte) damaged {
		d := bytes.Clone(good)
		d[pos] ^= mask
		return damaged{name: fmt.Sprintf("byte %d of %d ^ %#x", pos, n, mask), data: d, anyErr: pos == 8}
	}
	// Header (magic, version, index), first record, middle, end tag, count,
	// checksum.
	for _, pos := range []int{0, 3, 7, 8, 9, 12, 16, 17, 18, 19, 20, n / 3, n / 2, 2 * n / 3, n - 13, n - 12, n - 6, n - 5, n - 4, n - 3, n - 1} {
		for _, mask := range []byte{0x01, 0x80, 0xff} {
			cases = append(cases, flip(pos, mask))
		}
	}
	r := rand.New(rand.NewPCG(3, 3))
	for range 24 {
		cases = append(cases, flip(r.IntN(n), byte(1+r.IntN(255))))
	}

	wrongMagic := bytes.Clone(good)
	copy(wrongMagic, "cohortKV")
	cases = append(cases, damaged{name: "wrong magic", data: wrongMagic})
	cases = append(cases, damaged{name: "not a snapshot", data: []byte("this is not a snapshot stream, not at all")})
	version := bytes.Clone(good)
	version[8] = snapVersion + 1
	cases = append(cases, damaged{name: "unsupported version", data: withCRC(version[:n-4]), anyErr: true})

	// Hand-made streams with a valid checksum, each wrong in one way.
	rec := func(b []byte, k, v string) []byte {
		b = append(b, recPair)
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(v)))
		return append(b, v...)
	}
	end := func(b []byte, count uint64) []byte {
		return withCRC(binary.BigEndian.AppendUint64(append(b, recEnd), count))
	}
	oversizedKey := binary.AppendUvarint(append(snapHeader(99), recPair), MaxSnapshotKey+1)
	oversizedKey = end(append(oversizedKey, make([]byte, 64)...), 1)
	oversizedValue := binary.AppendUvarint(append(snapHeader(99), recPair, 1, 'k'), MaxSnapshotValue+1)
	oversizedValue = end(append(oversizedValue, make([]byte, 64)...), 1)
	overflow := append(snapHeader(99), recPair)
	overflow = end(append(overflow, bytes.Repeat([]byte{0xff}, 11)...), 1)
	cases = append(cases,
		damaged{name: "oversized key length", data: oversizedKey},
		damaged{name: "oversized value length", data: oversizedValue},
		damaged{name: "uvarint overflow", data: overflow},
		damaged{name: "length past the end", data: end(binary.AppendUvarint(append(snapHeader(99), recPair), 4096), 1)},
		damaged{name: "bad record tag", data: end(rec(append(snapHeader(99), 0x02), "k", "v"), 1)},
		damaged{name: "count too high", data: end(rec(rec(snapHeader(99), "a", "1"), "b", "2"), 3)},
		damaged{name: "count too low", data: end(rec(rec(snapHeader(99), "a", "1"), "b", "2"), 1)},
		damaged{name: "no checksum", data: end(rec(snapHeader(99), "a", "1"), 1)[:17+5+9]},
	)
	// The hand-made pieces are right when put together right.
	if got := end(rec(rec(snapHeader(99), "a", "1"), "b", ""), 2); !bytes.Equal(got, streamOf(t, 99, []kv{{"a", "1"}, {"b", ""}})) {
		t.Fatalf("hand-made stream differs from WriteSnapshot's")
	}

	for _, c := range cases {
		err := e.Restore(bytes.NewReader(c.data))
		switch {
		case err == nil:
			t.Errorf("%s: Restore succeeded", c.name)
		case !c.anyErr && !errors.Is(err, ErrCorruptSnapshot):
			t.Errorf("%s: Restore = %v, want an error wrapping ErrCorruptSnapshot", c.name, err)
		}
		if got := e.AppliedIndex(); got != 7 {
			t.Fatalf("%s: AppliedIndex after failed Restore = %d, want 7", c.name, got)
		}
		diffPairs(t, c.name+": content after failed Restore", dump(t, e), before)
	}

	// A failed Restore leaves a working engine; a good stream still restores.
	putAll(t, e, 8, []kv{{"more", "x"}})
	if err := e.Restore(bytes.NewReader(good)); err != nil {
		t.Fatalf("Restore(good) after failures: %v", err)
	}
	if got := e.AppliedIndex(); got != 99 {
		t.Errorf("AppliedIndex = %d, want 99", got)
	}
	diffPairs(t, "after Restore(good)", dump(t, e), sortedPairs(pairs))
}

// Bolt-specific behaviour.

func openBolt(t testing.TB, path string) *Bolt {
	t.Helper()
	e, err := OpenBolt(path, BoltOptions{})
	if err != nil {
		t.Fatalf("OpenBolt: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func TestBolt_Reopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.db")
	e := openBolt(t, path)
	if e.Path() != path {
		t.Errorf("Path = %q, want %q", e.Path(), path)
	}
	pairs := randomPairs(4, 500)
	putAll(t, e, 41, pairs[:250])
	putAll(t, e, 42, pairs[250:])
	mustUpdate(t, e, 43, func(tx WriteTx) error { return tx.Delete([]byte(pairs[0].k)) })
	e.Update(44, func(WriteTx) error { return errBoom }) // not kept
	want := dump(t, e)
	if err := e.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	e2 := openBolt(t, path)
	if got := e2.AppliedIndex(); got != 43 {
		t.Errorf("AppliedIndex after reopen = %d, want 43", got)
	}
	diffPairs(t, "after reopen", dump(t, e2), want)
	s, err := e2.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	if got := s.AppliedIndex(); got != 43 {
		t.Errorf("Snapshot.AppliedIndex after reopen = %d, want 43", got)
	}
	s.Release()
}

func TestBolt_RemovesLeftoverRestoreFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.db")
	e := openBolt(t, path)
	putAll(t, e, 3, []kv{{"a", "1"}})
	e.Close()

	// An interrupted Restore left its file behind.
	if err := os.WriteFile(path+".restore", []byte("half a bolt file"), 0o600); err != nil {
		t.Fatal(err)
	}
	e2 := openBolt(t, path)
	if _, err := os.Stat(path + ".restore"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("leftover %s.restore still there after OpenBolt (Stat: %v)", path, err)
	}
	if got := e2.AppliedIndex(); got != 3 {
		t.Errorf("AppliedIndex = %d, want 3", got)
	}
	diffPairs(t, "after OpenBolt", dump(t, e2), []kv{{"a", "1"}})
}

func TestBolt_RestoreSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "data.db")
	e := openBolt(t, path)
	putAll(t, e, 5, []kv{{"old", "x"}})
	pairs := randomPairs(5, 1000)
	if err := e.Restore(bytes.NewReader(streamOf(t, 77, pairs))); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	putAll(t, e, 78, []kv{{"after", "y"}})
	if err := e.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	e2 := openBolt(t, path)
	if got := e2.AppliedIndex(); got != 78 {
		t.Errorf("AppliedIndex after Restore, Update and reopen = %d, want 78", got)
	}
	diffPairs(t, "after reopen", dump(t, e2), sortedPairs(append(pairs, kv{"after", "y"})))
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range entries {
		if de.Name() != "data.db" {
			t.Errorf("unexpected file %s left next to the data file", de.Name())
		}
	}
}

func TestBolt_FailedRestoreLeavesNoTempFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.db")
	e := openBolt(t, path)
	putAll(t, e, 5, []kv{{"a", "1"}})
	good := streamOf(t, 9, randomPairs(6, 100))
	if err := e.Restore(bytes.NewReader(good[:len(good)-1])); !errors.Is(err, ErrCorruptSnapshot) {
		t.Fatalf("Restore(truncated) = %v, want ErrCorruptSnapshot", err)
	}
	if _, err := os.Stat(path + ".restore"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s.restore left after a failed Restore (Stat: %v)", path, err)
	}
	e.Close()
	e2 := openBolt(t, path)
	if got := e2.AppliedIndex(); got != 5 {
		t.Errorf("AppliedIndex after failed Restore and reopen = %d, want 5", got)
	}
	diffPairs(t, "after failed Restore and reopen", dump(t, e2), []kv{{"a", "1"}})
}

func TestBolt_SecondOpenFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.db")
	e := openBolt(t, path)
	putAll(t, e, 1, []kv{{"a", "1"}})

	type result struct {
		e   *Bolt
		err error
	}
	ch := make(chan result, 1)
	start := time.Now()
	go func() {
		e2, err := OpenBolt(path, BoltOptions{})
		ch <- result{e2, err}
	}()
	select {
	case r := <-ch:
		if r.err == nil {
			r.e.Close()
			t.Fatalf("second OpenBolt of an open file succeeded")
		}
		t.Logf("second OpenBolt failed after %v: %v", time.Since(start).Round(time.Millisecond), r.err)
	case <-time.After(30 * time.Second):
		t.Fatalf("second OpenBolt of an open file still blocked after 30s")
	}
	// The first handle is unharmed.
	putAll(t, e, 2, []kv{{"b", "2"}})
	diffPairs(t, "first handle", dump(t, e), []kv{{"a", "1"}, {"b", "2"}})
}

// FuzzReadSnapshot checks that ReadSnapshot never panics, that every error
// wraps ErrCorruptSnapshot, and that a stream it accepts is exactly the
// stream WriteSnapshot makes of what it read.
func FuzzReadSnapshot(f *testing.F) {
	valid := streamOf(f, 42, []kv{{"a", "1"}, {"b", ""}, {"\x00\xff", "x"}, {"key", "value"}})
	f.Add(valid)
	f.Add(streamOf(f, 0, nil))
	f.Add(streamOf(f, 1<<63, []kv{{"\xff", string(make([]byte, 300))}}))
	f.Add([]byte{})
	f.Add([]byte(snapMagic))
	f.Add(valid[:len(valid)-1])
	f.Add(valid[:len(valid)/2])
	bad := bytes.Clone(valid)
	bad[len(bad)/2] ^= 0x10
	f.Add(bad)
	v2 := bytes.Clone(valid)
	v2[8] = 2
	f.Add(v2)
	f.Add(withCRC(binary.AppendUvarint(append(snapHeader(1), recPair), MaxSnapshotKey+1)))
	f.Add([]byte("not a snapshot, just some garbage bytes \x00\x01\xff"))

	f.Fuzz(func(t *testing.T, data []byte) {
		var (
			index uint64
			began bool
			pairs []kv
		)
		err := ReadSnapshot(bytes.NewReader(data), func(i uint64) error {
			if began {
				t.Fatalf("begin called twice")
			}
			began, index = true, i
			return nil
		}, func(k, v []byte) error {
			if !began {
				t.Fatalf("put called before begin")
			}
			pairs = append(pairs, kv{string(k), string(v)})
			return nil
		})
		if err != nil {
			if !errors.Is(err, ErrCorruptSnapshot) {
				t.Fatalf("ReadSnapshot = %v, want an error wrapping ErrCorruptSnapshot", err)
			}
			return
		}
		if !began {
			t.Fatalf("ReadSnapshot returned nil without calling begin")
		}
		m := NewMemory()
		defer m.Close()
		if err := m.Update(index, func(tx WriteTx) error {
			for _, p := range pairs {
				if err := tx.Put([]byte(p.k), []byte(p.v)); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatalf("Update: %v", err)
		}
		if again := streamOfEngine(t, m); !bytes.Equal(again, data) {
			t.Fatalf("ReadSnapshot accepted a stream that re-encodes differently:\n accepted   %x\n re-encoded %x", data, again)
		}
	})
}

func BenchmarkBoltUpdate(b *testing.B) {
	e, err := OpenBolt(filepath.Join(b.TempDir(), "data.db"), BoltOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	const puts, size = 100, 100
	val := bytes.Repeat([]byte{'v'}, size)
	b.SetBytes(puts * size)
	b.ReportAllocs()
	var index uint64
	for b.Loop() {
		index++
		err := e.Update(index, func(tx WriteTx) error {
			for j := range uint64(puts) {
				// A fresh key each time: the engine may keep it until commit.
				k := binary.BigEndian.AppendUint64([]byte("key/"), index*puts+j)
				if err := tx.Put(k, val); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSnapshotRoundTrip(b *testing.B) {
	engines := []struct {
		name string
		open func(b *testing.B) Engine
	}{
		{"Memory", func(*testing.B) Engine { return NewMemory() }},
		{"Bolt", func(b *testing.B) Engine {
			e, err := OpenBolt(filepath.Join(b.TempDir(), "data.db"), BoltOptions{})
			if err != nil {
				b.Fatal(err)
			}
			return e
		}},
	}
	pairs := make([]kv, 10000)
	val := string(bytes.Repeat([]byte{'v'}, 100))
	for i := range pairs {
		pairs[i] = kv{fmt.Sprintf("key/%08d", i), val}
	}
	for _, eng := range engines {
		b.Run(eng.name, func(b *testing.B) {
			src, dst := eng.open(b), eng.open(b)
			defer src.Close()
			defer dst.Close()
			putAll(b, src, 1, pairs)
			var buf bytes.Buffer
			b.ReportAllocs()
			for b.Loop() {
				buf.Reset()
				s, err := src.Snapshot()
				if err != nil {
					b.Fatal(err)
				}
				err = WriteSnapshot(&buf, s.AppliedIndex(), s)
				s.Release()
				if err != nil {
					b.Fatal(err)
				}
				b.SetBytes(int64(buf.Len()))
				if err := dst.Restore(bytes.NewReader(buf.Bytes())); err != nil {
					b.Fatal(err)
				}
			}
			if dst.AppliedIndex() != 1 {
				b.Fatalf("AppliedIndex = %d after Restore", dst.AppliedIndex())
			}
		})
	}
}

// testRestoreWithSnapshotOpen: a Restore returns while a Snapshot taken
// before it is still open, and the snapshot goes on reading what it saw.
// Raft holds a state machine snapshot while it waits for its main loop, and
// the main loop waits for the Restore of a snapshot install: a Restore that
// waited for the Release would never return.
func testRestoreWithSnapshotOpen(t *testing.T, e Engine) {
	old := []kv{{"a", "old"}, {"b", "old"}}
	putAll(t, e, 5, old)
	s, err := e.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	released := false
	defer func() {
		if !released {
			s.Release()
		}
	}()
	newer := []kv{{"a", "new"}, {"c", "new"}}
	done := make(chan error, 1)
	go func() { done <- e.Restore(bytes.NewReader(streamOf(t, 9, newer))) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Restore: %v", err)
		}
	case <-time.After(10 * time.Second):
		s.Release()
		released = true
		<-done
		t.Fatalf("Restore did not return within 10 s while a Snapshot was open; it returned once the Snapshot was released")
	}
	diffPairs(t, "engine after Restore", dump(t, e), newer)
	if got := e.AppliedIndex(); got != 9 {
		t.Errorf("AppliedIndex after Restore = %d, want 9", got)
	}
	diffPairs(t, "snapshot taken before Restore", scanAll(t, s, nil), old)
	if got := s.AppliedIndex(); got != 5 {
		t.Errorf("snapshot's AppliedIndex = %d, want 5", got)
	}
	s.Release()
	released = true
	// Writes, reads and snapshots go on.
	putAll(t, e, 10, []kv{{"d", "after"}})
	diffPairs(t, "engine after Update", dump(t, e), []kv{{"a", "new"}, {"c", "new"}, {"d", "after"}})
	s2, err := e.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot after Restore: %v", err)
	}
	s2.Release()
}

// The file handle a Restore replaced while a Snapshot read it is closed by
// the snapshot's Release (or at once, when the snapshot's copy was done),
// or by Close if the snapshot is still open then.
func TestBolt_RestoreClosesReplacedFileAtRelease(t *testing.T) {
	for _, releaseFirst := range []bool{true, false} {
		e := openBolt(t, filepath.Join(t.TempDir(), "data.db"))
		putAll(t, e, 5, []kv{{"a", "old"}})
		s, err := e.Snapshot()
		if err != nil {
			t.Fatalf("Snapshot: %v", err)
		}
		old := e.db
		if err := e.Restore(bytes.NewReader(streamOf(t, 9, []kv{{"a", "new"}}))); err != nil {
			t.Fatalf("Restore: %v", err)
		}
		// The snapshot reads the file as it was, whether its copy was
		// done before the Restore or held the old handle open.
		if v, ok := s.Get([]byte("a")); !ok || string(v) != "old" {
			t.Fatalf("snapshot after Restore reads %q, %v; want old", v, ok)
		}
		released := make(chan struct{})
		if releaseFirst {
			s.Release()
			close(released)
		} else {
			go func() { time.Sleep(50 * time.Millisecond); s.Release(); close(released) }()
		}
		if err := e.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		<-released
		if tx, err := old.Begin(false); err == nil {
			tx.Rollback()
			t.Errorf("releaseFirst=%v: the replaced handle is still open after Release and Close", releaseFirst)
		}
		e.smu.Lock()
		if len(e.snaps) != 0 || len(e.retired) != 0 {
			t.Errorf("releaseFirst=%v: %d handles with snapshots, %d retired left", releaseFirst, len(e.snaps), len(e.retired))
		}
		e.smu.Unlock()
	}
}
