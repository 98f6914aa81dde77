//go:build linux

package storage

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mapFile maps the file at path; shared read-only, or private read-write.
func mapFile(t *testing.T, path string, shared bool) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	prot, flags := unix.PROT_READ, unix.MAP_SHARED
	if !shared {
		prot, flags = unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE
	}
	b, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), prot, flags)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

// touch reads one byte of every page of b, so that all of it is resident.
func touch(b []byte) (sum byte) {
	for i := 0; i < len(b); i += os.Getpagesize() {
		sum += b[i]
	}
	return sum
}

func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

// mappingRSS returns the resident bytes of the mapping that contains addr,
// from /proc/self/smaps.
func mappingRSS(t *testing.T, addr uintptr) int64 {
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
		if in && strings.HasPrefix(line, "Rss:") {
			kb, err := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no mapping contains %#x", addr)
	return 0
}

// statusBytes returns a "kB" field of /proc/self/status, in bytes.
func statusBytes(t *testing.T, field string) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/self/status", field)
	return 0
}

func writePatternFile(t *testing.T, path string, size int) []byte {
	t.Helper()
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7 + i>>12)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return data
}

func TestReleaseMapped(t *testing.T) {
	const size = 64 << 20
	dir := t.TempDir()
	path := filepath.Join(dir, "data.db")
	want := writePatternFile(t, path, size)
	// A file whose name starts with the same path, mapped and resident: it
	// must stay so.
	decoyPath := path + ".restore"
	writePatternFile(t, decoyPath, 4<<20)

	shared := mapFile(t, path, true)
	decoy := mapFile(t, decoyPath, true)
	private := mapFile(t, path, false) // of the same file, written to
	for i := 0; i < len(private); i += os.Getpagesize() {
		private[i] = ^want[i]
	}
	anon, err := unix.Mmap(-1, 0, 8<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(anon)
	for i := range anon {
		anon[i] = byte(i * 13)
	}
	heap := bytes.Repeat([]byte{0xa5}, 8<<20)
	touch(shared)
	touch(decoy)

	if got := mappingRSS(t, addrOf(shared)); got < size*9/10 {
		t.Fatalf("shared mapping: %d bytes resident after reading all of it, want about %d", got, size)
	}
	fileBefore := statusBytes(t, "RssFile")
	anonBefore := mappingRSS(t, addrOf(anon))

	if err := releaseMapped(path, 0); err != nil {
		t.Fatalf("releaseMapped: %v", err)
	}

	if got := mappingRSS(t, addrOf(shared)); got > 1<<20 {
		t.Errorf("shared mapping: %d bytes resident after releaseMapped, want about 0", got)
	}
	if after := statusBytes(t, "RssFile"); fileBefore-after < size*8/10 {
		t.Errorf("RssFile went from %d to %d after releaseMapped of a %d-byte mapping", fileBefore, after, size)
	}
	if got := mappingRSS(t, addrOf(anon)); got != anonBefore {
		t.Errorf("anonymous mapping: %d bytes resident after releaseMapped, %d before", got, anonBefore)
	}
	if got := mappingRSS(t, addrOf(decoy)); got < 4<<20 {
		t.Errorf("mapping of %s: %d bytes resident after releaseMapped of %s, want all of it", decoyPath, got, path)
	}
	if got := mappingRSS(t, addrOf(private)); got < size*9/10 {
		t.Errorf("private mapping of the file: %d bytes resident after releaseMapped, want its written pages", got)
	}
	for i := range anon {
		if anon[i] != byte(i*13) {
			t.Fatalf("anonymous mapping changed at %d", i)
		}
	}
	for i := 0; i < len(private); i += os.Getpagesize() {
		if private[i] != ^want[i] {
			t.Fatalf("private mapping lost its write at %d", i)
		}
	}
	if !bytes.Equal(heap, bytes.Repeat([]byte{0xa5}, 8<<20)) {
		t.Fatal("heap changed")
	}
	if !bytes.Equal(shared, want) {
		t.Fatal("shared mapping reads back different bytes after releaseMapped")
	}
}

func TestReleaseMappedAtAddress(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "data.db")
	writePatternFile(t, path, 8<<20)
	a, b := mapFile(t, path, true), mapFile(t, path, true)
	touch(a)
	touch(b)
	if err := releaseMapped(path, addrOf(b)+4096); err != nil {
		t.Fatal(err)
	}
	if got := mappingRSS(t, addrOf(b)); got > 256<<10 {
		t.Errorf("mapping containing the address: %d bytes resident, want about 0", got)
	}
	if got := mappingRSS(t, addrOf(a)); got < 8<<20 {
		t.Errorf("other mapping of the same file: %d bytes resident, want all of it", got)
	}
}

func TestReleaseMappedDeletedAndSymlinked(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "data.db")
	want := writePatternFile(t, path, 8<<20)
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	m := mapFile(t, path, true)

	touch(m)
	if err := releaseMapped(filepath.Join(link, "data.db"), 0); err != nil {
		t.Fatal(err)
	}
	if got := mappingRSS(t, addrOf(m)); got > 256<<10 {
		t.Errorf("through a symbolic link: %d bytes resident, want about 0", got)
	}

	// Renamed over, as Restore does: the mapping shows "... (deleted)".
	if err := os.WriteFile(path+".new", []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
	touch(m)
	if err := releaseMapped(path, 0); err != nil {
		t.Fatal(err)
	}
	if got := mappingRSS(t, addrOf(m)); got > 256<<10 {
		t.Errorf("renamed over: %d bytes resident, want about 0", got)
	}
	os.Remove(path)
	touch(m)
	if err := releaseMapped(path, 0); err != nil {
		t.Fatal(err)
	}
	if got := mappingRSS(t, addrOf(m)); got > 256<<10 {
		t.Errorf("removed: %d bytes resident, want about 0", got)
	}
	if !bytes.Equal(m, want) {
		t.Fatal("mapping reads back different bytes")
	}
}

func TestParseMaps(t *testing.T) {
	maps := `00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus-daemon
7f0000000000-7f0040000000 r--s 00000000 fd:01 42         /var/lib/my app/data.db
7f0040000000-7f0050000000 r--s 00000000 fd:01 43         /var/lib/my app/data.db (deleted)
7f0050000000-7f0060000000 r--p 00000000 fd:01 42         /var/lib/my app/data.db
7f0060000000-7f0070000000 r--s 00000000 fd:01 44         /var/lib/my app/data.db.restore
7f0070000000-7f0080000000 r--s 00000000 fd:01 45         /var/lib/my app/data.dbx (deleted)
7f0080000000-7f0090000000 rw-p 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0          [stack]
7f0090000000-7f00a0000000 rw-s 00000000 fd:01 42         /var/lib/my app/data.db`
	got := parseMaps([]byte(maps), "/var/lib/my app/data.db")
	want := []mappedRange{
		{0x7f0000000000, 0x7f0040000000},
		{0x7f0040000000, 0x7f0050000000},
		{0x7f0090000000, 0x7f00a0000000},
	}
	if len(got) != len(want) {
		t.Fatalf("parseMaps = %x, want %x", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("parseMaps = %x, want %x", got, want)
		}
	}
}
