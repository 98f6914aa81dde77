package kv_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/internal/storage"
	"github.com/cohortkv/kv/kvtest"
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
	dir := mountTmpfs(t, "96m")
	// A filler to free later: room for the data file to take in what
	// waited in memory, and for the Raft log's tail (8 MiB) to move into
	// raft.db.
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, 64<<20), 0o600); err != nil {
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
		t.Fatalf("wrote %d × 256 KiB into a 96 MiB filesystem without an error", acked)
	}
	t.Logf("disk full after %d writes: %v", acked, werr)
	// Either Raft failed to append it (its entry may be on disk all the
	// same: outcome unknown), or the leader refused it before Raft
	// (nothing written); both say why.
	if !errors.Is(werr, storage.ErrDiskFull) || !errors.Is(werr, kv.ErrDiskFull) {
		t.Errorf("write failed for lack of space: %v, want ErrDiskFull", werr)
	}
	if !errors.Is(werr, kv.ErrOutcomeUnknown) && !strings.Contains(werr.Error(), "nothing written") {
		t.Errorf("write failed for lack of space: %v, want ErrOutcomeUnknown or a refusal", werr)
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

// Three members, each on its own small file system, written to until the
// disks fill, then given space again. While full: no crash, no leader
// churn, reads of what was acknowledged work on every member, and writes
// fail with ErrDiskFull. Once space is freed, writes resume on their own,
// nothing acknowledged is lost, and every Close returns promptly.
func TestCluster_DiskFullUnderLoad(t *testing.T) {
	const n = 3
	var dirs, fillers []string
	for i := 0; i < n; i++ {
		dir := mountTmpfs(t, "96m")
		filler := filepath.Join(dir, "filler")
		if err := os.WriteFile(filler, make([]byte, 64<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		dirs, fillers = append(dirs, dir), append(fillers, filler)
	}
	c := kvtest.NewCluster(t, n, kvtest.Logger(testLogger(t)), kvtest.Configure(func(i int, cfg *kv.Config) {
		cfg.DataDir = filepath.Join(dirs[i], "kv")
		cfg.MaxValueSize = 1 << 20
	}))
	ctx := ctxT(t, 4*time.Minute)
	l, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	val := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i%26)}, 64<<10) }
	acked := map[int]bool{}
	var werr error
	start := time.Now()
	for i := 0; i < 4000 && time.Since(start) < 90*time.Second; i++ {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		werr = c.Node(i%n).Set(wctx, fmt.Sprintf("big/%05d", i), val(i))
		cancel()
		if werr == nil {
			acked[i] = true
			continue
		}
		if errors.Is(werr, kv.ErrDiskFull) {
			break
		}
		t.Logf("write %d: %v", i, werr)
	}
	if !errors.Is(werr, kv.ErrDiskFull) {
		t.Fatalf("after %d acknowledged writes, the last error is %v, want ErrDiskFull", len(acked), werr)
	}
	t.Logf("disks full after %d acknowledged writes: %v", len(acked), werr)

	// While full: the same leader over a few seconds, reads everywhere,
	// writes refused on every member.
	l, err = c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	term := c.Node(l).Stats().Term
	time.Sleep(3 * time.Second)
	if st := c.Node(l).Stats(); st.State != kv.StateLeader || st.Term != term {
		t.Fatalf("leadership moved while the disks were full: term %d -> %+v", term, st)
	}
	for i := 0; i < n; i++ {
		for k := range acked {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			v, err := c.Node(i).Get(rctx, fmt.Sprintf("big/%05d", k))
			cancel()
			if err != nil || !bytes.Equal(v, val(k)) {
				t.Fatalf("read big/%05d on node%d while full: %d bytes, %v", k, i, len(v), err)
			}
			break // one linearizable read per member; the rest below
		}
		// Compaction may free some room meanwhile: a write either
		// goes in or is refused with ErrDiskFull.
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := c.Node(i).Set(wctx, "while-full", []byte("x"))
		cancel()
		if err != nil && !errors.Is(err, kv.ErrDiskFull) {
			t.Fatalf("write on node%d while full: %v, want nil or ErrDiskFull", i, err)
		}
	}

	for _, f := range fillers {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < n; i++ {
		deadline := time.Now().Add(60 * time.Second)
		for {
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := c.Node(i).Set(wctx, fmt.Sprintf("after/%d", i), []byte("space"))
			cancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("writes on node%d did not resume after space was freed: %v", i, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for i := 0; i < n; i++ {
		got, err := c.Node(i).List(ctx, "big/")
		if err != nil {
			t.Fatalf("List on node%d: %v", i, err)
		}
		have := map[string][]byte{}
		for _, p := range got {
			have[p.Key] = p.Value
		}
		for k := range acked {
			if v, ok := have[fmt.Sprintf("big/%05d", k)]; !ok || !bytes.Equal(v, val(k)) {
				t.Fatalf("acknowledged big/%05d lost on node%d", k, i)
			}
		}
	}
	for i := 0; i < n; i++ {
		done := make(chan struct{})
		s := c.Node(i)
		go func() {
			if err := s.Close(); err != nil {
				t.Logf("close node%d: %v", i, err)
			}
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatalf("Close of node%d did not return within 20 s", i)
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
