package kv_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
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

// A restore whose staging fills the disk on the leader is aborted: Restore
// returns an error wrapping storage.ErrDiskFull, the old data keeps serving
// and taking writes, and the restore works once space is freed.
func TestRestore_DiskFullWhileStaging(t *testing.T) {
	dir := mountTmpfs(t, "48m")
	ctx := ctxT(t, 120*time.Second)
	src, err := kv.Open(kv.Config{NodeID: "src", InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if err := src.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	val := bytes.Repeat([]byte("r"), 1000)
	for i := 0; i < 3000; i++ {
		if err := src.Set(ctx, fmt.Sprintf("new/%04d", i), val); err != nil {
			t.Fatal(err)
		}
	}
	var backup bytes.Buffer
	if err := src.Backup(ctx, &backup); err != nil {
		t.Fatal(err)
	}
	s, err := kv.Open(kv.Config{NodeID: "solo", DataDir: filepath.Join(dir, "kv")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "old", []byte("1")); err != nil {
		t.Fatal(err)
	}
	// Room for the leader's checked copy and a third of the staging.
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	free := int64(st.Bavail) * st.Bsize
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, free-int64(backup.Len())*4/3), 0o600); err != nil {
		t.Fatal(err)
	}
	err = s.Restore(ctx, bytes.NewReader(backup.Bytes()))
	if !errors.Is(err, storage.ErrDiskFull) {
		t.Fatalf("Restore on a full disk: %v, want storage.ErrDiskFull", err)
	}
	t.Logf("Restore: %v", err)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Get(ctx, "old"); err != nil || string(v) != "1" {
		t.Fatalf("old data after the failed restore: %q, %v", v, err)
	}
	if err := s.Set(ctx, "old", []byte("2")); err != nil {
		t.Fatalf("write after the failed restore: %v", err)
	}
	if err := s.Restore(ctx, bytes.NewReader(backup.Bytes())); err != nil {
		t.Fatalf("Restore with space: %v", err)
	}
	if got, err := s.List(ctx, ""); err != nil || len(got) != 3000 {
		t.Fatalf("restored %d pairs, %v", len(got), err)
	}
}
