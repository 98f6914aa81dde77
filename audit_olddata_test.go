package kv_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cohortkv/kv"
)

// A DataDir of the version before revisions (no change log, format 1
// records) watches and leases like a new one: a Watch continues a
// ListEntries, one from before the log ends with ErrCompacted (with the
// data file; replayed from the log, the whole history is there), and keys
// on a lease and with a TTL are deleted as delete events.
func TestStore_Format1DataDir_WatchAndLeases(t *testing.T) {
	for _, replay := range []bool{false, true} {
		t.Run(map[bool]string{false: "data file", true: "log replayed"}[replay], func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "datadir")
			untar(t, "testdata/datadir-format1.tar.gz", filepath.Dir(dir))
			if replay {
				if err := os.Remove(filepath.Join(dir, "data.db")); err != nil {
					t.Fatal(err)
				}
			}
			s, err := kv.Open(kv.Config{NodeID: "old", DataDir: dir, BootstrapExpect: 1, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ctx := ctxT(t, time.Minute)
			ents, rev, err := s.ListEntries(ctx, "")
			if err != nil || len(ents) == 0 {
				t.Fatalf("ListEntries: %v, %v", ents, err)
			}
			old := ents[0].ModRev
			for ev, err := range s.Watch(ctx, "", old) {
				if replay {
					if err != nil || ev.Entry.ModRev != old {
						t.Fatalf("a watch from %d on the replayed log: %+v, %v", old, ev, err)
					}
				} else if !errors.Is(err, kv.ErrCompacted) {
					t.Fatalf("a watch from %d, before the change log: %+v, %v; want ErrCompacted", old, ev, err)
				}
				break
			}
			id, err := s.Grant(ctx, 300*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Set(ctx, "leased", []byte("1"), kv.WithLease(id)); err != nil {
				t.Fatal(err)
			}
			if err := s.Set(ctx, "ttl", []byte("1"), kv.TTL(300*time.Millisecond)); err != nil {
				t.Fatal(err)
			}
			want := map[string]kv.EventType{"leased": kv.EventPut, "ttl": kv.EventPut}
			deleted := map[string]bool{}
			last := rev
			for ev, err := range s.Watch(ctx, "", rev+1) {
				if err != nil {
					t.Fatalf("watch: %v (deleted so far %v)", err, deleted)
				}
				if ev.Entry.ModRev < last {
					t.Fatalf("revision %d after %d", ev.Entry.ModRev, last)
				}
				last = ev.Entry.ModRev
				if ev.Type == kv.EventPut && want[ev.Entry.Key] != kv.EventPut {
					t.Fatalf("unexpected %v", ev)
				}
				if ev.Type == kv.EventDelete {
					deleted[ev.Entry.Key] = true
				}
				if deleted["leased"] && deleted["ttl"] {
					break
				}
			}
			for _, k := range []string{"leased", "ttl"} {
				if _, err := s.GetEntry(ctx, k); !errors.Is(err, kv.ErrNotFound) {
					t.Errorf("%s after its lease expired: %v", k, err)
				}
			}
		})
	}
}
