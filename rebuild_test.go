package kv_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
)

// damageFile overwrites two bytes inside every occurrence of marker in path
// (bbolt leaves stale copies of rewritten pages in freed space, so the live
// copy need not be the first).
func damageFile(t *testing.T, path string, marker []byte) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	found := 0
	for off := 0; ; off++ {
		i := bytes.Index(data[off:], marker)
		if i < 0 {
			break
		}
		off += i
		if _, err := f.WriteAt([]byte("##"), int64(off+2)); err != nil {
			t.Fatal(err)
		}
		found++
	}
	if found == 0 {
		t.Fatalf("marker %q not found in %s", marker, path)
	}
}

// damageMeta overwrites both bbolt meta pages of path.
func damageMeta(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, off := range []int64{16, int64(os.Getpagesize()) + 16} {
		if _, err := f.WriteAt(bytes.Repeat([]byte{0x5A}, 48), off); err != nil {
			t.Fatal(err)
		}
	}
}

func openSingle(t *testing.T, dir string) (*kv.Store, kv.Config) {
	t.Helper()
	cfg := fastConfig(t, dir, "solo", 1, nil)
	s, err := kv.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WaitForLeader(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	return s, cfg
}

func TestOpen_DamagedRecordIsReportedOnRead(t *testing.T) {
	s, cfg := openSingle(t, t.TempDir())
	ctx := ctxT(t, 20*time.Second)
	if err := s.Set(ctx, "victim", []byte("VICTIM-RECORD-0123456789")); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "other", []byte("fine")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(cfg.DataDir, "data.db")
	damageFile(t, data, []byte("VICTIM-RECORD"))

	s, err := kv.Open(cfg)
	if err != nil {
		t.Fatalf("Open with one damaged record: %v", err)
	}
	defer s.Close()
	if err := s.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = s.Get(ctx, "victim")
	if !errors.Is(err, kv.ErrCorrupt) || !strings.Contains(err.Error(), data) {
		t.Fatalf("Get of a damaged record: %v, want ErrCorrupt naming %s", err, data)
	}
	if errors.Is(err, kv.ErrNotFound) {
		t.Fatal("a damaged record is reported as absent")
	}
	if _, err := s.List(ctx, ""); !errors.Is(err, kv.ErrCorrupt) {
		t.Fatalf("List over a damaged record: %v, want ErrCorrupt", err)
	}
	if v, err := s.Get(ctx, "other"); err != nil || string(v) != "fine" {
		t.Fatalf("Get of an intact record: %q, %v", v, err)
	}
	var buf bytes.Buffer
	if err := s.Backup(ctx, &buf); !errors.Is(err, kv.ErrCorrupt) {
		t.Fatalf("Backup of a damaged data file: %v, want ErrCorrupt", err)
	}
}

func TestOpen_DamagedFilesAreReported(t *testing.T) {
	for _, tc := range []struct {
		name   string
		file   string
		damage func(t *testing.T, path string)
	}{
		{"data file meta pages", "data.db", damageMeta},
		{"raft log meta pages", "raft.db", damageMeta},
		{"raft log record", "raft.db", func(t *testing.T, path string) { damageFile(t, path, []byte("LOG-VICTIM")) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, cfg := openSingle(t, t.TempDir())
			ctx := ctxT(t, 20*time.Second)
			for i := 0; i < 20; i++ {
				if err := s.Set(ctx, fmt.Sprintf("k%02d", i), []byte(fmt.Sprintf("LOG-VICTIM-%02d", i))); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(cfg.DataDir, tc.file)
			tc.damage(t, path)
			s2, err := kv.Open(cfg)
			if err == nil {
				s2.Close()
				t.Fatalf("Open of a DataDir with a damaged %s succeeded", tc.file)
			}
			if !errors.Is(err, kv.ErrCorrupt) || !strings.Contains(err.Error(), path) {
				t.Fatalf("Open: %v, want ErrCorrupt naming %s", err, path)
			}
		})
	}
}

func TestRebuild_MemberWithDamagedDataFile(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t, 90*time.Second)
	l := c.waitLeader()
	for i := 0; i < 100; i++ {
		if err := c.nodes[l].Set(ctx, fmt.Sprintf("before/%03d", i), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	victim := c.followers()[0]
	cfg := c.cfgs[victim]
	if err := c.nodes[victim].Close(); err != nil {
		t.Fatal(err)
	}
	c.nodes[victim] = nil
	data := filepath.Join(cfg.DataDir, "data.db")
	damageMeta(t, data)

	_, err := kv.Open(cfg)
	if !errors.Is(err, kv.ErrCorrupt) || !strings.Contains(err.Error(), data) {
		t.Fatalf("Open of the damaged member: %v, want ErrCorrupt naming %s", err, data)
	}
	// The others go on meanwhile.
	l = c.waitLeader()
	for i := 0; i < 50; i++ {
		if err := c.nodes[l].Set(ctx, fmt.Sprintf("during/%03d", i), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}

	cfg.Join = []string{c.nodes[l].GossipAddr()}
	if err := kv.Rebuild(ctx, kv.Config{NodeID: cfg.NodeID, DataDir: cfg.DataDir, BootstrapExpect: cfg.BootstrapExpect, InMemory: true, Join: cfg.Join}); !errors.Is(err, kv.ErrInvalidConfig) {
		t.Fatalf("Rebuild of an InMemory config: %v, want ErrInvalidConfig", err)
	}
	noJoin := cfg
	noJoin.Join = nil
	if err := kv.Rebuild(ctx, noJoin); !errors.Is(err, kv.ErrInvalidConfig) {
		t.Fatalf("Rebuild without Join: %v, want ErrInvalidConfig", err)
	}

	// An interrupted Rebuild leaves the DataDir refused by Open.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := kv.Rebuild(cancelled, cfg); err == nil {
		t.Fatal("Rebuild with a cancelled context succeeded")
	}
	if s, err := kv.Open(cfg); err == nil || !strings.Contains(err.Error(), "unfinished Rebuild") {
		if s != nil {
			s.Close()
		}
		t.Fatalf("Open after an interrupted Rebuild: %v, want a refusal", err)
	}

	if err := kv.Rebuild(ctx, cfg); err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	aside, _ := filepath.Glob(filepath.Join(cfg.DataDir, "damaged-*", "data.db"))
	if len(aside) != 1 {
		t.Fatalf("damaged data file not kept aside: %v", aside)
	}
	for _, m := range c.nodes[l].Members() {
		if m.ID == cfg.NodeID && m.Voter {
			t.Fatalf("rebuilt member still a voter after Rebuild: %+v", m)
		}
	}

	c.cfgs[victim] = cfg
	c.open(victim)
	s := c.nodes[victim]
	// It catches up from the others and is promoted back to voter.
	deadline := time.Now().Add(60 * time.Second)
	for {
		voter := false
		for _, m := range c.nodes[l].Members() {
			if m.ID == cfg.NodeID && m.Voter {
				voter = true
			}
		}
		if voter {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rebuilt member not promoted: %+v", c.nodes[l].Stats())
		}
		time.Sleep(100 * time.Millisecond)
	}
	got, err := s.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	want, err := c.nodes[l].List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 150 || len(want) != 150 {
		t.Fatalf("rebuilt member has %d pairs, leader %d, want 150", len(got), len(want))
	}
	for i := range got {
		if got[i].Key != want[i].Key || !bytes.Equal(got[i].Value, want[i].Value) {
			t.Fatalf("pair %d differs: %q=%q vs %q=%q", i, got[i].Key, got[i].Value, want[i].Key, want[i].Value)
		}
	}
	if err := s.Set(ctx, "after", []byte("x")); err != nil {
		t.Fatalf("write through the rebuilt member: %v", err)
	}
}
