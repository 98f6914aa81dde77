package storage

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/hashicorp/raft"
)

// smallTail makes the tail files created during the test small.
func smallTail(t *testing.T, size, reserve int) {
	t.Helper()
	oldSize, oldReserve := tailSize, tailReserve
	tailSize, tailReserve = size, reserve
	t.Cleanup(func() { tailSize, tailReserve = oldSize, oldReserve })
}

// withType returns logs with their type set to typ.
func withType(logs []*raft.Log, typ raft.LogType) []*raft.Log {
	for _, l := range logs {
		l.Type = typ
	}
	return logs
}

// withData returns logs with their data set to data.
func withData(logs []*raft.Log, data []byte) []*raft.Log {
	for _, l := range logs {
		l.Data = data
	}
	return logs
}

// fillTail stores batches of n logs of data from next on until the next
// batch would not fit in the tail's part before the reserve, then single
// test logs until one would not fit; it returns the next index.
func fillTail(t *testing.T, s *LogStore, next uint64, n int, data []byte) uint64 {
	t.Helper()
	for range 100000 {
		logs := lsTestLogs(next, next+uint64(n)-1)
		if data != nil {
			withData(logs, data)
		}
		size := 0
		for _, l := range logs {
			size += tailFrameHeader + encodedLogSize(l)
		}
		if s.tailOff+size > s.tailLen-tailHeaderSize-tailReserve {
			if n == 1 && data == nil {
				return next
			}
			n, data = 1, nil
			continue
		}
		if err := s.StoreLogs(logs); err != nil {
			t.Fatalf("StoreLogs(%d..): %v", next, err)
		}
		next += uint64(len(logs))
	}
	t.Fatal("the tail never filled")
	return 0
}

// TestLogStore_DiskFullKeepsRaftGoing: when a checkpoint fails for lack of
// space, a batch with commands fails with ErrDiskFull, while batches
// without commands go into the tail's reserve and raft's term and vote are
// still written; once there is space again, Checkpoint clears DiskFull and
// everything acknowledged is there.
func TestLogStore_DiskFullKeepsRaftGoing(t *testing.T) {
	smallTail(t, 64<<10, 8<<10)
	s := lsOpenTestStore(t, LogStoreOptions{})
	data := make([]byte, 1000)
	next := fillTail(t, s, 1, 4, data)
	fs := installFaults(t, opCommit, 1, syscall.ENOSPC)
	fs.sticky = true

	err := s.StoreLogs(withData(lsTestLogs(next, next+3), data))
	if !errors.Is(err, ErrDiskFull) {
		t.Fatalf("StoreLogs of commands with the disk full: %v, want ErrDiskFull", err)
	}
	if !s.DiskFull() {
		t.Fatal("DiskFull is false after a checkpoint failed for space")
	}
	// The no-op of a new leader, a configuration change, a barrier: into
	// the reserve.
	for _, typ := range []raft.LogType{raft.LogNoop, raft.LogConfiguration, raft.LogBarrier} {
		if err := s.StoreLogs(withType(lsTestLogs(next, next), typ)); err != nil {
			t.Fatalf("StoreLogs of a %v with the disk full: %v", typ, err)
		}
		next++
	}
	if err := s.SetUint64(keyTerm, 9); err != nil {
		t.Fatalf("SetUint64(CurrentTerm) with the disk full: %v", err)
	}
	if err := s.Set(keyVoteCand, []byte("node-1")); err != nil {
		t.Fatalf("Set(LastVoteCand) with the disk full: %v", err)
	}
	if err := s.Set([]byte("other"), []byte("x")); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("Set of a bbolt key with the disk full: %v, want ErrDiskFull", err)
	}
	// The reserve runs out too.
	var filled bool
	for range 1000 {
		if err := s.StoreLogs(withType(lsTestLogs(next, next), raft.LogNoop)); err != nil {
			if !errors.Is(err, ErrDiskFull) {
				t.Fatalf("StoreLogs once the reserve is full: %v, want ErrDiskFull", err)
			}
			filled = true
			break
		}
		next++
	}
	if !filled {
		t.Fatal("the reserve never filled")
	}
	if err := s.Checkpoint(); !errors.Is(err, ErrDiskFull) || !s.DiskFull() {
		t.Fatalf("Checkpoint with the disk full: %v (DiskFull %v)", err, s.DiskFull())
	}

	// Everything acknowledged survives a crash while the disk is full.
	c := openCopyAfterCrashKeepingFaults(t, fs, s)
	checkLogs(t, c, 1, next-1)
	if got := mustGetUint64(t, c, keyTerm); got != 9 {
		t.Fatalf("CurrentTerm after the crash = %d, want 9", got)
	}

	// Space is back.
	fs.mu.Lock()
	fs.n = 0
	fs.mu.Unlock()
	if err := s.Checkpoint(); err != nil || s.DiskFull() {
		t.Fatalf("Checkpoint with space back: %v (DiskFull %v)", err, s.DiskFull())
	}
	if err := s.StoreLogs(lsTestLogs(next, next+3)); err != nil {
		t.Fatal(err)
	}
	checkLogs(t, lsReopenTestStore(t, s), 1, next+3)
}

// openCopyAfterCrashKeepingFaults copies what the open store s would leave
// at a crash now (its files as they are: the seam has made nothing
// unsynced here) and opens the copy with the faults lifted for the open.
func openCopyAfterCrashKeepingFaults(t *testing.T, fs *faultSet, s *LogStore) *LogStore {
	t.Helper()
	path := crashCopy(t, s)
	faults.Store(nil)
	defer faults.Store(fs)
	return openAt(t, path)
}

// checkLogs checks that s holds first..last, each with the index it is
// stored under and the test log's term.
func checkLogs(t *testing.T, s *LogStore, first, last uint64) {
	t.Helper()
	f, _ := s.FirstIndex()
	l, _ := s.LastIndex()
	if f != first || l != last {
		t.Fatalf("log holds %d..%d, want %d..%d", f, l, first, last)
	}
	for i := first; i <= last; i++ {
		var got raft.Log
		if err := s.GetLog(i, &got); err != nil {
			t.Fatalf("GetLog(%d): %v", i, err)
		}
		if got.Index != i || got.Term != lsTestLog(i).Term {
			t.Fatalf("GetLog(%d): index %d term %d", i, got.Index, got.Term)
		}
	}
}

// mountTmpfs mounts a tmpfs of size bytes on a new directory and unmounts
// it at the end of the test; it skips the test when that is not possible
// (not root, no mount).
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// fillFS writes a file into dir until the file system has no space left
// but about leave bytes, and returns its path.
func fillFS(t *testing.T, dir string, leave int64) string {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	free := int64(st.Bavail) * st.Bsize
	path := filepath.Join(dir, "filler")
	if free > leave {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		chunk := make([]byte, 64<<10)
		for n := free - leave; n > 0; n -= int64(len(chunk)) {
			if _, err := f.Write(chunk[:min(int64(len(chunk)), n)]); err != nil {
				break
			}
		}
		f.Close()
	}
	return path
}

// TestLogStore_DiskFullOnTmpfs: the same on a real file system without
// space: a small tmpfs.
func TestLogStore_DiskFullOnTmpfs(t *testing.T) {
	dir := mountTmpfs(t, 48<<20)
	path := filepath.Join(dir, "raft.db")
	s, err := OpenLogStore(path, LogStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.SetUint64(keyTerm, 1); err != nil {
		t.Fatal(err)
	}
	filler := fillFS(t, dir, 0)
	data := make([]byte, 8<<10)
	next := fillTail(t, s, 1, 8, data)
	err = s.StoreLogs(withData(lsTestLogs(next, next+7), data))
	if !errors.Is(err, ErrDiskFull) || !s.DiskFull() {
		t.Fatalf("StoreLogs of commands on a full file system: %v (DiskFull %v), want ErrDiskFull", err, s.DiskFull())
	}
	t.Logf("full: %v", err)
	if err := s.StoreLogs(withType(lsTestLogs(next, next), raft.LogNoop)); err != nil {
		t.Fatalf("StoreLogs of a no-op on a full file system: %v", err)
	}
	next++
	if err := s.SetUint64(keyTerm, 2); err != nil {
		t.Fatalf("SetUint64(CurrentTerm) on a full file system: %v", err)
	}
	if err := s.Set(keyVoteCand, []byte("node-1")); err != nil {
		t.Fatalf("Set(LastVoteCand) on a full file system: %v", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := s.Checkpoint(); err != nil || s.DiskFull() {
		t.Fatalf("Checkpoint with space back: %v (DiskFull %v)", err, s.DiskFull())
	}
	if err := s.StoreLogs(lsTestLogs(next, next+7)); err != nil {
		t.Fatal(err)
	}
	next += 8
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := OpenLogStore(path, LogStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	checkLogs(t, s2, 1, next-1)
	if err := s2.Verify(1); err != nil {
		t.Fatal(err)
	}
	if got := mustGetUint64(t, s2, keyTerm); got != 2 {
		t.Fatalf("CurrentTerm = %d, want 2", got)
	}
}
