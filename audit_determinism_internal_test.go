package kv

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/storage"
)

// rawDumpApplied returns every key and value of eng, the store's own state
// included, and its applied index.
func rawDumpApplied(t *testing.T, eng storage.Engine) string {
	t.Helper()
	var b bytes.Buffer
	if err := eng.ViewApplied(func(tx storage.ReadTx, index uint64) error {
		fmt.Fprintf(&b, "applied %d\n", index)
		return tx.Scan(nil, func(k, v []byte) bool {
			fmt.Fprintf(&b, "%q=%x\n", k, v)
			return true
		})
	}); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// Two members that apply the same log in different batches hold the same
// data, the change log's state included; a Watch from revision 1 of a new
// store is answered alike on both.
func TestFSM_SameLogSameDataWhateverTheBatches(t *testing.T) {
	termMarker := func(i uint64) *raft.Log {
		return &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: encodeEntry(0)}
	}
	log := []*raft.Log{configLog(1), termMarker(2), cmdLog(t, 3, setOp("a", "1")), cmdLog(t, 4, setOp("b", "2"))}
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		one := newTestFSM(t, open(t))
		one.ApplyBatch(log)
		each := newTestFSM(t, open(t))
		for _, l := range log {
			each.ApplyBatch([]*raft.Log{l})
		}
		if a, b := rawDumpApplied(t, one.eng), rawDumpApplied(t, each.eng); a != b {
			t.Errorf("one batch:\n%s\none entry per batch:\n%s", a, b)
		}
		for name, f := range map[string]*fsm{"one batch": one, "one entry per batch": each} {
			buf, _, err := f.hist.read(f.eng, nil, 1, 100)
			if err != nil || len(buf) != 2 {
				t.Errorf("%s: a watch from revision 1: %d revisions, %v; want the 2 writes", name, len(buf), err)
			}
		}
	})
}
