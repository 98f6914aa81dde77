package kv

// Micro-benchmarks of the hot paths. The side-by-side comparison
// with etcd and raw hashicorp/raft is the separate module in bench/.
//
//	go test -run '^$' -bench Hot -benchtime 100x .   # a quick pass, well under a minute
//	go test -run '^$' -bench Hot .                   # real numbers
//
// This file is in package kv so that the unexported state machine and
// command codec are reachable; for the same reason it cannot import kvtest
// (kvtest imports kv), so BenchmarkHotCluster opens its 3 members with Open
// directly, as kvtest does, without the fault-injection hooks.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/logging"
	"github.com/cohortkv/kv/internal/storage"
)

const (
	hotKeys      = 10_000
	hotValueSize = 100
)

func hotKey(i int) string { return fmt.Sprintf("k%015x", uint64(i)*0x9e3779b97f4a7c15>>4) }

func hotValue() []byte {
	v := make([]byte, hotValueSize)
	for i := range v {
		v[i] = 'a' + byte(i%26)
	}
	return v
}

// hotSession is a write session for the benchmarks: its ID, and the next
// sequence to hand out.
type hotSession struct {
	id  sessionID
	seq uint64
}

// hotKeys returns n random keys.
func hotKeyList(n int, rng *rand.Rand) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = hotKey(rng.IntN(hotKeys))
	}
	return keys
}

// hotEntry encodes an entry of group-committed writes, one Set of each
// key under sess, as a leader does. The floor trails by 64 sequences, as
// it does with that many writes in flight.
func hotEntry(keys []string, sess *hotSession) []byte {
	v := hotValue()
	cmds := make([]command, len(keys))
	floor := max(sess.seq+1, 64) - 63
	for i := range cmds {
		sess.seq++
		cmds[i] = command{kind: cmdTxn, sess: sess.id, seq: sess.seq, floor: floor, then: []Op{OpSet(keys[i], v)}}
	}
	return encodeEntry(uint64(time.Now().UnixMilli()), cmds)
}

// BenchmarkHotFSMApplyBatch: the state machine applying what raft hands it
// in one call, on a bbolt data file in a temp dir, durable (fsync per
// call), as a Store runs it. entries is the number of log entries per call,
// ops the writes per entry (a group-committed entry carries many), each
// under a session the table holds.
func BenchmarkHotFSMApplyBatch(b *testing.B) {
	for _, shape := range []struct{ entries, ops int }{{1, 1}, {1, 256}, {16, 16}} {
		b.Run(fmt.Sprintf("entries=%d/ops=%d", shape.entries, shape.ops), func(b *testing.B) {
			eng, err := storage.OpenBolt(filepath.Join(b.TempDir(), "data.db"), storage.BoltOptions{})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { eng.Close() })
			stop := make(chan struct{})
			b.Cleanup(func() { close(stop) })
			f := newFSM(eng, logging.Discard(), stop, func(error) {}, WatchHistory{})
			rng := rand.New(rand.NewPCG(1, 2))
			index := uint64(1)
			reg := f.Apply(&raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: encodeEntry(uint64(time.Now().UnixMilli()), []command{{kind: cmdRegister, nonce: 1}})})
			if res, ok := reg.([]cmdResult); !ok || res[0].status != resOK {
				b.Fatalf("register: %v", reg)
			}
			sess := &hotSession{id: newSessionID(index, 1)}
			// A few distinct sets of keys, reused (with new sequences).
			keys := make([][]string, 8)
			for i := range keys {
				keys[i] = hotKeyList(shape.ops, rng)
			}
			batch := func() []*raft.Log {
				logs := make([]*raft.Log, shape.entries)
				for i := range logs {
					index++
					logs[i] = &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: hotEntry(keys[int(index)%len(keys)], sess)}
				}
				return logs
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				logs := batch() // encoding is not measured here
				b.StartTimer()
				for i, r := range f.ApplyBatch(logs) {
					res, ok := r.([]cmdResult)
					if !ok || len(res) != shape.ops || res[0].status != resOK {
						b.Fatalf("entry %d: %v", i, r)
					}
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*shape.entries*shape.ops), "ns/write")
		})
	}
}

// BenchmarkHotEncodeCommand and BenchmarkHotDecodeCommand: the log entry
// codec, for one write (a lone Set) and for a group-committed entry of 256.
func BenchmarkHotEncodeCommand(b *testing.B) {
	for _, ops := range []int{1, 256} {
		b.Run(fmt.Sprintf("ops=%d", ops), func(b *testing.B) {
			rng := rand.New(rand.NewPCG(3, 4))
			v := hotValue()
			id := newSessionID(1, 2)
			cmds := make([]command, ops)
			for i := range cmds {
				cmds[i] = command{kind: cmdTxn, sess: id, seq: uint64(1000 + i), floor: 990, then: []Op{OpSet(hotKey(rng.IntN(hotKeys)), v)}}
			}
			b.ReportAllocs()
			for range b.N {
				if cmd := encodeEntry(1, cmds); len(cmd) == 0 {
					b.Fatal("empty")
				}
			}
		})
	}
}

func BenchmarkHotDecodeCommand(b *testing.B) {
	for _, ops := range []int{1, 256} {
		b.Run(fmt.Sprintf("ops=%d", ops), func(b *testing.B) {
			cmd := hotEntry(hotKeyList(ops, rand.New(rand.NewPCG(5, 6))), &hotSession{id: newSessionID(1, 2)})
			b.SetBytes(int64(len(cmd)))
			b.ReportAllocs()
			for range b.N {
				d, err := decodeEntry(cmd)
				if err != nil || len(d.cmds) != ops {
					b.Fatal(len(d.cmds), err)
				}
			}
		})
	}
}

// BenchmarkHotCluster runs on one 3-member cluster on 127.0.0.1 with real
// files (fsync on) and default timeouts, built once for its sub-benchmarks:
//
//	set-forwarded  Set on a follower, forwarded to the leader (RunParallel)
//	set-leader     Set on the leader, for comparison (RunParallel)
//	get-stale      Get with Stale() on a follower: a local read
//	get-stale-parallel  the same from GOMAXPROCS*8 goroutines
//
// get-stale's allocs/op includes the returned value (1 allocation).
func BenchmarkHotCluster(b *testing.B) {
	dir := b.TempDir()
	var stores []*Store
	b.Cleanup(func() {
		for _, s := range stores {
			s.Close()
		}
	})
	for i := range 3 {
		cfg := Config{
			NodeID:          fmt.Sprintf("hot%d", i),
			DataDir:         filepath.Join(dir, fmt.Sprintf("hot%d", i)),
			BootstrapExpect: 3,
		}
		if i > 0 {
			cfg.Join = []string{stores[0].GossipAddr()}
		}
		s, err := Open(cfg)
		if err != nil {
			b.Fatal(err)
		}
		stores = append(stores, s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	leader, follower := hotLeader(ctx, b, stores)
	value := hotValue()
	// Load the keys through the leader, and make sure the follower has them.
	errc := make(chan error, 64)
	for g := range 64 {
		go func() {
			for i := g; i < hotKeys; i += 64 {
				if err := leader.Set(ctx, hotKey(i), value); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	for range 64 {
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
	}
	if _, err := follower.Get(ctx, hotKey(hotKeys-1)); err != nil {
		b.Fatal(err)
	}

	parallelSet := func(s *Store) func(b *testing.B) {
		return func(b *testing.B) {
			b.SetParallelism(8)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				rng := rand.New(rand.NewPCG(rand.Uint64(), 7))
				for pb.Next() {
					if err := s.Set(ctx, hotKey(rng.IntN(hotKeys)), value); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
	}
	b.Run("set-forwarded", parallelSet(follower))
	b.Run("set-leader", parallelSet(leader))
	b.Run("get-stale", func(b *testing.B) {
		keys := make([]string, 1024)
		for i := range keys {
			keys[i] = hotKey(i * 7 % hotKeys)
		}
		stale := Stale()
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			v, err := follower.Get(ctx, keys[i%len(keys)], stale)
			if err != nil || len(v) != hotValueSize {
				b.Fatal(len(v), err)
			}
		}
	})
	b.Run("get-stale-parallel", func(b *testing.B) {
		stale := Stale()
		b.SetParallelism(8)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			rng := rand.New(rand.NewPCG(rand.Uint64(), 8))
			keys := make([]string, 1024)
			for i := range keys {
				keys[i] = hotKey(rng.IntN(hotKeys))
			}
			i := 0
			for pb.Next() {
				v, err := follower.Get(ctx, keys[i%len(keys)], stale)
				if err != nil || len(v) != hotValueSize {
					b.Error(len(v), err)
					return
				}
				i++
			}
		})
	})
}

// hotLeader waits until one member leads and serves linearizable reads, and
// returns it and a follower.
func hotLeader(ctx context.Context, b *testing.B, stores []*Store) (leader, follower *Store) {
	for {
		for i, s := range stores {
			if s.Stats().State != StateLeader {
				continue
			}
			if _, err := s.Get(ctx, "hot-probe"); err == nil || errors.Is(err, ErrNotFound) {
				return s, stores[(i+1)%len(stores)]
			}
		}
		select {
		case <-ctx.Done():
			b.Fatal("no leader:", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// BenchmarkHotHistoryCommitted: the in-memory ring of recent changes, once
// full, takes one revision and drops the oldest on every commit. The cost
// per commit must not grow with the ring (ringRevs revisions).
func BenchmarkHotHistoryCommitted(b *testing.B) {
	h := newHistory(0, WatchHistory{})
	ev := []Event{{Type: EventPut, Entry: Entry{Key: "k", Value: []byte("v")}}}
	for i := uint64(1); i <= 2*ringRevs; i++ {
		h.pending = append(h.pending, histRev{rev: i, events: ev, size: 64})
		h.committed(i)
	}
	next := uint64(2*ringRevs + 1)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		h.pending = append(h.pending, histRev{rev: next, events: ev, size: 64})
		h.committed(next)
		next++
	}
}
