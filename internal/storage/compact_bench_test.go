package storage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkCompactPurged: compaction of a purged data file on a running
// engine: 1 GiB of 1 KiB values, 90% of them deleted, compacted while a
// writer applies an Update every millisecond (4 puts of 1 KiB each) and
// a reader looks keys up. It reports the sizes, the total time, the apply
// stall, and the latency of the writer's Updates and of the reads during
// the compaction.
//
//	KV_BIG=1 go test -run '^$' -bench CompactPurged -benchtime 1x -timeout 30m ./internal/storage/
//
// Without KV_BIG=1 it runs on 16 MiB. The data file is durable (fsync on
// commit), in the test's temporary directory.
func BenchmarkCompactPurged(b *testing.B) {
	total := 16 << 20
	if os.Getenv(bigFlagEnv) == "1" {
		total = 1 << 30
	}
	const size = 1024
	n := total / size
	for range b.N {
		path := filepath.Join(b.TempDir(), "data.db")
		e, err := OpenBolt(path, BoltOptions{AutoCompactMinSize: -1})
		if err != nil {
			b.Fatal(err)
		}
		val := make([]byte, size)
		idx := uint64(0)
		load := func(from, to int, del bool) {
			const batch = 32 << 10 // keys per Update: 32 MiB of values
			for i := from; i < to; i += batch {
				idx++
				err := e.Update(idx, func(tx WriteTx) error {
					for j := i; j < min(i+batch, to); j++ {
						k := fmt.Appendf(nil, "key%010d", j)
						if del {
							if j%10 == 0 {
								continue
							}
							if err := tx.Delete(k); err != nil {
								return err
							}
						} else if err := tx.Put(k, val); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			if err := e.Flush(); err != nil {
				b.Fatal(err)
			}
		}
		t0 := time.Now()
		load(0, n, false)
		load(0, n, true)
		b.Logf("loaded %d keys and deleted 90%% in %v", n, time.Since(t0))

		var (
			stop   = make(chan struct{})
			wg     sync.WaitGroup
			wlat   []time.Duration
			rlat   []time.Duration
			werr   error
			widx   = idx
			lookup = make([]byte, 0, 2*size)
		)
		wg.Add(2)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				widx++
				t := time.Now()
				err := e.Update(widx, func(tx WriteTx) error {
					for j := range 4 {
						if err := tx.Put(fmt.Appendf(nil, "key%010d", (i*4+j)*7919%n), val); err != nil {
							return err
						}
					}
					return nil
				})
				wlat = append(wlat, time.Since(t))
				if err != nil {
					werr = err
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				t := time.Now()
				var err error
				lookup, _, err = e.Lookup(fmt.Sprintf("key%010d", i*104729%n), lookup[:0])
				rlat = append(rlat, time.Since(t))
				if err != nil {
					return
				}
				time.Sleep(200 * time.Microsecond)
			}
		}()
		time.Sleep(200 * time.Millisecond)
		st, err := e.Compact(context.Background())
		close(stop)
		wg.Wait()
		if err != nil {
			b.Fatal(err)
		}
		if werr != nil {
			b.Fatal(werr)
		}
		pct := func(d []time.Duration, p float64) time.Duration {
			d = slices.Clone(d)
			slices.Sort(d)
			if len(d) == 0 {
				return 0
			}
			return d[min(len(d)-1, int(float64(len(d))*p))]
		}
		b.Logf("compacted %d -> %d bytes in %v, stall %v, %d rounds, %d restarts", st.Before, st.After, st.Took, st.Stall, st.Rounds, st.Restarts)
		b.Logf("writer: %d Updates, p50 %v p99 %v p99.9 %v max %v", len(wlat), pct(wlat, .5), pct(wlat, .99), pct(wlat, .999), pct(wlat, 1))
		b.Logf("reader: %d Lookups, p50 %v p99 %v p99.9 %v max %v", len(rlat), pct(rlat, .5), pct(rlat, .99), pct(rlat, .999), pct(rlat, 1))
		b.ReportMetric(float64(st.Before)/(1<<20), "before-MiB")
		b.ReportMetric(float64(st.After)/(1<<20), "after-MiB")
		b.ReportMetric(st.Took.Seconds(), "took-s")
		b.ReportMetric(float64(st.Stall.Microseconds())/1000, "stall-ms")
		b.ReportMetric(float64(pct(wlat, .99).Microseconds())/1000, "update-p99-ms")
		b.ReportMetric(float64(pct(wlat, 1).Microseconds())/1000, "update-max-ms")
		b.ReportMetric(float64(pct(rlat, .99).Microseconds())/1000, "lookup-p99-ms")
		if err := e.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
