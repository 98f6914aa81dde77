//go:build unix

package storage

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// BenchmarkBoltRandomWrites: the state machine's use of the engine with
// writes spread uniformly over a file of 100,000 keys, as in bench/'s
// write workloads: each write reads the record it replaces, then puts the
// new one; 128 writes per Update (one group-committed entry), and a
// commit of the file every perCommit writes (what the committer does
// every CommitInterval at a given write rate). ns/write is the wall time,
// cpu-ns/write the process's CPU time (the commits included) per write.
func BenchmarkBoltRandomWrites(b *testing.B) {
	const keys, perUpdate, size = 100_000, 128, 120
	for _, perCommit := range []int{16_384, 65_536} {
		b.Run(fmt.Sprintf("perCommit=%d", perCommit), func(b *testing.B) {
			e, err := OpenBolt(filepath.Join(b.TempDir(), "data.db"), BoltOptions{CommitInterval: time.Hour})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close()
			key := func(i uint64) []byte {
				return binary.BigEndian.AppendUint64([]byte("key/"), i*0x9e3779b97f4a7c15)
			}
			val := make([]byte, size)
			index := uint64(0)
			for i := 0; i < keys; i += 1000 {
				index++
				if err := e.Update(index, func(tx WriteTx) error {
					for j := i; j < i+1000; j++ {
						if err := tx.Put(key(uint64(j)), val); err != nil {
							return err
						}
					}
					return nil
				}); err != nil {
					b.Fatal(err)
				}
			}
			if err := e.Flush(); err != nil {
				b.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(1, 2))
			writes := 0
			cpu0 := cpuTime()
			b.ResetTimer()
			for b.Loop() {
				index++
				if err := e.Update(index, func(tx WriteTx) error {
					for range perUpdate {
						k := key(rng.Uint64N(keys))
						if old, ok := tx.Get(k); ok {
							val[0] = old[0] + 1
						}
						if err := tx.Put(k, val); err != nil {
							return err
						}
					}
					return nil
				}); err != nil {
					b.Fatal(err)
				}
				if writes += perUpdate; writes >= perCommit {
					writes = 0
					if err := e.Flush(); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.StopTimer()
			n := float64(b.N * perUpdate)
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/write")
			b.ReportMetric(float64(cpuTime()-cpu0)/n, "cpu-ns/write")
		})
	}
}

// cpuTime is the process's user and system CPU time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
