package kv

import (
	"bytes"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/logging"
	"github.com/cohortkv/kv/internal/storage"
)

// crashingEngine refuses every Update once armed, as if the process had
// died before the Update: the engine keeps what it committed before.
type crashingEngine struct {
	storage.Engine
	armed atomic.Bool
}

func (e *crashingEngine) Update(index uint64, fn func(tx storage.WriteTx) error) error {
	if e.armed.Load() {
		return storage.ErrClosed
	}
	return e.Engine.Update(index, fn)
}

// A member that dies between installing a restore and starting its change
// log anew serves, after its restart, no change of the store the backup
// was taken from as a change of its own: a Watch from before the restore
// ends with ErrCompacted, and the changes after it are this store's.
func TestRestore_CrashAfterInstallServesNoForeignChanges(t *testing.T) {
	// The backup: a store whose change log holds revisions 10 to 14.
	src := newTestFSM(t, storage.NewMemory())
	for i := uint64(10); i < 15; i++ {
		src.ApplyBatch([]*raft.Log{cmdLog(t, i, setOp("src", "foreign"))})
	}
	snap, err := src.eng.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var stream bytes.Buffer
	if err := writeBackup(&stream, snap); err != nil {
		t.Fatal(err)
	}
	snap.Release()

	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := open(t)
		ce := &crashingEngine{Engine: eng}
		f := restoreTestFSM(t, ce)
		f.rs = newRestorer(t.TempDir(), eng, logging.Discard())
		t.Cleanup(f.rs.close)
		f.ApplyBatch([]*raft.Log{cmdLog(t, 20, setOp("own", "1"))})
		logs := restoreLogs(newRestoreID(), stream.Bytes(), 1000, 21)
		commit := logs[len(logs)-1]
		f.ApplyBatch(logs[:len(logs)-1])
		ce.armed.Store(true) // dies after the install
		f.ApplyBatch([]*raft.Log{commit})
		checkApplied(t, eng, commit.Index)

		// Restart: a new state machine on the data file.
		f = newTestFSM(t, eng)
		after := cmdLog(t, commit.Index+1, setOp("after", "1"))
		f.ApplyBatch([]*raft.Log{after})
		buf, _, err := f.hist.read(eng, nil, 1, 1000)
		var ce2 *CompactedError
		if !errors.As(err, &ce2) {
			var revs []uint64
			for _, r := range buf {
				revs = append(revs, r.rev)
			}
			t.Fatalf("a watch from revision 1 after the restore at %d: revisions %v, error %v; want ErrCompacted", commit.Index, revs, err)
		}
		if ce2.Oldest != commit.Index+1 {
			t.Errorf("the change log starts at %d, want %d, after the restore", ce2.Oldest, commit.Index+1)
		}
		buf, _, err = f.hist.read(eng, nil, commit.Index+1, 1000)
		if err != nil || len(buf) != 1 || buf[0].rev != after.Index {
			t.Fatalf("a watch from the restore on: %v, %v; want the write at %d", buf, err, after.Index)
		}
	})
}
