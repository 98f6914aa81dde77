package storage

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"
)

// TestBolt_WriteBehindMatchesModel drives the engine with random puts and
// deletes on a small key space, flushing at random points (and the
// committer flushing on its own), and compares every read and every scan
// from a random start with a plain map after each step: the layers and the
// file together must always read as one store.
func TestBolt_WriteBehindMatchesModel(t *testing.T) {
	e := openBoltOpts(t, filepath.Join(t.TempDir(), "data.db"), BoltOptions{CommitInterval: testCommitInterval})
	rng := rand.New(rand.NewPCG(7, 11))
	model := map[string]string{}
	key := func() string { return fmt.Sprintf("k%03d", rng.IntN(200)) }
	for step := uint64(1); step <= 1500; step++ {
		err := e.Update(step, func(tx WriteTx) error {
			for n := rng.IntN(8); n >= 0; n-- {
				k := key()
				if rng.IntN(3) == 0 {
					if err := tx.Delete([]byte(k)); err != nil {
						return err
					}
					delete(model, k)
					continue
				}
				// A transaction reads its own writes.
				v := fmt.Sprintf("v%d-%d", step, n)
				if err := tx.Put([]byte(k), []byte(v)); err != nil {
					return err
				}
				if got, ok := tx.Get([]byte(k)); !ok || string(got) != v {
					return fmt.Errorf("read own write %s: %q %v", k, got, ok)
				}
				model[k] = v
			}
			return nil
		})
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		switch rng.IntN(50) {
		case 0:
			if err := e.Flush(); err != nil {
				t.Fatalf("Flush: %v", err)
			}
			if e.DurableIndex() != step {
				t.Fatalf("after Flush the file records %d, want %d", e.DurableIndex(), step)
			}
		case 1:
			time.Sleep(2 * testCommitInterval) // let the committer run
		}
		if e.AppliedIndex() != step {
			t.Fatalf("AppliedIndex %d, want %d", e.AppliedIndex(), step)
		}
		if step%10 == 0 || step > 1400 {
			checkModel(t, e, model, key())
		}
	}
	// Everything reaches the file: reopen and compare.
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e2 := openBolt(t, e.Path())
	if e2.AppliedIndex() != 1500 || e2.DurableIndex() != 1500 {
		t.Fatalf("reopened at applied %d, durable %d, want 1500", e2.AppliedIndex(), e2.DurableIndex())
	}
	checkModel(t, e2, model, "")
}

func checkModel(t *testing.T, e Engine, model map[string]string, from string) {
	t.Helper()
	var want []kv
	for k, v := range model {
		if k >= from {
			want = append(want, kv{k, v})
		}
	}
	sort.Slice(want, func(i, j int) bool { return want[i].k < want[j].k })
	err := e.View(func(tx ReadTx) error {
		diffPairs(t, "scan from "+from, scanAll(t, tx, []byte(from)), want)
		for i := 0; i < 200; i += 7 {
			k := fmt.Sprintf("k%03d", i)
			got, ok := tx.Get([]byte(k))
			want, wok := model[k]
			if ok != wok || string(got) != want {
				t.Fatalf("Get %s = %q %v, want %q %v", k, got, ok, want, wok)
			}
		}
		if pr, ok := e.(PointReader); ok {
			for i := 0; i < 200; i += 3 {
				k := fmt.Sprintf("k%03d", i)
				got, ok, err := pr.Lookup(k, []byte("prefix:"))
				if err != nil {
					return err
				}
				want, wok := model[k]
				if !wok {
					want = ""
				}
				if ok != wok || string(got) != "prefix:"+want {
					t.Fatalf("Lookup %s = %q %v, want %q %v", k, got, ok, "prefix:"+want, wok)
				}
			}
		}
		// A scan stopped early stops.
		n := 0
		if err := tx.Scan([]byte(from), func(k, v []byte) bool { n++; return n < 3 }); err != nil {
			return err
		}
		if n > 3 {
			t.Fatalf("scan went on after stop: %d calls", n)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("View: %v", err)
	}
}

// TestBolt_WriteBehindViewsAreConsistent has every Update set all keys of
// a small key space to the step's number (and delete one), while readers
// scan and check they never see two steps mixed nor an older step after a
// newer one, across commits of the
// layers into the file made by the committer, by Flush and by Snapshot.
func TestBolt_WriteBehindViewsAreConsistent(t *testing.T) {
	e := openBoltOpts(t, filepath.Join(t.TempDir(), "data.db"), BoltOptions{CommitInterval: testCommitInterval})
	const keys = 64
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for r := 0; r < 3; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := 0 // views never go back in time
			for ctx.Err() == nil {
				err := e.View(func(tx ReadTx) error {
					var first []byte
					n := 0
					err := tx.Scan(nil, func(k, v []byte) bool {
						if first == nil {
							first = bytes.Clone(v)
						} else if !bytes.Equal(v, first) {
							errs <- fmt.Errorf("scan mixes steps: %s=%s, first %s", k, v, first)
							return false
						}
						n++
						return true
					})
					if err == nil && n != 0 && n != keys-1 {
						err = fmt.Errorf("scan saw %d keys, want %d", n, keys-1)
					}
					if first != nil {
						var seen int
						fmt.Sscan(string(first), &seen)
						if seen < last {
							err = fmt.Errorf("a view saw step %d after one saw step %d", seen, last)
						}
						last = seen
					}
					return err
				})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	// Point reads through the cache never go back in time either.
	wg.Add(1)
	go func() {
		defer wg.Done()
		last := map[string]int{}
		for i := 0; ctx.Err() == nil; i++ {
			k := fmt.Sprintf("key%02d", i%keys)
			v, ok, err := e.Lookup(k, nil)
			if err != nil {
				errs <- err
				return
			}
			if !ok {
				continue
			}
			var seen int
			fmt.Sscan(string(v), &seen)
			if seen < last[k] {
				errs <- fmt.Errorf("Lookup %s saw step %d after step %d", k, seen, last[k])
				return
			}
			last[k] = seen
		}
	}()
	var step uint64
	for ctx.Err() == nil && step < 20000 {
		step++
		v := []byte(fmt.Sprint(step))
		err := e.Update(step, func(tx WriteTx) error {
			for i := 0; i < keys; i++ {
				k := []byte(fmt.Sprintf("key%02d", i))
				if i == int(step%keys) {
					if err := tx.Delete(k); err != nil {
						return err
					}
					continue
				}
				if err := tx.Put(k, v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		switch step % 97 {
		case 0:
			if err := e.Flush(); err != nil {
				t.Fatal(err)
			}
		case 50:
			s, err := e.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			if s.AppliedIndex() != step {
				t.Fatalf("snapshot at %d, want %d", s.AppliedIndex(), step)
			}
			s.Release()
		}
	}
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if step < 100 {
		t.Fatalf("only %d steps", step)
	}
}

// TestBolt_WriteBehindCommitsOnItsOwn checks that writes reach the file
// without Flush, Snapshot or Close: the file's applied index catches up
// within a few flush intervals.
func TestBolt_WriteBehindCommitsOnItsOwn(t *testing.T) {
	e := openBoltOpts(t, filepath.Join(t.TempDir(), "data.db"), BoltOptions{CommitInterval: testCommitInterval})
	putAll(t, e, 5, []kv{{"a", "1"}, {"b", "2"}})
	if e.AppliedIndex() != 5 {
		t.Fatalf("AppliedIndex %d", e.AppliedIndex())
	}
	deadline := time.Now().Add(5 * time.Second)
	for e.DurableIndex() != 5 {
		if time.Now().After(deadline) {
			t.Fatalf("the file still records %d after 5 s", e.DurableIndex())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestBolt_RestoreDropsLayers: a Restore replaces what the layers hold too.
func TestBolt_RestoreDropsLayers(t *testing.T) {
	e := openBolt(t, filepath.Join(t.TempDir(), "data.db"))
	putAll(t, e, 3, []kv{{"old", "x"}, {"gone", "y"}})
	if err := e.Restore(bytes.NewReader(streamOf(t, 9, []kv{{"new", "z"}}))); err != nil {
		t.Fatal(err)
	}
	diffPairs(t, "after restore", dump(t, e), []kv{{"new", "z"}})
	if e.AppliedIndex() != 9 || e.DurableIndex() != 9 {
		t.Fatalf("applied %d durable %d, want 9", e.AppliedIndex(), e.DurableIndex())
	}
	putAll(t, e, 10, []kv{{"after", "w"}})
	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}
	diffPairs(t, "after flush", dump(t, e), []kv{{"after", "w"}, {"new", "z"}})
}

// TestBolt_LookupCache checks the read cache: hits and misses agree with
// the file through commits and Restore, and it stays within its budget.
func TestBolt_LookupCache(t *testing.T) {
	e := openBolt(t, filepath.Join(t.TempDir(), "data.db"))
	e.cache = newReadCache(cacheShards * 4096) // a small budget
	var pairs []kv
	for i := range 2000 {
		pairs = append(pairs, kv{fmt.Sprintf("key%04d", i), fmt.Sprintf("value-%04d-%s", i, bytes.Repeat([]byte("x"), 40))})
	}
	putAll(t, e, 1, pairs)
	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 2; round++ { // the second round hits what the first cached
		for _, p := range pairs {
			v, ok, err := e.Lookup(p.k, nil)
			if err != nil || !ok || string(v) != p.v {
				t.Fatalf("Lookup %s = %q %v %v", p.k, v, ok, err)
			}
		}
		if _, ok, err := e.Lookup("absent", nil); ok || err != nil {
			t.Fatalf("Lookup absent = %v %v", ok, err)
		}
	}
	for i := range e.cache.shards {
		if sh := &e.cache.shards[i]; sh.bytes > e.cache.limit || sh.bytes <= 0 || len(sh.m) == 0 {
			t.Fatalf("shard %d holds %d bytes in %d entries, limit %d", i, sh.bytes, len(sh.m), e.cache.limit)
		}
	}
	// A committed overwrite and delete are seen, not the cached records.
	mustUpdate(t, e, 2, func(tx WriteTx) error {
		if err := tx.Put([]byte("key0001"), []byte("new")); err != nil {
			return err
		}
		if err := tx.Put([]byte("absent"), []byte("now here")); err != nil {
			return err
		}
		return tx.Delete([]byte("key0002"))
	})
	for _, flush := range []bool{false, true} {
		if flush {
			if err := e.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		if v, ok, _ := e.Lookup("key0001", nil); !ok || string(v) != "new" {
			t.Fatalf("flush %v: key0001 = %q %v", flush, v, ok)
		}
		if v, ok, _ := e.Lookup("absent", nil); !ok || string(v) != "now here" {
			t.Fatalf("flush %v: absent = %q %v", flush, v, ok)
		}
		if _, ok, _ := e.Lookup("key0002", nil); ok {
			t.Fatalf("flush %v: deleted key0002 still read", flush)
		}
	}
	// Restore replaces everything the cache knew.
	if err := e.Restore(bytes.NewReader(streamOf(t, 9, []kv{{"key0003", "restored"}}))); err != nil {
		t.Fatal(err)
	}
	if v, ok, _ := e.Lookup("key0003", nil); !ok || string(v) != "restored" {
		t.Fatalf("after restore key0003 = %q %v", v, ok)
	}
	if _, ok, _ := e.Lookup("key0001", nil); ok {
		t.Fatal("after restore key0001 still read")
	}
	e.Close()
	if _, _, err := e.Lookup("key0003", nil); err != ErrClosed {
		t.Fatalf("Lookup after Close: %v, want ErrClosed", err)
	}
}

func TestMemory_Lookup(t *testing.T) {
	m := NewMemory()
	putAll(t, m, 1, []kv{{"a", "1"}})
	if v, ok, err := m.Lookup("a", nil); !ok || err != nil || string(v) != "1" {
		t.Fatalf("Lookup a = %q %v %v", v, ok, err)
	}
	if _, ok, _ := m.Lookup("b", nil); ok {
		t.Fatal("Lookup b found")
	}
	m.Close()
	if _, _, err := m.Lookup("a", nil); err != ErrClosed {
		t.Fatalf("after Close: %v", err)
	}
}

// testCommitInterval makes the committer busy in the tests that exercise it.
const testCommitInterval = 20 * time.Millisecond

func openBoltOpts(t testing.TB, path string, opts BoltOptions) *Bolt {
	t.Helper()
	e, err := OpenBolt(path, opts)
	if err != nil {
		t.Fatalf("OpenBolt: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// TestBolt_IndexOnlyUpdatesReachTheFile: Updates that write nothing (Raft
// entries that are not commands) still move the file's applied index, with
// the committer, Flush and Snapshot, so that a snapshot taken after them
// does not find the file behind it.
func TestBolt_IndexOnlyUpdatesReachTheFile(t *testing.T) {
	e := openBoltOpts(t, filepath.Join(t.TempDir(), "data.db"), BoltOptions{CommitInterval: testCommitInterval})
	putAll(t, e, 3, []kv{{"a", "1"}})
	mustUpdate(t, e, 7, func(WriteTx) error { return nil })
	deadline := time.Now().Add(5 * time.Second)
	for e.DurableIndex() != 7 {
		if time.Now().After(deadline) {
			t.Fatalf("the file records %d after 5 s, want 7", e.DurableIndex())
		}
		time.Sleep(5 * time.Millisecond)
	}
	mustUpdate(t, e, 9, func(WriteTx) error { return nil })
	s, err := e.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release()
	if s.AppliedIndex() != 9 || e.DurableIndex() != 9 {
		t.Fatalf("snapshot at %d, file at %d, want 9", s.AppliedIndex(), e.DurableIndex())
	}
}
