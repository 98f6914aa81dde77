//go:build linux

package storage

// BenchmarkBigStorage: snapshot and restore of 1 GiB of data in the bbolt
// engine, with the time and the peak resident memory (VmHWM) of each phase.
//
//	KV_BIG=1 go test -run '^$' -bench BigStorage -benchtime 1x -timeout 60m ./internal/storage/
//
// Without KV_BIG=1 it runs the same phases on 8 MiB, in seconds. Every phase
// runs in a fresh child process (this test binary, re-executed with
// KV_BIG_PHASE set), so that one phase's memory does not count in the
// next's peak:
//
//	load      seeds data.db directly through Engine.Update, in 64 MiB
//	          transactions (not through Raft), NoSync
//	snapshot  OpenBolt(data.db), then Snapshot + WriteSnapshot to a file,
//	          fsync'd; "open-*" metrics are the OpenBolt part alone, and
//	          VmHWM is reset after it (/proc/self/clear_refs), so that
//	          "snap-peak" is the peak while snapshotting (which includes
//	          whatever the open left resident)
//	discard   the same, to io.Discard
//	cold      the same as discard, after evicting data.db from the page
//	          cache (fsync, posix_fadvise DONTNEED), as after a reboot (the
//	          host of a virtual machine may still cache the disk)
//	restore   OpenBolt of an empty file, then Restore from the snapshot
//	          file (durable: synced, renamed, reopened)
//
// Except for "cold", the data file stays in the page cache between phases
// (a machine with 24 GB does not evict it): those figures are for a warm
// cache.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	bigFlagEnv  = "KV_BIG"       // "1": 1 GiB instead of 8 MiB
	bigPhaseEnv = "KV_BIG_PHASE" // set in a child: the phase to run
	bigDirEnv   = "KV_BIG_DIR"   // set in a child: the working directory
)

// bigShape is a data set: count values of size bytes under 14-byte keys.
type bigShape struct {
	name  string
	count int
	size  int
}

func bigShapes() []bigShape {
	if os.Getenv(bigFlagEnv) == "1" {
		return []bigShape{
			{"values=10KiB", 100_000, 10 << 10},
			{"values=100B", 10_000_000, 100},
		}
	}
	return []bigShape{
		{"values=10KiB", 800, 10 << 10},
		{"values=100B", 80_000, 100},
	}
}

func bigKey(i int) []byte { return fmt.Appendf(make([]byte, 0, 16), "key/%010d", i) }

// bigValues hands out values from one random block (bbolt does not
// compress, so their content does not matter beyond not being all zeros).
type bigValues struct{ block []byte }

func newBigValues() bigValues {
	r := rand.New(rand.NewPCG(1, 2))
	block := make([]byte, 1<<20)
	for i := range block {
		block[i] = byte(r.Uint32())
	}
	return bigValues{block}
}

func (v bigValues) value(i, size int) []byte {
	off := (i * 7919) % (len(v.block) - size)
	return v.block[off : off+size : off+size]
}

// memStats is what a phase reports from /proc/self/status: the peak (VmHWM)
// and, sampled every 20 ms, the largest anonymous and file-backed parts.
type memStats struct {
	HWM, RSS, RssAnon, RssFile int64 // at the end, bytes
	MaxAnon, MaxFile           int64 // sampled peaks, bytes
}

func readStatus() (map[string]int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || !strings.HasSuffix(v, " kB") {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(v, " kB")), 10, 64)
		if err == nil {
			out[k] = n << 10
		}
	}
	return out, nil
}

// memSampler records the largest RssAnon and RssFile until stop.
type memSampler struct {
	mu               sync.Mutex
	maxAnon, maxFile int64
	done             chan struct{}
	wg               sync.WaitGroup
}

func startMemSampler() *memSampler {
	m := &memSampler{done: make(chan struct{})}
	m.sample()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-m.done:
				return
			case <-t.C:
				m.sample()
			}
		}
	}()
	return m
}

func (m *memSampler) sample() {
	s, err := readStatus()
	if err != nil {
		return
	}
	m.mu.Lock()
	m.maxAnon = max(m.maxAnon, s["RssAnon"])
	m.maxFile = max(m.maxFile, s["RssFile"])
	m.mu.Unlock()
}

// stop ends sampling and returns the stats now.
func (m *memSampler) stop() memStats {
	m.sample()
	close(m.done)
	m.wg.Wait()
	s, _ := readStatus()
	return memStats{
		HWM: s["VmHWM"], RSS: s["VmRSS"], RssAnon: s["RssAnon"], RssFile: s["RssFile"],
		MaxAnon: m.maxAnon, MaxFile: m.maxFile,
	}
}

// phaseResult is what a child reports to the parent.
type phaseResult struct {
	Seconds     float64
	Mem         memStats
	OpenSeconds float64  // snapshot phases: OpenBolt alone
	OpenMem     memStats // snapshot phases: right after OpenBolt
	Bytes       int64    // load, restore: data file size; snapshot: stream size
	CPUSeconds  float64  // user + system CPU time of the whole child
}

func BenchmarkBigStorage(b *testing.B) {
	values := newBigValues()
	for _, shape := range bigShapes() {
		b.Run(shape.name, func(b *testing.B) {
			if phase := os.Getenv(bigPhaseEnv); phase != "" {
				runBigPhase(b, phase, os.Getenv(bigDirEnv), shape, values)
				return
			}
			if os.Getenv(bigFlagEnv) != "1" {
				b.Logf("%s is not 1: %d values of %d bytes instead of 1 GiB", bigFlagEnv, shape.count, shape.size)
			}
			dir := b.TempDir()
			load := runBigChild(b, "load", dir)
			b.Logf("load: %.1f s, data file %.0f MB, peak RSS %s", load.Seconds, mb(load.Bytes), load.Mem)
			var snap, discard, cold, restore phaseResult
			n := 0
			for b.Loop() {
				n++
				s := runBigChild(b, "snapshot", dir)
				d := runBigChild(b, "discard", dir)
				c := runBigChild(b, "cold", dir)
				r := runBigChild(b, "restore", dir)
				b.Logf("open: %.2f s, RSS after open %s", s.OpenSeconds, s.OpenMem)
				b.Logf("snapshot to file: %.2f s, %.0f MB, peak RSS %s", s.Seconds, mb(s.Bytes), s.Mem)
				b.Logf("snapshot to io.Discard: %.2f s, peak RSS %s", d.Seconds, d.Mem)
				b.Logf("snapshot to io.Discard, data file not in the page cache: %.2f s (open %.2f s), peak RSS %s", c.Seconds, c.OpenSeconds, c.Mem)
				b.Logf("restore: %.2f s (the child used %.1f s of CPU), restored file %.0f MB, peak RSS %s", r.Seconds, r.CPUSeconds, mb(r.Bytes), r.Mem)
				snap.add(s)
				discard.add(d)
				cold.add(c)
				restore.add(r)
			}
			f := float64(n)
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(mb(load.Bytes), "file-MB")
			b.ReportMetric(snap.OpenSeconds/f, "open-s")
			b.ReportMetric(mb(snap.OpenMem.HWM), "open-peak-MB")
			b.ReportMetric(snap.Seconds/f, "snap-s")
			b.ReportMetric(mb(snap.Mem.HWM), "snap-peak-MB")
			b.ReportMetric(discard.Seconds/f, "discard-s")
			b.ReportMetric(mb(discard.Mem.HWM), "discard-peak-MB")
			b.ReportMetric(cold.Seconds/f, "cold-discard-s")
			b.ReportMetric(mb(cold.Mem.HWM), "cold-discard-peak-MB")
			b.ReportMetric(restore.Seconds/f, "restore-s")
			b.ReportMetric(restore.CPUSeconds/f, "restore-cpu-s")
			b.ReportMetric(mb(restore.Mem.HWM), "restore-peak-MB")
		})
	}
}

// add sums the times and keeps the largest peaks.
func (r *phaseResult) add(o phaseResult) {
	r.Seconds += o.Seconds
	r.OpenSeconds += o.OpenSeconds
	r.CPUSeconds += o.CPUSeconds
	r.Bytes = o.Bytes
	r.Mem.HWM = max(r.Mem.HWM, o.Mem.HWM)
	r.OpenMem.HWM = max(r.OpenMem.HWM, o.OpenMem.HWM)
}

func mb(n int64) float64 { return float64(n) / 1e6 }

func (m memStats) String() string {
	return fmt.Sprintf("%.0f MB (sampled max anon %.0f MB, file %.0f MB; at the end anon %.0f MB, file %.0f MB)",
		mb(m.HWM), mb(m.MaxAnon), mb(m.MaxFile), mb(m.RssAnon), mb(m.RssFile))
}

// runBigChild runs phase of the current (sub-)benchmark in a new process of
// this test binary and returns its result.
func runBigChild(b *testing.B, phase, dir string) phaseResult {
	b.Helper()
	var pattern []string
	for _, part := range strings.Split(b.Name(), "/") {
		pattern = append(pattern, "^"+regexp.QuoteMeta(part)+"$")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench="+strings.Join(pattern, "/"),
		"-test.benchtime=1x", "-test.count=1", "-test.timeout=0")
	cmd.Env = append(os.Environ(), bigPhaseEnv+"="+phase, bigDirEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("phase %s: %v\n%s", phase, err, out)
	}
	data, err := os.ReadFile(filepath.Join(dir, "result-"+phase+".json"))
	if err != nil {
		b.Fatalf("phase %s: no result (%v)\n%s", phase, err, out)
	}
	var r phaseResult
	if err := json.Unmarshal(data, &r); err != nil {
		b.Fatalf("phase %s: %v", phase, err)
	}
	return r
}

// runBigPhase runs in the child process.
func runBigPhase(b *testing.B, phase, dir string, shape bigShape, values bigValues) {
	var r phaseResult
	dataPath := filepath.Join(dir, "data.db")
	snapPath := filepath.Join(dir, "snapshot.bin")
	mem := startMemSampler()
	start := time.Now()
	switch phase {
	case "load":
		e, err := OpenBolt(dataPath, BoltOptions{NoSync: true})
		if err != nil {
			b.Fatal(err)
		}
		for i, index := 0, uint64(1); i < shape.count; index++ {
			err := e.Update(index, func(tx WriteTx) error {
				for batch := 0; batch < 64<<20 && i < shape.count; i++ {
					if err := tx.Put(bigKey(i), values.value(i, shape.size)); err != nil {
						return err
					}
					batch += shape.size + 14
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		}
		if err := e.Close(); err != nil {
			b.Fatal(err)
		}
		fi, err := os.Stat(dataPath)
		if err != nil {
			b.Fatal(err)
		}
		r.Bytes = fi.Size()

	case "snapshot", "discard", "cold":
		if phase == "cold" {
			if err := bigEvict(dataPath); err != nil {
				b.Fatal(err)
			}
			start = time.Now()
		}
		e, err := OpenBolt(dataPath, BoltOptions{})
		if err != nil {
			b.Fatal(err)
		}
		r.OpenSeconds = time.Since(start).Seconds()
		r.OpenMem = mem.stop()
		// From here VmHWM is the peak of the snapshot alone (it starts
		// from what the open left resident).
		if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
			b.Fatalf("reset VmHWM: %v", err)
		}
		mem = startMemSampler()
		start = time.Now()
		var w io.Writer = io.Discard
		var f *os.File
		if phase == "snapshot" {
			if f, err = os.Create(snapPath); err != nil {
				b.Fatal(err)
			}
			w = f
		}
		cw := &countWriter{w: w}
		s, err := e.Snapshot()
		if err != nil {
			b.Fatal(err)
		}
		if err := WriteSnapshot(cw, s.AppliedIndex(), s); err != nil {
			b.Fatal(err)
		}
		s.Release()
		if f != nil {
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			if err := f.Close(); err != nil {
				b.Fatal(err)
			}
		}
		r.Bytes = cw.n
		r.Seconds = time.Since(start).Seconds()
		r.Mem = mem.stop()
		if err := e.Close(); err != nil {
			b.Fatal(err)
		}

	case "restore":
		rdir := filepath.Join(dir, "restore")
		if err := os.RemoveAll(rdir); err != nil {
			b.Fatal(err)
		}
		if err := os.Mkdir(rdir, 0o700); err != nil {
			b.Fatal(err)
		}
		e, err := OpenBolt(filepath.Join(rdir, "data.db"), BoltOptions{})
		if err != nil {
			b.Fatal(err)
		}
		f, err := os.Open(snapPath)
		if err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		if err := e.Restore(bufio.NewReaderSize(f, 1<<20)); err != nil {
			b.Fatal(err)
		}
		r.Seconds = time.Since(start).Seconds()
		r.Mem = mem.stop()
		f.Close()
		if fi, err := os.Stat(filepath.Join(rdir, "data.db")); err == nil {
			r.Bytes = fi.Size()
		}
		// A light check after the measurement: the last key is there.
		last := bigKey(shape.count - 1)
		err = e.View(func(tx ReadTx) error {
			v, ok := tx.Get(last)
			if !ok || string(v) != string(values.value(shape.count-1, shape.size)) {
				return fmt.Errorf("restored data: key %s missing or wrong", last)
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		if err := e.Close(); err != nil {
			b.Fatal(err)
		}

	default:
		b.Fatalf("unknown phase %q", phase)
	}
	if r.Seconds == 0 {
		r.Seconds = time.Since(start).Seconds()
		r.Mem = mem.stop()
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		r.CPUSeconds = time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	}
	data, err := json.Marshal(r)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "result-"+phase+".json"), data, 0o600); err != nil {
		b.Fatal(err)
	}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// bigEvict drops the file at path from the page cache.
func bigEvict(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return err
	}
	return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}
