//go:build linux

package kv_test

// BenchmarkBigRestart: how long a Store with 1 GiB of data takes from Open
// until a linearizable Get succeeds, and its peak resident memory meanwhile.
//
//	KV_BIG=1 go test -run '^$' -bench BigRestart -benchtime 1x -timeout 60m .
//
// Without KV_BIG=1 it runs on 8 MiB. One Store on 127.0.0.1 with a DataDir,
// BootstrapExpect 1 and otherwise default Config; every phase runs in a
// fresh child process (this test binary, re-executed with KV_BIG_PHASE set):
//
//	load     Open, load the data through Raft (Set from 8192 goroutines, which
//	         the Store's group commit coalesces into entries of up to 4096
//	         writes or 4 MiB), Close
//	restart  Open, then Get of the last key written until it succeeds:
//	         "serving-s"; the data files are in the page cache
//	cold     the same after evicting the DataDir's files from the page cache
//	         (fsync, then posix_fadvise DONTNEED), as after a reboot (the
//	         host of a virtual machine may still cache the disk)
//	snapshot Open with SnapshotThreshold 1 and SnapshotInterval 100 ms,
//	         wait until serving, reset VmHWM, wait for Raft's snapshot of
//	         the data ("snap-*": its time and peak RSS), Close
//
// The order is load, restart and cold (the Raft log holds every write: the
// default SnapshotThreshold of 8192 entries is not reached, because group
// commit puts thousands of writes in one entry), snapshot, then restart and
// cold again ("snapped-*": Open reads and replays only the log after the
// snapshot; the log itself is kept, TrailingLogs is 10240 entries).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	kv "github.com/cohortkv/kv"
)

const (
	bigFlagEnv  = "KV_BIG"       // "1": 1 GiB instead of 8 MiB
	bigPhaseEnv = "KV_BIG_PHASE" // set in a child: the phase to run
	bigDirEnv   = "KV_BIG_DIR"   // set in a child: the working directory
)

type bigShape struct {
	name        string
	count, size int
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

func bigKey(i int) string { return fmt.Sprintf("key/%010d", i) }

var bigBlock = sync.OnceValue(func() []byte {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, 1<<20)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
})

func bigValue(i, size int) []byte {
	block := bigBlock()
	off := (i * 7919) % (len(block) - size)
	return block[off : off+size : off+size]
}

type bigResult struct {
	Seconds       float64 // load: loading; restart: Open until a Get succeeds; snapshot: the snapshot
	OpenSeconds   float64 // restart: kv.Open alone
	LeaderSeconds float64 // restart: Open until this instance leads
	HWM           int64   // VmHWM at the end, bytes
	RssAnon       int64   // at the end
	RssFile       int64
	Files         map[string]int64 // load: sizes in DataDir after Close
}

func BenchmarkBigRestart(b *testing.B) {
	for _, shape := range bigShapes() {
		b.Run(shape.name, func(b *testing.B) {
			if phase := os.Getenv(bigPhaseEnv); phase != "" {
				runBigRestartPhase(b, phase, os.Getenv(bigDirEnv), shape)
				return
			}
			if os.Getenv(bigFlagEnv) != "1" {
				b.Logf("%s is not 1: %d values of %d bytes instead of 1 GiB", bigFlagEnv, shape.count, shape.size)
			}
			dir := b.TempDir()
			load := runBigRestartChild(b, "load", dir)
			b.Logf("load through Raft: %.1f s, peak RSS %.0f MB; files %v", load.Seconds, float64(load.HWM)/1e6, load.Files)
			restarts := func(when string) (warm, cold bigResult) {
				w := runBigRestartChild(b, "restart", dir)
				c := runBigRestartChild(b, "cold", dir)
				for _, r := range []struct {
					name string
					r    bigResult
				}{{"warm", w}, {"cold", c}} {
					b.Logf("restart %s (%s page cache): Open %.2f s, leader at %.2f s, serving at %.2f s; peak RSS %.0f MB (at the end anon %.0f MB, file %.0f MB)",
						when, r.name, r.r.OpenSeconds, r.r.LeaderSeconds, r.r.Seconds, float64(r.r.HWM)/1e6, float64(r.r.RssAnon)/1e6, float64(r.r.RssFile)/1e6)
				}
				return w, c
			}
			var warm, cold bigResult
			n := 0
			for b.Loop() {
				n++
				w, c := restarts("before any snapshot")
				warm.Seconds += w.Seconds
				warm.OpenSeconds += w.OpenSeconds
				warm.HWM = max(warm.HWM, w.HWM)
				cold.Seconds += c.Seconds
				cold.OpenSeconds += c.OpenSeconds
				cold.HWM = max(cold.HWM, c.HWM)
			}
			f := float64(n)
			b.StopTimer()
			snap := runBigRestartChild(b, "snapshot", dir)
			b.Logf("raft snapshot of the data: %.2f s, peak RSS %.0f MB (at the end anon %.0f MB, file %.0f MB)",
				snap.Seconds, float64(snap.HWM)/1e6, float64(snap.RssAnon)/1e6, float64(snap.RssFile)/1e6)
			snapWarm, snapCold := restarts("after a snapshot")
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(load.Seconds, "load-s")
			b.ReportMetric(warm.OpenSeconds/f, "open-s")
			b.ReportMetric(warm.Seconds/f, "serving-s")
			b.ReportMetric(float64(warm.HWM)/1e6, "peak-MB")
			b.ReportMetric(cold.OpenSeconds/f, "cold-open-s")
			b.ReportMetric(cold.Seconds/f, "cold-serving-s")
			b.ReportMetric(float64(cold.HWM)/1e6, "cold-peak-MB")
			b.ReportMetric(snap.Seconds, "snap-s")
			b.ReportMetric(float64(snap.HWM)/1e6, "snap-peak-MB")
			b.ReportMetric(snapWarm.Seconds, "snapped-serving-s")
			b.ReportMetric(float64(snapWarm.HWM)/1e6, "snapped-peak-MB")
			b.ReportMetric(snapCold.Seconds, "snapped-cold-serving-s")
			b.ReportMetric(float64(snapCold.HWM)/1e6, "snapped-cold-peak-MB")
		})
	}
}

// BenchmarkBigCrashRestart: the same load, ended by kill -9 instead of
// Close, then the restart with the page cache cold ("crash-cold") and
// once more warm ("crash-warm"). What the data file had not committed
// when the process died (up to a CommitInterval of writes, more while a
// commit or a snapshot's copy is slow) is applied again from the log.
//
//	KV_BIG=1 go test -run '^$' -bench BigCrashRestart/values=10KiB -benchtime 1x -timeout 60m .
func BenchmarkBigCrashRestart(b *testing.B) {
	for _, shape := range bigShapes() {
		b.Run(shape.name, func(b *testing.B) {
			if phase := os.Getenv(bigPhaseEnv); phase != "" {
				runBigRestartPhase(b, phase, os.Getenv(bigDirEnv), shape)
				return
			}
			var cold, warm bigResult
			for b.Loop() {
				dir := b.TempDir()
				load := runBigRestartChild(b, "load-kill", dir)
				b.Logf("load through Raft, then kill -9: %.1f s", load.Seconds)
				cold = runBigRestartChild(b, "cold", dir)
				warm = runBigRestartChild(b, "restart", dir)
				for _, r := range []struct {
					name string
					r    bigResult
				}{{"cold", cold}, {"warm", warm}} {
					b.Logf("restart after kill -9 (%s page cache): Open %.2f s, leader at %.2f s, serving at %.2f s; peak RSS %.0f MB (at the end anon %.0f MB, file %.0f MB)",
						r.name, r.r.OpenSeconds, r.r.LeaderSeconds, r.r.Seconds, float64(r.r.HWM)/1e6, float64(r.r.RssAnon)/1e6, float64(r.r.RssFile)/1e6)
				}
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(cold.Seconds, "crash-cold-serving-s")
			b.ReportMetric(float64(cold.HWM)/1e6, "crash-cold-peak-MB")
			b.ReportMetric(warm.Seconds, "crash-warm-serving-s")
			b.ReportMetric(float64(warm.HWM)/1e6, "crash-warm-peak-MB")
		})
	}
}

func runBigRestartChild(b *testing.B, phase, dir string) bigResult {
	b.Helper()
	var pattern []string
	for _, part := range strings.Split(b.Name(), "/") {
		pattern = append(pattern, "^"+regexp.QuoteMeta(part)+"$")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench="+strings.Join(pattern, "/"),
		"-test.benchtime=1x", "-test.count=1", "-test.timeout=0")
	cmd.Env = append(os.Environ(), bigPhaseEnv+"="+phase, bigDirEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	killed := phase == "load-kill" && errors.As(err, &exit) && exit.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL
	if err != nil && !killed {
		b.Fatalf("phase %s: %v\n%s", phase, err, out)
	}
	data, err := os.ReadFile(filepath.Join(dir, "result-"+phase+".json"))
	if err != nil {
		b.Fatalf("phase %s: no result (%v)\n%s", phase, err, out)
	}
	var r bigResult
	if err := json.Unmarshal(data, &r); err != nil {
		b.Fatalf("phase %s: %v", phase, err)
	}
	return r
}

func bigConfig(dir string) kv.Config {
	return kv.Config{
		NodeID:          "n1",
		DataDir:         filepath.Join(dir, "n1"),
		BindAddr:        "127.0.0.1:0",
		GossipBindAddr:  "127.0.0.1:0",
		BootstrapExpect: 1,
	}
}

func runBigRestartPhase(b *testing.B, phase, dir string, shape bigShape) {
	var r bigResult
	cfg := bigConfig(dir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	switch phase {
	case "load", "load-kill":
		s, err := kv.Open(cfg)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.WaitForLeader(ctx); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		var next atomic.Int64
		var failed atomic.Pointer[error]
		var wg sync.WaitGroup
		for range 8192 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for failed.Load() == nil {
					i := int(next.Add(1) - 1)
					if i >= shape.count {
						return
					}
					if err := s.Set(ctx, bigKey(i), bigValue(i, shape.size)); err != nil {
						failed.CompareAndSwap(nil, &err)
						return
					}
				}
			}()
		}
		wg.Wait()
		if p := failed.Load(); p != nil {
			b.Fatal(*p)
		}
		r.Seconds = time.Since(start).Seconds()
		if phase == "load-kill" {
			data, err := json.Marshal(r)
			if err == nil {
				err = os.WriteFile(filepath.Join(dir, "result-"+phase+".json"), data, 0o600)
			}
			if err != nil {
				b.Fatal(err)
			}
			// Every write was acknowledged: as a power cut would,
			// give the process no chance to write anything more.
			if err := syscall.Kill(os.Getpid(), syscall.SIGKILL); err != nil {
				b.Fatal(err)
			}
			select {}
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		r.Files = map[string]int64{}
		filepath.WalkDir(cfg.DataDir, func(path string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				if fi, err := d.Info(); err == nil {
					rel, _ := filepath.Rel(cfg.DataDir, path)
					r.Files[rel] = fi.Size()
				}
			}
			return nil
		})

	case "restart", "cold":
		if phase == "cold" {
			if err := bigEvict(cfg.DataDir); err != nil {
				b.Fatal(err)
			}
		}
		last := shape.count - 1
		start := time.Now()
		s, err := kv.Open(cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		r.OpenSeconds = time.Since(start).Seconds()
		var v []byte
		for {
			if r.LeaderSeconds == 0 && s.Stats().State == kv.StateLeader {
				r.LeaderSeconds = time.Since(start).Seconds()
			}
			gctx, gcancel := context.WithTimeout(ctx, 50*time.Millisecond)
			v, err = s.Get(gctx, bigKey(last))
			gcancel()
			if err == nil {
				break
			}
			if time.Since(start) > 10*time.Minute {
				b.Fatalf("not serving after 10 minutes: %v", err)
			}
		}
		r.Seconds = time.Since(start).Seconds()
		if r.LeaderSeconds == 0 {
			r.LeaderSeconds = r.Seconds
		}
		if string(v) != string(bigValue(last, shape.size)) {
			b.Fatalf("Get(%s) returned %d bytes that differ from what was written", bigKey(last), len(v))
		}

	case "snapshot":
		cfg.SnapshotThreshold = 1
		cfg.SnapshotInterval = 100 * time.Millisecond
		s, err := kv.Open(cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		for {
			gctx, gcancel := context.WithTimeout(ctx, 50*time.Millisecond)
			_, err = s.Get(gctx, bigKey(shape.count-1))
			gcancel()
			if err == nil {
				break
			}
		}
		// Peak RSS of the snapshot alone, from what the open left resident.
		if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
			b.Fatalf("reset VmHWM: %v", err)
		}
		start := time.Now()
		for want := s.Stats().AppliedIndex; s.Stats().LastSnapshotIndex < want; {
			if time.Since(start) > 30*time.Minute {
				b.Fatalf("no snapshot of index %d after 30 minutes: %+v", want, s.Stats())
			}
			time.Sleep(10 * time.Millisecond)
		}
		r.Seconds = time.Since(start).Seconds()

	default:
		b.Fatalf("unknown phase %q", phase)
	}
	st, err := bigStatus()
	if err != nil {
		b.Fatal(err)
	}
	r.HWM, r.RssAnon, r.RssFile = st["VmHWM"], st["RssAnon"], st["RssFile"]
	data, err := json.Marshal(r)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "result-"+phase+".json"), data, 0o600); err != nil {
		b.Fatal(err)
	}
}

// bigEvict drops every file under dir from the page cache.
func bigEvict(dir string) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := f.Sync(); err != nil {
			return err
		}
		return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	})
}

// bigStatus returns the "kB" fields of /proc/self/status, in bytes.
func bigStatus() (map[string]int64, error) {
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
		if n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(v, " kB")), 10, 64); err == nil {
			out[k] = n << 10
		}
	}
	return out, nil
}
