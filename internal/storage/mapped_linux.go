//go:build linux

package storage

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// releaseMapped drops the pages of this process's shared mappings of the
// file at path from its resident memory, with madvise(MADV_DONTNEED). With
// addr 0 it does so for every shared mapping of the file; otherwise only for
// the one that contains addr (bbolt's: bolt.DB.Info().Data).
//
// bbolt reads its file through a read-only MAP_SHARED mapping, and every
// page a read touches stays counted in the process's RSS until the mapping
// goes: a snapshot that streams a 1 GiB file, or the freelist rebuild of
// bolt.Open with NoFreelistSync, leaves the process at 1 GiB resident.
// For a shared file mapping MADV_DONTNEED only drops the page-table entries:
// the data stay in the page cache (dirty pages included, they belong to the
// file) and the next access faults them back in. It changes no data.
//
// Only mappings whose pathname in /proc/self/maps is exactly the file's
// absolute path, or that path followed by " (deleted)" (the file was
// removed or renamed over while mapped), and that are shared are touched;
// private mappings of the file (whose written pages MADV_DONTNEED would
// discard), anonymous memory and every other mapping are never touched.
//
// The caller must make sure that the mappings it releases are not unmapped
// while the call runs, or the range might by then hold other memory: with
// addr, hold a bbolt transaction of that DB open (bbolt remaps and closes
// only while no transaction is open), or be its only user. Without Linux it
// does nothing (mapped_other.go).
func releaseMapped(path string, addr uintptr) error {
	return madviseMapped(path, addr, unix.MADV_DONTNEED, "release")
}

// readAheadMapped makes the kernel read ahead on page faults in this
// process's shared mapping of the file at path that contains addr
// (madvise(MADV_SEQUENTIAL)), and returns a func that sets bbolt's advice
// (MADV_RANDOM) back. Call both while the mapping stays in place, as for
// releaseMapped: with a bbolt transaction of that DB open, or as its only
// user.
//
// bbolt advises MADV_RANDOM on its mapping, so that the kernel reads no
// more than the page a fault needs: right for point reads, but a walk of
// the whole file with a cold page cache then becomes one 4 KiB read per
// page (50-115 s for 1.2-2.8 GB that a sequential read takes 2-5 s for).
// With MADV_SEQUENTIAL a fault reads the kernel's readahead window, and a
// walk in file order streams. Only the access advice changes; data and
// resident pages are as without it. Without Linux it does nothing.
func readAheadMapped(path string, addr uintptr) (restore func()) {
	if madviseMapped(path, addr, unix.MADV_SEQUENTIAL, "read ahead") != nil {
		return func() {}
	}
	return func() { _ = madviseMapped(path, addr, unix.MADV_RANDOM, "read ahead") }
}

// madviseMapped calls madvise with advice on this process's shared
// mappings of the file at path (every one with addr 0, else the one that
// contains addr). See releaseMapped.
func madviseMapped(path string, addr uintptr, advice int, what string) error {
	want, err := mappedName(path)
	if err != nil {
		return err
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return fmt.Errorf("storage: %s mapped %s: %w", what, path, err)
	}
	for _, r := range parseMaps(maps, want) {
		if addr != 0 && (addr < r.start || addr >= r.end) {
			continue
		}
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, r.start, r.end-r.start, uintptr(advice)); errno != 0 {
			return fmt.Errorf("storage: %s mapped %s [%#x-%#x]: madvise: %w", what, path, r.start, r.end, errno)
		}
	}
	return nil
}

// mappedName returns the name the kernel shows in /proc/self/maps for the
// file at path: absolute, with symbolic links resolved, and with a newline
// escaped as \012.
func mappedName(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("storage: mapped %s: %w", path, err)
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	} else if dir, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
		abs = filepath.Join(dir, filepath.Base(abs)) // the file is gone
	}
	return strings.ReplaceAll(abs, "\n", `\012`), nil
}

type mappedRange struct{ start, end uintptr }

// parseMaps returns the shared mappings of the file named name (as
// mappedName returns it) in the text of /proc/<pid>/maps.
func parseMaps(maps []byte, name string) []mappedRange {
	var out []mappedRange
	for len(maps) > 0 {
		line := maps
		if i := bytes.IndexByte(maps, '\n'); i >= 0 {
			line, maps = maps[:i], maps[i+1:]
		} else {
			maps = nil
		}
		// address perms offset dev inode [pathname]; the pathname is the
		// rest of the line after the padding and may contain spaces.
		rest := string(line)
		var fields [5]string
		ok := true
		for i := range fields {
			rest = strings.TrimLeft(rest, " ")
			j := strings.IndexByte(rest, ' ')
			if j < 0 {
				ok = false // no pathname: anonymous
				break
			}
			fields[i], rest = rest[:j], rest[j:]
		}
		if !ok {
			continue
		}
		pathname := strings.TrimLeft(rest, " ")
		if pathname != name && pathname != name+" (deleted)" {
			continue
		}
		if perms := fields[1]; len(perms) != 4 || perms[3] != 's' {
			continue // private: its written pages exist nowhere else
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		out = append(out, mappedRange{uintptr(start), uintptr(end)})
	}
	return out
}
