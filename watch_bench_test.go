package kv_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
)

// BenchmarkWrites_Watchers measures parallel Sets on a one-member store
// (real files) with watchers beside them, to show that watchers do not slow
// writes down: none has no watcher; idle100 has 100 watchers of a prefix no
// write touches (each wakes at every apply and finds nothing to yield);
// stalled1 has one watcher of the written keys whose loop body blocks on
// its first event and never returns while the writes go on.
//
//	go test -run '^$' -bench Writes_Watchers -benchtime 5s .
func BenchmarkWrites_Watchers(b *testing.B) {
	value := bytes.Repeat([]byte("v"), 100)
	for _, bc := range []struct {
		name    string
		idle    int
		stalled bool
	}{{"none", 0, false}, {"idle100", 100, false}, {"stalled1", 0, true}} {
		b.Run(bc.name, func(b *testing.B) {
			// A store of its own for each run: the data file and the
			// history grow with b.N.
			s, err := kv.Open(fastConfig(b, b.TempDir(), "solo", 1, nil))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			if err := s.WaitForLeader(ctx); err != nil {
				b.Fatal(err)
			}
			release := make(chan struct{})
			var wg sync.WaitGroup
			defer wg.Wait()
			defer close(release)
			for range bc.idle {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for _, err := range s.Watch(ctx, "idle/", 0) {
						if err != nil {
							return
						}
					}
				}()
			}
			if bc.stalled {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range s.Watch(ctx, "w/", 0) {
						<-release // stalled until the benchmark ends
						return
					}
				}()
			}
			b.ReportAllocs()
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				rng := rand.New(rand.NewPCG(rand.Uint64(), 9))
				for pb.Next() {
					if err := s.Set(ctx, fmt.Sprintf("w/%05d", rng.IntN(10000)), value); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			cancel()
		})
	}
}
