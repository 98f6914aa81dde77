package kv_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// restoreFixture is a backup of the "new" data set (n keys new/…) and a
// cluster serving the "old" one (old/…), with a short chunk size so that a
// restore takes many chunk entries.
type restoreFixture struct {
	c      *kvtest.Cluster
	backup []byte
	n      int
}

const restoreTestChunk = 16 << 10

func newRestoreFixture(t *testing.T, members, n int) *restoreFixture {
	t.Helper()
	ctx := ctxT(t, 60*time.Second)
	src, err := kv.Open(kv.Config{NodeID: "src", InMemory: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if err := src.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	val := bytes.Repeat([]byte("v"), 500)
	for i := 0; i < n; i++ {
		if err := src.Set(ctx, fmt.Sprintf("new/%04d", i), append([]byte(fmt.Sprint(i, ":")), val...)); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := src.Backup(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	c := kvtest.NewCluster(t, members, kvtest.Logger(testLogger(t)))
	for i := 0; i < 20; i++ {
		if err := c.Node(c.Leader()).Set(ctx, fmt.Sprintf("old/%02d", i), []byte("old")); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < members; i++ {
		kv.SetRestoreChunkSize(c.Node(i), restoreTestChunk)
	}
	return &restoreFixture{c: c, backup: buf.Bytes(), n: n}
}

// serves checks that member i serves the old or the new data set (a stale
// read of its own data).
func (f *restoreFixture) serves(t *testing.T, i int, newData bool) {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	s := f.c.Node(i)
	olds, err := s.List(ctx, "old/", kv.Stale())
	if err != nil {
		t.Fatalf("node%d: %v", i, err)
	}
	news, err := s.List(ctx, "new/", kv.Stale())
	if err != nil {
		t.Fatalf("node%d: %v", i, err)
	}
	if newData {
		if len(olds) != 0 || len(news) != f.n || news[f.n-1].Key != fmt.Sprintf("new/%04d", f.n-1) {
			t.Fatalf("node%d serves %d old and %d new keys; want the restored %d new ones only", i, len(olds), len(news), f.n)
		}
		return
	}
	if len(olds) != 20 || len(news) != 0 {
		t.Fatalf("node%d serves %d old and %d new keys; want the 20 old ones only", i, len(olds), len(news))
	}
}

// caughtUp waits until every running member has applied what member i has.
func caughtUp(t *testing.T, c *kvtest.Cluster, i int) uint64 {
	t.Helper()
	want := c.Node(i).Stats().AppliedIndex
	deadline := time.Now().Add(30 * time.Second)
	for j := 0; j < c.N(); j++ {
		for c.Node(j) != nil && c.Node(j).Stats().AppliedIndex < want {
			if time.Now().After(deadline) {
				t.Fatalf("node%d applied %d, node%d %d, after 30 s", j, c.Node(j).Stats().AppliedIndex, i, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return want
}

// stagingFiles lists member i's restore stagings.
func stagingFiles(t *testing.T, c *kvtest.Cluster, i int) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(c.Config(i).DataDir, "restore-*.staging"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// noRestoreFiles waits until no member holds a staging or a checked copy.
func noRestoreFiles(t *testing.T, c *kvtest.Cluster) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; i < c.N(); i++ {
		for {
			m, _ := filepath.Glob(filepath.Join(c.Config(i).DataDir, "restore-*"))
			if len(m) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node%d keeps %v", i, m)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// A restore goes through the log: every member serves the restored data
// from the same index on, writes go on after it, and it survives restarts.
// Nothing of it is visible anywhere before its commit entry applies.
func TestRestore_EveryMemberInstallsAtTheCommit(t *testing.T) {
	f := newRestoreFixture(t, 3, 400)
	c := f.c
	ctx := ctxT(t, 120*time.Second)
	l := c.Leader()
	held := 0
	kv.SetRestoreHook(c.Node(l), func(step string, n int) {
		if step != "commit" {
			return
		}
		// Every chunk is applied on the leader, and staged on every
		// member: nobody serves any of it yet.
		held++
		caughtUp(t, c, l)
		for i := 0; i < c.N(); i++ {
			f.serves(t, i, false)
			if len(stagingFiles(t, c, i)) == 0 {
				t.Errorf("node%d holds no staging before the commit", i)
			}
		}
	})
	if err := c.Node(l).Restore(ctx, bytes.NewReader(f.backup)); err != nil {
		t.Fatal(err)
	}
	if held != 1 {
		t.Fatalf("the commit hook ran %d times", held)
	}
	idx := caughtUp(t, c, l)
	for i := 0; i < c.N(); i++ {
		f.serves(t, i, true)
		if got := c.Node(i).Stats().AppliedIndex; got != idx {
			t.Fatalf("node%d at index %d, leader at %d", i, got, idx)
		}
	}
	noRestoreFiles(t, c)
	if err := c.Node(c.Leader()).Set(ctx, "new/0000", []byte("after")); err != nil {
		t.Fatal(err)
	}
	c.Restart((l + 1) % c.N())
	for i := 0; i < c.N(); i++ {
		if v, err := c.Node(i).Get(ctx, "new/0000"); err != nil || string(v) != "after" {
			t.Fatalf("node%d after restart: %q, %v", i, v, err)
		}
	}
}

// A directory where the engine builds the restored data file makes the
// leader's staging fail: Restore returns an error, the restore is aborted,
// the process lives on, and the old data is still served and writable.
func TestRestore_FailedStagingReturnsErrorOldDataServes(t *testing.T) {
	f := newRestoreFixture(t, 1, 100)
	c := f.c
	ctx := ctxT(t, 60*time.Second)
	s := c.Node(0)
	blocker := filepath.Join(c.Config(0).DataDir, "data.db.restore")
	if err := os.MkdirAll(filepath.Join(blocker, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	err := s.Restore(ctx, bytes.NewReader(f.backup))
	if err == nil {
		t.Fatal("Restore succeeded with a directory in the way of its file")
	}
	t.Logf("Restore: %v", err)
	f.serves(t, 0, false)
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := s.Set(wctx, "old/00", []byte("written after")); err != nil {
		t.Fatalf("write after a failed restore: %v", err)
	}
	if v, err := s.Get(wctx, "old/00"); err != nil || string(v) != "written after" {
		t.Fatalf("read after a failed restore: %q, %v", v, err)
	}
	if m, _ := filepath.Glob(filepath.Join(c.Config(0).DataDir, "restore-*")); len(m) != 0 {
		t.Fatalf("left behind: %v", m)
	}
	// Out of the way, the same backup restores.
	if err := os.RemoveAll(blocker); err != nil {
		t.Fatal(err)
	}
	if err := s.Restore(ctx, bytes.NewReader(f.backup)); err != nil {
		t.Fatal(err)
	}
	f.serves(t, 0, true)
}

// A leader killed halfway through a restore leaves the old data on every
// member; the next leader aborts the staging, serves, writes, and restores.
func TestRestore_LeaderKilledMidRestore(t *testing.T) {
	f := newRestoreFixture(t, 3, 400)
	c := f.c
	ctx := ctxT(t, 120*time.Second)
	l := c.Leader()
	reached := make(chan struct{})
	release := make(chan struct{})
	kv.SetRestoreHook(c.Node(l), func(step string, n int) {
		if step == "chunk" && n == 5 {
			close(reached)
			<-release
		}
	})
	done := make(chan error, 1)
	go func() { done <- c.Node(l).Restore(ctx, bytes.NewReader(f.backup)) }()
	select {
	case <-reached:
	case err := <-done:
		t.Fatalf("Restore ended before its 5th chunk: %v", err)
	}
	caughtUp(t, c, l)
	for i := 0; i < c.N(); i++ {
		if len(stagingFiles(t, c, i)) != 1 {
			t.Fatalf("node%d stages %v", i, stagingFiles(t, c, i))
		}
	}
	c.Kill(l)
	close(release)
	if err := <-done; err == nil {
		t.Fatal("Restore on a killed leader succeeded")
	} else {
		t.Logf("Restore on the killed leader: %v", err)
	}
	nl := c.Leader()
	// The new leader aborts the staging it inherited (the killed
	// member's stays until it comes back).
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; i < c.N(); i++ {
		for i != l && len(stagingFiles(t, c, i)) != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("node%d still stages %v", i, stagingFiles(t, c, i))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for i := 0; i < c.N(); i++ {
		if c.Node(i) != nil {
			f.serves(t, i, false)
		}
	}
	if err := c.Node(nl).Set(ctx, "old/00", []byte("new leader")); err != nil {
		t.Fatal(err)
	}
	kv.SetRestoreChunkSize(c.Node(nl), restoreTestChunk)
	if err := c.Node(nl).Restore(ctx, bytes.NewReader(f.backup)); err != nil {
		t.Fatalf("restore on the new leader: %v", err)
	}
	c.Restart(l)
	idx := caughtUp(t, c, nl)
	for i := 0; i < c.N(); i++ {
		f.serves(t, i, true)
		if got := c.Node(i).Stats().AppliedIndex; got < idx {
			t.Fatalf("node%d at %d, want %d", i, got, idx)
		}
	}
	noRestoreFiles(t, c)
}

// A follower that crashes and restarts halfway through a restore takes up
// its staging from disk and installs the restore at the commit with the
// others.
func TestRestore_FollowerRestartsMidStream(t *testing.T) {
	f := newRestoreFixture(t, 3, 400)
	c := f.c
	ctx := ctxT(t, 120*time.Second)
	l := c.Leader()
	fl := (l + 1) % c.N()
	kv.SetRestoreHook(c.Node(l), func(step string, n int) {
		if step == "chunk" && n == 6 {
			caughtUp(t, c, l)
			c.Restart(fl)
		}
	})
	if err := c.Node(l).Restore(ctx, bytes.NewReader(f.backup)); err != nil {
		t.Fatal(err)
	}
	idx := caughtUp(t, c, l)
	for i := 0; i < c.N(); i++ {
		f.serves(t, i, true)
		if got := c.Node(i).Stats().AppliedIndex; got < idx {
			t.Fatalf("node%d at %d, want %d", i, got, idx)
		}
	}
	noRestoreFiles(t, c)
}

// Open removes the checked copies that a leader's Restore left in DataDir
// when it crashed.
func TestRestore_LeftoverCopyRemovedAtOpen(t *testing.T) {
	c := kvtest.NewCluster(t, 1, kvtest.Logger(testLogger(t)))
	dir := c.Config(0).DataDir
	c.Kill(0)
	left := filepath.Join(dir, "restore-123456.tmp")
	if err := os.WriteFile(left, []byte("half a copy"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.Restart(0)
	if _, err := os.Stat(left); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("leftover copy after Open: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Node(0).Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
}
