//go:build linux

package storage

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// mappingFlags returns the VmFlags of the mapping that contains addr, from
// /proc/self/smaps ("rr": MADV_RANDOM, "sr": MADV_SEQUENTIAL).
func mappingFlags(t *testing.T, addr uintptr) []string {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	in := false
	for sc.Scan() {
		line := sc.Text()
		if r, _, ok := strings.Cut(line, " "); ok && strings.Contains(r, "-") && !strings.HasSuffix(r, ":") {
			lo, hi, _ := strings.Cut(r, "-")
			start, err1 := strconv.ParseUint(lo, 16, 64)
			end, err2 := strconv.ParseUint(hi, 16, 64)
			in = err1 == nil && err2 == nil && uint64(addr) >= start && uint64(addr) < end
			continue
		}
		if v, ok := strings.CutPrefix(line, "VmFlags:"); in && ok {
			return strings.Fields(v)
		}
	}
	t.Fatalf("no mapping contains %#x", addr)
	return nil
}

// advice returns "sequential", "random" or "normal" for the mapping that
// contains addr.
func advice(t *testing.T, addr uintptr) string {
	t.Helper()
	fl := mappingFlags(t, addr)
	switch {
	case slices.Contains(fl, "sr"):
		return "sequential"
	case slices.Contains(fl, "rr"):
		return "random"
	}
	return "normal"
}

func TestReadAheadMapped(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "data.db")
	writePatternFile(t, path, 4<<20)
	a, b := mapFile(t, path, true), mapFile(t, path, true)
	private := mapFile(t, path, false)
	for _, m := range [][]byte{a, b, private} {
		if err := unix.Madvise(m, unix.MADV_RANDOM); err != nil { // as bbolt does
			t.Fatal(err)
		}
	}
	restore := readAheadMapped(path, addrOf(a)+8192)
	if got := advice(t, addrOf(a)); got != "sequential" {
		t.Errorf("mapping containing the address: advice %s, want sequential", got)
	}
	if got := advice(t, addrOf(b)); got != "random" {
		t.Errorf("other mapping of the file: advice %s, want random (untouched)", got)
	}
	if got := advice(t, addrOf(private)); got != "random" {
		t.Errorf("private mapping of the file: advice %s, want random (untouched)", got)
	}
	restore()
	if got := advice(t, addrOf(a)); got != "random" {
		t.Errorf("after restore: advice %s, want random (bbolt's)", got)
	}
	touch(a) // still maps the file
}

// A snapshot's scan reads its copy with readahead, and leaves bbolt's
// advice in place afterwards.
func TestSnapshotScanReadsAhead(t *testing.T) {
	e := openBolt(t, filepath.Join(t.TempDir(), "data.db"))
	mustUpdate(t, e, 1, func(tx WriteTx) error {
		for i := range 64 {
			if err := tx.Put(fmt.Appendf(nil, "k%03d", i), make([]byte, 8<<10)); err != nil {
				return err
			}
		}
		return nil
	})
	snap, err := e.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	bs := snap.(*boltSnap)
	if _, err := bs.load(); err != nil {
		t.Fatal(err)
	}
	addr := bs.db.Info().Data
	if got := advice(t, addr); got != "random" {
		t.Fatalf("copy before the scan: advice %s, want random (bbolt's)", got)
	}
	n := 0
	var during string
	if err := snap.Scan(nil, func(k, v []byte) bool {
		if n++; n == 32 {
			during = advice(t, addr)
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if n != 64 {
		t.Fatalf("scan saw %d pairs, want 64", n)
	}
	if during != "sequential" {
		t.Errorf("copy during the scan: advice %s, want sequential", during)
	}
	if got := advice(t, addr); got != "random" {
		t.Errorf("copy after the scan: advice %s, want random (bbolt's)", got)
	}
}

// Verify, which reads the whole log after the last snapshot at Open, reads
// raft.db with readahead, and leaves bbolt's advice in place afterwards.
func TestVerifyReadsAhead(t *testing.T) {
	s := lsOpenTestStore(t, LogStoreOptions{})
	if err := s.StoreLogs(lsTestLogs(1, 50)); err != nil {
		t.Fatal(err)
	}
	var during []string
	verifyHook = func() { during = append(during, advice(t, s.db.Info().Data)) }
	defer func() { verifyHook = nil }()
	if err := s.Verify(1); err != nil {
		t.Fatal(err)
	}
	verifyHook = nil
	if len(during) != 50 {
		t.Fatalf("Verify checked %d entries, want 50", len(during))
	}
	for i, a := range during {
		if a != "sequential" {
			t.Fatalf("entry %d: advice %s during Verify, want sequential", i+1, a)
		}
	}
	if got := advice(t, s.db.Info().Data); got != "random" {
		t.Errorf("after Verify: advice %s, want random (bbolt's)", got)
	}
}
