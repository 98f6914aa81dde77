package storage

import (
	"bytes"
	"errors"
	"os"
	"syscall"
	"testing"

	"github.com/hashicorp/raft"
)

// installFaults installs a fault set for the rest of the test: the nth
// operation of op fails with err (a power loss if err is nil; n == 0
// only counts).
func installFaults(t *testing.T, op faultOp, n int, err error) *faultSet {
	t.Helper()
	fs := newFaultSet(op, n, err)
	faults.Store(fs)
	t.Cleanup(func() { faults.Store(nil) })
	return fs
}

// crashNow acts as a power loss: what was not synced is gone, and every
// later operation through the seam fails.
func (fs *faultSet) crashNow() {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if !fs.crashed {
		fs.powerLoss()
	}
}

// afterCrash simulates a power loss under the open store s and returns the
// path of a copy of what it left, with the fault set removed.
func afterCrash(t *testing.T, fs *faultSet, s *LogStore) string {
	t.Helper()
	fs.crashNow()
	path := crashCopy(t, s)
	faults.Store(nil)
	return path
}

func tailSalt(t *testing.T, s *LogStore) []byte {
	t.Helper()
	b, err := os.ReadFile(s.tailPath)
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte{}, b[8:16]...)
}

func logsWithTerm(first, last, term uint64) []*raft.Log {
	logs := lsTestLogs(first, last)
	for _, l := range logs {
		l.Term = term
	}
	return logs
}

// TestLogTail_WriteErrorStartsNewEpoch: after a failed append (half of
// its frames written), the tail is not appended to as it is: the next
// StoreLogs starts a new epoch, so the frames of the failed batch are not
// replayed after a shorter batch written where they were.
func TestLogTail_WriteErrorStartsNewEpoch(t *testing.T) {
	s := lsOpenTestStore(t, LogStoreOptions{})
	if err := s.StoreLogs(lsTestLogs(1, 10)); err != nil {
		t.Fatal(err)
	}
	salt := tailSalt(t, s)
	fs := installFaults(t, opWrite, 1, syscall.EIO)
	if err := s.StoreLogs(logsWithTerm(11, 30, 2)); !errors.Is(err, syscall.EIO) {
		t.Fatalf("StoreLogs with a failing write: %v", err)
	}
	if err := s.StoreLogs(logsWithTerm(11, 12, 2)); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(tailSalt(t, s), salt) {
		t.Fatal("the tail goes on under the salt of the failed write")
	}
	c := openAt(t, afterCrash(t, fs, s))
	if last, _ := c.LastIndex(); last != 12 {
		t.Fatalf("LastIndex after the crash = %d, want 12 (frames of the failed write replayed)", last)
	}
}

// TestLogTail_SyncErrorStartsNewEpoch: a failed fdatasync of an append (its
// data then lost at a power loss, as Linux may) leaves the tail to a new
// epoch; what was acknowledged before and after survives a power loss.
func TestLogTail_SyncErrorStartsNewEpoch(t *testing.T) {
	s := lsOpenTestStore(t, LogStoreOptions{})
	if err := s.StoreLogs(lsTestLogs(1, 10)); err != nil {
		t.Fatal(err)
	}
	salt := tailSalt(t, s)
	fs := installFaults(t, opSync, 1, syscall.EIO)
	if err := s.StoreLogs(lsTestLogs(11, 20)); !errors.Is(err, syscall.EIO) {
		t.Fatalf("StoreLogs with a failing sync: %v", err)
	}
	if err := s.StoreLogs(lsTestLogs(11, 20)); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(tailSalt(t, s), salt) {
		t.Fatal("the tail goes on under the salt of the failed sync")
	}
	if err := s.StoreLogs(lsTestLogs(21, 25)); err != nil {
		t.Fatal(err)
	}
	assertRange(t, openAt(t, afterCrash(t, fs, s)), 1, 25)
}

// TestLogTail_HeaderSyncError: when the header of a new epoch fails to
// sync, nothing is appended under that epoch until a header is durable, so
// no acknowledged entry is lost at a power loss.
func TestLogTail_HeaderSyncError(t *testing.T) {
	for _, failures := range []int{1, 2} {
		s := lsOpenTestStore(t, LogStoreOptions{})
		if err := s.StoreLogs(lsTestLogs(1, 10)); err != nil {
			t.Fatal(err)
		}
		// The checkpoint's header sync fails (and, with 2, the retry's).
		fs := installFaults(t, opSync, 1, syscall.EIO)
		if err := s.Checkpoint(); !errors.Is(err, syscall.EIO) {
			t.Fatalf("Checkpoint with a failing sync: %v", err)
		}
		acked := uint64(10)
		for try := 0; try < 6 && acked < 40; try++ {
			if failures == 2 && try == 0 {
				fs.mu.Lock()
				fs.fired, fs.n = false, fs.counts[opSync]+1
				fs.mu.Unlock()
			}
			// Like raft, send again what was not acknowledged.
			if err := s.StoreLogs(lsTestLogs(acked+1, acked+10)); err != nil {
				t.Logf("StoreLogs(%d..%d): %v", acked+1, acked+10, err)
				continue
			}
			acked += 10
		}
		if acked < 40 {
			t.Fatalf("only %d acknowledged", acked)
		}
		assertRange(t, openAt(t, afterCrash(t, fs, s)), 1, acked)
	}
}
