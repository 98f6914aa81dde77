package storage

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestMkdirAllSynced(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "a", "b", "c")
	if err := MkdirAllSynced(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Fatalf("not created: %v", err)
	}
	if err := MkdirAllSynced(dir, 0o700); err != nil { // exists: nothing to do
		t.Fatal(err)
	}
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := MkdirAllSynced(filepath.Join(file, "x"), 0o700); err == nil {
		t.Fatal("MkdirAllSynced under a file succeeded")
	}
}

// The directories MkdirAllSynced creates are made durable: it syncs their
// parents, and says so when that fails.
func TestMkdirAllSynced_SyncsParents(t *testing.T) {
	base := t.TempDir()
	fs := newFaultSet(opSync, 1, syscall.EIO)
	faults.Store(fs)
	defer faults.Store(nil)
	if err := MkdirAllSynced(filepath.Join(base, "a", "b"), 0o700); !errors.Is(err, syscall.EIO) {
		t.Fatalf("MkdirAllSynced with a failing directory sync: %v, want EIO", err)
	}
	faults.Store(nil)
	fs = newFaultSet(opSync, 0, nil) // only counts
	faults.Store(fs)
	if err := MkdirAllSynced(filepath.Join(base, "c", "d", "e"), 0o700); err != nil {
		t.Fatal(err)
	}
	if n := fs.count(opSync); n != 3 {
		t.Fatalf("%d directory syncs for three new directories, want 3", n)
	}
}
