package kv

import (
	"bytes"
	"errors"
	"hash/crc32"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/logging"
	"github.com/cohortkv/kv/internal/storage"
)

// restoreLogs returns the entries of a restore of stream, from index on:
// begin, chunks of chunk bytes, commit.
func restoreLogs(id restoreID, stream []byte, chunk int, index uint64) []*raft.Log {
	mk := func(e restoreEntry) *raft.Log {
		l := &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: e.encode()}
		index++
		return l
	}
	logs := []*raft.Log{mk(restoreEntry{kind: restoreBegin, id: id, total: uint64(len(stream)), crc: crc32.Checksum(stream, crc32.MakeTable(crc32.Castagnoli))})}
	for off := 0; off < len(stream); off += chunk {
		logs = append(logs, mk(restoreEntry{kind: restoreChunk, id: id, off: uint64(off), data: stream[off:min(off+chunk, len(stream))]}))
	}
	return append(logs, mk(restoreEntry{kind: restoreCommit, id: id}))
}

func testRestoreStream(t *testing.T) []byte {
	t.Helper()
	src := newTestFSM(t, storage.NewMemory())
	var ops []Op
	for i := 0; i < 200; i++ {
		ops = append(ops, setOp(string(rune('a'+i%26))+string(rune('a'+i/26)), "restored"))
	}
	src.ApplyBatch([]*raft.Log{cmdLog(t, 3, ops...)})
	snap, err := src.eng.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	var b bytes.Buffer
	if err := storage.WriteSnapshot(&b, 0, snap); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// restoreTestFSM is an FSM on eng that stages in a directory for Bolt.
func restoreTestFSM(t *testing.T, eng storage.Engine) *fsm {
	f := newTestFSM(t, eng)
	if _, ok := eng.(*storage.Bolt); ok {
		f.rs = newRestorer(t.TempDir(), eng, logging.Discard())
		t.Cleanup(f.rs.close)
	}
	return f
}

// The state machine stages a restore's chunks without touching the data,
// refuses snapshots meanwhile, and installs the copy at the commit entry
// with the commit's index; entries in between and after apply in order.
func TestFSMRestore_InstallsAtCommit(t *testing.T) {
	stream := testRestoreStream(t)
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		for _, oneBatch := range []bool{false, true} {
			f := restoreTestFSM(t, open(t))
			f.ApplyBatch([]*raft.Log{cmdLog(t, 1, setOp("old", "1"))})
			logs := restoreLogs(newRestoreID(), stream, 1000, 2)
			commit := logs[len(logs)-1]
			// A write between the chunks and the commit: the restore
			// replaces it. One after the commit stays.
			before := cmdLog(t, commit.Index, setOp("between", "x"))
			commit.Index++
			after := cmdLog(t, commit.Index+1, setOp("after", "y"))
			all := append(append(logs[:len(logs)-1:len(logs)-1], before, commit), after)
			if oneBatch {
				f.ApplyBatch(all)
			} else {
				for _, l := range all[:len(all)-2] {
					if r, isErr := f.ApplyBatch([]*raft.Log{l})[0].(error); isErr {
						t.Fatalf("entry %d: %v", l.Index, r)
					}
				}
				checkApplied(t, f.eng, before.Index)
				if got := fsmDump(t, f.eng); len(got) != 2 {
					t.Fatalf("before the commit the data is %v; want old and between only", got)
				}
				if _, err := f.Snapshot(); err == nil {
					t.Fatal("a snapshot was taken while a restore is staged")
				}
				f.ApplyBatch(all[len(all)-2:])
			}
			checkApplied(t, f.eng, after.Index)
			got := fsmDump(t, f.eng)
			if len(got) != 201 {
				t.Fatalf("oneBatch=%v: after the commit %d keys, want 200 restored and one written after", oneBatch, len(got))
			}
			found := false
			for _, p := range got {
				found = found || p.key == "after" && p.mod == after.Index
				if p.key == "old" || p.key == "between" {
					t.Fatalf("oneBatch=%v: %v survived the restore", oneBatch, p)
				}
			}
			if !found {
				t.Fatalf("oneBatch=%v: the write after the commit is missing", oneBatch)
			}
			if _, ok := f.rs.openID(); ok {
				t.Fatal("staging still open after the commit")
			}
			s, err := f.Snapshot()
			if err != nil {
				t.Fatalf("snapshot after the commit: %v", err)
			}
			s.Release()
		}
	})
}

// A commit this member has no staging for (it missed the chunks) is not
// skipped: the state machine stops there, as on a failed engine commit.
func TestFSMRestore_CommitWithoutStagingStops(t *testing.T) {
	stop := make(chan struct{})
	f := newFSM(storage.NewMemory(), logging.Discard(), stop, func(error) {}, WatchHistory{})
	f.ApplyBatch([]*raft.Log{cmdLog(t, 1, setOp("old", "1"))})
	time.AfterFunc(100*time.Millisecond, func() { close(stop) })
	commit := &raft.Log{Index: 2, Type: raft.LogCommand, Data: restoreEntry{kind: restoreCommit, id: newRestoreID()}.encode()}
	resp := f.ApplyBatch([]*raft.Log{commit, cmdLog(t, 3, setOp("later", "1"))})
	if !errors.Is(resp[0].(error), ErrClosed) {
		t.Fatalf("response %v, want ErrClosed after the stop", resp[0])
	}
	checkApplied(t, f.eng, 1)
}

// A staging that fails (here: the copy does not match its checksum) is
// reported to the leader's status check; an abort removes it.
func TestFSMRestore_FailedStagingStatusAndAbort(t *testing.T) {
	stream := testRestoreStream(t)
	f := restoreTestFSM(t, storage.NewMemory())
	id := newRestoreID()
	logs := restoreLogs(id, stream, 4096, 1)
	logs[1].Data[len(logs[1].Data)-1] ^= 0xff
	f.ApplyBatch(logs[:len(logs)-1])
	if err := f.rs.status(id); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("status of a damaged staging: %v", err)
	}
	f.ApplyBatch([]*raft.Log{{Index: logs[len(logs)-1].Index, Type: raft.LogCommand, Data: restoreEntry{kind: restoreAbort, id: id}.encode()}})
	if _, ok := f.rs.openID(); ok {
		t.Fatal("staging open after its abort")
	}
	if err := f.rs.status(id); !errors.Is(err, errNoStaging) {
		t.Fatalf("status after abort: %v", err)
	}
}

// A staging on disk survives a restart: the chunks applied before it are
// not applied again, and the commit installs the whole copy.
func TestFSMRestore_StagingSurvivesRestart(t *testing.T) {
	stream := testRestoreStream(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "data.db")
	eng, err := storage.OpenBolt(path, storage.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f := newTestFSM(t, eng)
	f.rs = newRestorer(dir, eng, logging.Discard())
	logs := restoreLogs(newRestoreID(), stream, 1000, 1)
	half := len(logs) / 2
	f.ApplyBatch(logs[:half])
	if err := eng.Flush(); err != nil {
		t.Fatal(err)
	}
	f.rs.close()
	eng.Close()

	eng, err = storage.OpenBolt(path, storage.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	f = newTestFSM(t, eng)
	f.rs = newRestorer(dir, eng, logging.Discard())
	defer f.rs.close()
	checkApplied(t, eng, logs[half-1].Index)
	f.ApplyBatch(logs) // the first half is skipped as replayed
	checkApplied(t, eng, logs[len(logs)-1].Index)
	if got := fsmDump(t, eng); len(got) != 200 {
		t.Fatalf("%d keys after the commit, want 200", len(got))
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "restore-*")); len(m) != 0 {
		t.Fatalf("left behind: %v", m)
	}
}

func TestDecodeRestoreEntry_Malformed(t *testing.T) {
	id := newRestoreID()
	good := restoreEntry{kind: restoreBegin, id: id, total: 10}.encode()
	for _, b := range [][]byte{
		{entryRestore},
		good[:restoreHeader],
		good[:len(good)-1],
		append(restoreEntry{kind: restoreCommit, id: id}.encode(), 0),
		restoreEntry{kind: restoreChunk, id: id}.encode()[:restoreHeader+3],
		append([]byte{entryRestore, 'z'}, id[:]...),
	} {
		if e, err := decodeRestoreEntry(b); err == nil {
			t.Errorf("decodeRestoreEntry(%x) = %+v, want an error", b, e)
		}
	}
	if e, err := decodeRestoreEntry(good); err != nil || e.total != 10 || e.id != id {
		t.Fatalf("good begin: %+v, %v", e, err)
	}
}
