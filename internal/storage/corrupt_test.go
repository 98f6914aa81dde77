package storage

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// damageAt overwrites bytes of the file at path, at the first occurrence of
// marker (plus delta), with b.
func damageAt(t *testing.T, path string, marker []byte, delta int, b []byte) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	off := bytes.Index(data, marker)
	if off < 0 {
		t.Fatalf("marker %q not in %s", marker, path)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, int64(off+delta)); err != nil {
		t.Fatal(err)
	}
	return off + delta
}

func seedBolt(t *testing.T, path string) {
	t.Helper()
	e, err := OpenBolt(path, BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var pairs []kv
	for i := 0; i < 200; i++ {
		pairs = append(pairs, kv{k: "key-" + string(rune('a'+i%26)) + strings.Repeat("x", i%7) + string(rune('0'+i/26)), v: "plain-value"})
	}
	pairs = append(pairs, kv{k: "victim", v: "VICTIM-VALUE-0123456789"})
	putAll(t, e, 7, pairs)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestBolt_DamagedValueIsDetected(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.db")
	seedBolt(t, path)
	damageAt(t, path, []byte("VICTIM-VALUE"), 3, []byte{'#'})

	e := openBolt(t, path)
	err := e.View(func(tx ReadTx) error {
		if _, ok := tx.Get([]byte("victim")); ok {
			t.Error("damaged value read back as present")
		}
		return nil
	})
	if !errors.Is(err, ErrCorruptData) || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("View of damaged record: %v, want ErrCorruptData", err)
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "victim") {
		t.Fatalf("error does not name the file and key: %v", err)
	}
	// Other records still read.
	if err := e.View(func(tx ReadTx) error {
		if v, ok := tx.Get([]byte("key-a0")); !ok || string(v) != "plain-value" {
			t.Errorf("undamaged key: %q %v", v, ok)
		}
		return nil
	}); err != nil {
		t.Fatalf("View of undamaged record: %v", err)
	}
	// A write that reads the damaged record keeps nothing.
	err = e.Update(8, func(tx WriteTx) error {
		tx.Get([]byte("victim"))
		return tx.Put([]byte("new"), []byte("v"))
	})
	if !errors.Is(err, ErrCorruptData) {
		t.Fatalf("Update reading a damaged record: %v", err)
	}
	if e.AppliedIndex() != 7 {
		t.Fatalf("applied index moved to %d after a failed update", e.AppliedIndex())
	}
	if err := e.View(func(tx ReadTx) error {
		if _, ok := tx.Get([]byte("new")); ok {
			t.Error("write of a failed update is visible")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// A snapshot of the damaged file fails rather than spreading the damage.
	snap, err := e.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, snap.AppliedIndex(), snap); !errors.Is(err, ErrCorruptData) {
		t.Fatalf("snapshot of a damaged file: %v", err)
	}
}

func TestBolt_DamagedMetaPagesAreDetected(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.db")
	seedBolt(t, path)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Both meta pages (bbolt falls back to the other one if only one is bad).
	garbage := bytes.Repeat([]byte{0xA5}, 64)
	for _, off := range []int64{16, int64(os.Getpagesize()) + 16} {
		if _, err := f.WriteAt(garbage, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	_, err = OpenBolt(path, BoltOptions{})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
		t.Fatalf("OpenBolt of damaged meta pages: %v, want ErrCorrupt naming %s", err, path)
	}
}

func TestBolt_DamagedPageDoesNotPanic(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.db")
	seedBolt(t, path)
	e := openBolt(t, path)
	// Overwrite the header of the page holding the victim while the file is
	// open (the mapping is shared, so the engine sees it at once): bbolt
	// panics when it meets the page; the engine must return an error.
	ps := os.Getpagesize()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	off := bytes.Index(data, []byte("VICTIM-VALUE"))
	page := off / ps * ps
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xEE}, 16), int64(page)); err != nil {
		t.Fatal(err)
	}
	f.Close()

	err = e.View(func(tx ReadTx) error {
		tx.Get([]byte("victim"))
		return nil
	})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
		t.Fatalf("read of a damaged page: %v, want ErrCorrupt naming the file", err)
	}
	// A write is buffered: the damage shows when it is committed.
	err = e.Update(8, func(tx WriteTx) error { return tx.Put([]byte("victim"), []byte("x")) })
	if err == nil {
		err = e.Flush()
	}
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("write into a damaged page: %v, want ErrCorrupt", err)
	}
	if snap, err := e.Snapshot(); err == nil {
		err = WriteSnapshot(io.Discard, snap.AppliedIndex(), snap)
		snap.Release()
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("snapshot over a damaged page: %v, want ErrCorrupt", err)
		}
	} else if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("snapshot of a damaged file: %v, want ErrCorrupt", err)
	}
	if err := e.Close(); err != nil {
		t.Logf("close: %v", err)
	}

	// After a reopen the damage is still reported, never read as data.
	e2, err := OpenBolt(path, BoltOptions{})
	if err != nil {
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
			t.Fatalf("OpenBolt: %v, want ErrCorrupt naming the file", err)
		}
		return
	}
	defer e2.Close()
	if err := e2.View(func(tx ReadTx) error { tx.Get([]byte("victim")); return nil }); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read of a damaged page after reopen: %v, want ErrCorrupt", err)
	}
}

func TestOpen_GarbageFilesAreCorrupt(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	garbage := make([]byte, 64<<10)
	for i := range garbage {
		garbage[i] = byte(rng.Uint32())
	}
	dir := t.TempDir()
	data, logs := filepath.Join(dir, "data.db"), filepath.Join(dir, "raft.db")
	for _, p := range []string{data, logs} {
		if err := os.WriteFile(p, garbage, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := OpenBolt(data, BoltOptions{}); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), data) {
		t.Fatalf("OpenBolt(garbage): %v", err)
	}
	if _, err := OpenLogStore(logs, LogStoreOptions{}); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), logs) {
		t.Fatalf("OpenLogStore(garbage): %v", err)
	}
	if !errors.Is(ErrCorruptLog, ErrCorrupt) || !errors.Is(ErrCorruptSnapshot, ErrCorrupt) || !errors.Is(ErrCorruptData, ErrCorrupt) {
		t.Fatal("the specific corruption errors do not wrap ErrCorrupt")
	}
}

func TestBolt_UnknownFormatIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		tx.CreateBucket(bucketData)
		m, _ := tx.CreateBucket(bucketMeta)
		return m.Put(keyFormat, []byte{99})
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenBolt(path, BoltOptions{}); err == nil || !strings.Contains(err.Error(), "format 99") {
		t.Fatalf("OpenBolt of format 99: %v", err)
	}
}
