package storage

import (
	"os"
	"path/filepath"
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
