package kv

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/storage"
)

// TestRebuild_ReadClusterIDLeavesRaftDBAsItIs: reading the cluster ID of a
// (possibly damaged) raft.db before Rebuild moves it aside opens it without
// compacting it: the file set aside is the one that was there, not a copy
// rewritten without fsync.
func TestRebuild_ReadClusterIDLeavesRaftDBAsItIs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	ls, err := storage.OpenLogStore(path, storage.LogStoreOptions{NoSync: true, AutoCompactMinSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	// Over the default threshold of compaction at open, and mostly free.
	data := make([]byte, 16<<10)
	const n = 5000
	for i := uint64(1); i <= n; i += 100 {
		logs := make([]*raft.Log, 0, 100)
		for j := i; j < i+100; j++ {
			logs = append(logs, &raft.Log{Index: j, Term: 1, Type: raft.LogCommand, Data: data})
		}
		if err := ls.StoreLogs(logs); err != nil {
			t.Fatal(err)
		}
	}
	if err := ls.Set(keyClusterID, []byte("c1")); err != nil {
		t.Fatal(err)
	}
	if err := ls.DeleteRange(1, n-10); err != nil {
		t.Fatal(err)
	}
	if err := ls.Close(); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if before.Size() < storage.DefaultAutoCompactMinSize {
		t.Fatalf("raft.db of %d bytes: under the threshold of compaction at open", before.Size())
	}
	if id := readClusterID(path); id != "c1" {
		t.Fatalf("cluster ID %q, want c1", id)
	}
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) || after.Size() != before.Size() {
		t.Fatalf("readClusterID replaced raft.db (%d bytes, was %d)", after.Size(), before.Size())
	}
}
