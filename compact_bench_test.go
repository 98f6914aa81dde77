package kv_test

// BenchmarkCompactCluster: Compact on a running 3-member cluster whose data
// files hold a purged data set, while a client writes.
//
//	KV_BIG=1 go test -run '^$' -bench CompactCluster -benchtime 1x -timeout 60m .
//
// Without KV_BIG=1 it runs on 16 MiB. It loads the data (4 KiB values)
// through Raft, deletes 90% of the keys, waits until every member has
// applied it all, then calls Compact on a follower while one client writes
// a 100-byte value every millisecond to the leader of the moment (Set with
// forwarding, from a member that is not compacted first). It reports the
// sizes of data.db and raft.db before and after on each member, Compact's
// total time, the longest apply pause of a data file's compaction on any
// member ("stall-max-ms", from each member's log), and the latencies of
// the client's writes during Compact.

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// compactLog keeps the stall of every "data file compacted" record.
type compactLog struct {
	mu     sync.Mutex
	stalls []time.Duration
	took   []time.Duration
}

func (c *compactLog) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }
func (c *compactLog) WithAttrs([]slog.Attr) slog.Handler           { return c }
func (c *compactLog) WithGroup(string) slog.Handler                { return c }
func (c *compactLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "data file compacted" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		switch a.Key {
		case "stall":
			c.stalls = append(c.stalls, a.Value.Duration())
		case "took":
			c.took = append(c.took, a.Value.Duration())
		}
		return true
	})
	return nil
}

func BenchmarkCompactCluster(b *testing.B) {
	total := int64(16 << 20)
	if os.Getenv(bigFlagEnv) == "1" {
		total = 1 << 30
	}
	const valueSize = 4 << 10
	keys := int(total / valueSize)
	for range b.N {
		logs := &compactLog{}
		kc := kvtest.NewCluster(b, 3, kvtest.Logger(slog.New(logs)))
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
		defer cancel()
		l := kc.Leader()
		w := kc.Node(l)
		value := make([]byte, valueSize)
		for i := range value {
			value[i] = byte('a' + i%26)
		}
		run := func(n int, op func(i int) *kv.Future) {
			sem := make(chan struct{}, 4096)
			var wg sync.WaitGroup
			var failed atomic.Value
			for i := range n {
				sem <- struct{}{}
				wg.Add(1)
				go func() {
					defer func() { <-sem; wg.Done() }()
					if err := op(i).Wait(ctx); err != nil {
						failed.CompareAndSwap(nil, err)
					}
				}()
			}
			wg.Wait()
			if err, _ := failed.Load().(error); err != nil {
				b.Fatal(err)
			}
		}
		start := time.Now()
		run(keys, func(i int) *kv.Future { return w.SetAsync(fmt.Sprintf("k%09d", i), value) })
		loaded := time.Since(start)
		run(keys*9/10, func(i int) *kv.Future { return w.DeleteAsync(fmt.Sprintf("k%09d", i)) })
		if _, err := w.Get(ctx, fmt.Sprintf("k%09d", keys-1)); err != nil {
			b.Fatal(err)
		}
		applied := w.Stats().AppliedIndex
		for i := range 3 {
			for kc.Node(i).Stats().AppliedIndex < applied {
				if ctx.Err() != nil {
					b.Fatal(ctx.Err())
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		sizes := func(file string) []int64 {
			var out []int64
			for i := range 3 {
				fi, err := os.Stat(filepath.Join(kc.Config(i).DataDir, file))
				if err != nil {
					b.Fatal(err)
				}
				out = append(out, fi.Size())
			}
			return out
		}
		before, logBefore := sizes("data.db"), sizes("raft.db")

		// The client: a write every millisecond, through a member that
		// forwards to whoever leads.
		client := kc.Node((l + 2) % 3)
		stop := make(chan struct{})
		var lat []time.Duration
		var werr atomic.Value
		done := make(chan struct{})
		go func() {
			defer close(done)
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				t0 := time.Now()
				if err := client.Set(ctx, fmt.Sprintf("w%06d", i%100000), value[:100]); err != nil {
					werr.CompareAndSwap(nil, err)
				}
				lat = append(lat, time.Since(t0))
			}
		}()
		b.ResetTimer()
		t0 := time.Now()
		if err := kc.Node((l + 1) % 3).Compact(ctx); err != nil {
			b.Fatal(err)
		}
		took := time.Since(t0)
		b.StopTimer()
		close(stop)
		<-done
		if err, _ := werr.Load().(error); err != nil {
			b.Fatalf("a write during Compact failed: %v", err)
		}
		after, logAfter := sizes("data.db"), sizes("raft.db")
		slices.Sort(lat)
		q := func(p float64) float64 {
			if len(lat) == 0 {
				return 0
			}
			return float64(lat[int(p*float64(len(lat)-1))]) / 1e6
		}
		logs.mu.Lock()
		var stallMax, tookMax time.Duration
		for _, s := range logs.stalls {
			stallMax = max(stallMax, s)
		}
		for _, s := range logs.took {
			tookMax = max(tookMax, s)
		}
		logs.mu.Unlock()
		b.ReportMetric(float64(before[0])/(1<<20), "before-MiB")
		b.ReportMetric(float64(after[0])/(1<<20), "after-MiB")
		b.ReportMetric(took.Seconds(), "compact-s")
		b.ReportMetric(tookMax.Seconds(), "member-max-s")
		b.ReportMetric(float64(stallMax)/1e6, "stall-max-ms")
		b.ReportMetric(q(0.5), "write-p50-ms")
		b.ReportMetric(q(0.99), "write-p99-ms")
		b.ReportMetric(q(1), "write-max-ms")
		b.ReportMetric(float64(len(lat)), "writes")
		b.ReportMetric(float64(logBefore[0])/(1<<20), "raftdb-before-MiB")
		b.ReportMetric(float64(logAfter[0])/(1<<20), "raftdb-after-MiB")
		b.Logf("load %v; data.db before %v, after %v; raft.db before %v, after %v; compact %v; member stalls %v",
			loaded.Round(time.Millisecond), before, after, logBefore, logAfter, took.Round(time.Millisecond), logs.stalls)
		kc.Close()
	}
}
