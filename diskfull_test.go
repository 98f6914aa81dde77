package kv_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/storage"
)

// mountTmpfs mounts a size-limited tmpfs for the test, or skips.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("disk-full test needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// When the disk fills, writes fail with an error, the instance stays up and
// keeps serving what it acknowledged, and writes work again once space is
// freed.
func TestStore_DiskFull(t *testing.T) {
	dir := mountTmpfs(t, "24m")
	// A filler to free later.
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, 6<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := kv.Open(kv.Config{NodeID: "solo", DataDir: filepath.Join(dir, "kv"), MaxValueSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := ctxT(t, 120*time.Second)
	if err := s.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	val := bytes.Repeat([]byte("x"), 256<<10)
	acked := 0
	var werr error
	for i := 0; i < 400; i++ {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		werr = s.Set(wctx, fmt.Sprintf("big/%04d", i), val)
		cancel()
		if werr != nil {
			break
		}
		acked++
	}
	if werr == nil {
		t.Fatalf("wrote %d × 256 KiB into a 24 MiB filesystem without an error", acked)
	}
	t.Logf("disk full after %d writes: %v", acked, werr)
	// The write was handed to Raft: its entry may be on disk all the same.
	if !errors.Is(werr, kv.ErrOutcomeUnknown) {
		t.Errorf("write failed for lack of space: %v, want ErrOutcomeUnknown", werr)
	}
	if !errors.Is(werr, storage.ErrDiskFull) {
		t.Errorf("write failed for lack of space: %v, want storage.ErrDiskFull", werr)
	}
	// Still up: reads of acknowledged data work.
	for i := 0; i < acked; i++ {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		v, err := s.Get(rctx, fmt.Sprintf("big/%04d", i), kv.Stale())
		cancel()
		if err != nil || len(v) != len(val) {
			t.Fatalf("acknowledged big/%04d while full: %d bytes, %v", i, len(v), err)
		}
	}
	// Free space: writes work again.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := s.Set(wctx, "after", []byte("space"))
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("writes did not resume after space was freed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for i := 0; i < acked; i++ {
		if v, err := s.Get(ctx, fmt.Sprintf("big/%04d", i)); err != nil || len(v) != len(val) {
			t.Fatalf("acknowledged big/%04d after recovery: %d bytes, %v", i, len(v), err)
		}
	}
}
