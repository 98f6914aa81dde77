package kv

import (
	"bytes"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/storage"
)

// quotaLog is an entry of term 1 that holds cmds.
func quotaLog(index uint64, cmds ...command) *raft.Log {
	return &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: encodeEntry(0, cmds)}
}

// appliedSpace reads the space record the state machine keeps.
func appliedSpace(t *testing.T, eng storage.Engine) space {
	t.Helper()
	var sp space
	if err := eng.View(func(tx storage.ReadTx) error {
		var ok bool
		var err error
		sp, ok, err = readSpace(tx)
		if err == nil && !ok {
			t.Fatal("no space record")
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return sp
}

// scannedSize is the logical size of the user data, from a scan.
func scannedSize(t *testing.T, eng storage.Engine) uint64 {
	t.Helper()
	var n uint64
	if err := eng.View(func(tx storage.ReadTx) (err error) { n, err = dataSize(tx); return err }); err != nil {
		t.Fatal(err)
	}
	return n
}

// One entry packs the commands of several writers: the one that would
// pass the quota is refused alone, and the others (a smaller write before
// it, a delete and an overwrite after it) are applied. The size the state
// machine keeps matches a scan of the data after every entry.
func TestFSMQuota_RefusalFailsOnlyItsCommand(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := open(t)
		f := newTestFSM(t, eng)
		v := func(n int) []byte { return bytes.Repeat([]byte("v"), n) }
		f.ApplyBatch([]*raft.Log{quotaLog(1, txnC(OpSet("a", v(100)), OpSet("b", v(100))))})
		// a and b: 2 * (1 + 25 + 100) = 252 bytes.
		if sp := appliedSpace(t, eng); sp.size != 252 || sp.quota != 0 {
			t.Fatalf("space after the first entry: %+v, want size 252, no quota", sp)
		}
		// The quota, in this term (1); a command of another term is not applied.
		res := f.ApplyBatch([]*raft.Log{quotaLog(2, command{kind: cmdSetQuota, n: 400, term: 1}, command{kind: cmdSetQuota, n: 5, term: 9})})
		if r := res[0].([]cmdResult); r[0].status != resOK || r[1].status != resFailed {
			t.Fatalf("quota commands: %+v", r)
		}
		if sp := appliedSpace(t, eng); sp.quota != 400 {
			t.Fatalf("quota %d, want 400", sp.quota)
		}
		res = f.ApplyBatch([]*raft.Log{quotaLog(3,
			txnC(OpSet("c", v(50))),             // +76: 328, fits
			txnC(OpSet("d", v(100))),            // +126: 454 > 400, refused
			txnC(OpDelete("a")),                 // -126: 202
			txnC(OpSet("b", v(90))),             // shrinks: 192
			txnC(OpSet("e", v(10)), OpGet("e")), // +36: 228, fits
		)})
		r := res[0].([]cmdResult)
		want := []uint8{resOK, resNoSpace, resOK, resOK, resOK}
		for i := range want {
			if r[i].status != want[i] {
				t.Fatalf("command %d: status %d, want %d (all: %+v)", i, r[i].status, want[i], r)
			}
		}
		if r[1].rev != 400 {
			t.Errorf("a refusal carries the quota: %d, want 400", r[1].rev)
		}
		checkDump(t, eng, fsmPair{"b", string(v(90)), 1, 3}, fsmPair{"c", string(v(50)), 3, 3}, fsmPair{"e", string(v(10)), 3, 3})
		if sp, n := appliedSpace(t, eng), scannedSize(t, eng); sp.size != n || n != 228 {
			t.Fatalf("size kept %d, scanned %d, want 228", sp.size, n)
		}
		// At the limit: deletes and a transaction that shrinks the data pass.
		f.ApplyBatch([]*raft.Log{quotaLog(4, txnC(OpSet("big", v(150))))}) // +179: 407 > 400
		if n := appliedSpace(t, eng).size; n != 228 {
			t.Fatalf("size %d after a refused write, want 228", n)
		}
		res = f.ApplyBatch([]*raft.Log{quotaLog(5, txnC(OpSet("c", v(60)), OpDelete("b")))})
		if r := res[0].([]cmdResult); r[0].status != resOK {
			t.Fatalf("a transaction that shrinks the data: status %d", r[0].status)
		}
		// Lease commands and their keys count as the keys of any write.
		res = f.ApplyBatch([]*raft.Log{quotaLog(6, grantC(10000), txnC(opSetT("l", "0123456789", 10000)))})
		if r := res[0].([]cmdResult); r[0].status != resOK || r[1].status != resOK {
			t.Fatalf("grant and a key with a TTL: %+v", r)
		}
		if sp, n := appliedSpace(t, eng), scannedSize(t, eng); sp.size != n {
			t.Fatalf("size kept %d, scanned %d", sp.size, n)
		}
		// No quota: anything passes.
		f.ApplyBatch([]*raft.Log{quotaLog(7, command{kind: cmdSetQuota, n: 0, term: 1})})
		res = f.ApplyBatch([]*raft.Log{quotaLog(8, txnC(OpSet("huge", v(4000))))})
		if r := res[0].([]cmdResult); r[0].status != resOK {
			t.Fatalf("without a quota: status %d", r[0].status)
		}
		if sp, n := appliedSpace(t, eng), scannedSize(t, eng); sp.size != n {
			t.Fatalf("size kept %d, scanned %d", sp.size, n)
		}
	})
}

// A data file without a space record (a version before the quota) gets
// one from a scan, at Open (migrateSpace) or at the first apply.
func TestFSMQuota_DataWithoutRecordIsScanned(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		for _, migrate := range []bool{false, true} {
			eng := open(t)
			if err := eng.Update(5, func(tx storage.WriteTx) error {
				for _, k := range []string{"x", "yy", "zzz"} {
					if err := tx.Put([]byte(k), encodeRecord(nil, 1, 1, 1, []byte("value"))); err != nil {
						return err
					}
				}
				return tx.Put([]byte(sysMetaKey), []byte{0, 0}) // not counted
			}); err != nil {
				t.Fatal(err)
			}
			want := uint64(1+2+3) + 3*(recHeader+5)
			if migrate {
				if err := migrateSpace(eng); err != nil {
					t.Fatal(err)
				}
				if sp := appliedSpace(t, eng); sp.size != want {
					t.Fatalf("migrated size %d, want %d", sp.size, want)
				}
			}
			f := newTestFSM(t, eng)
			f.ApplyBatch([]*raft.Log{quotaLog(6, txnC(OpDelete("x")))})
			if sp := appliedSpace(t, eng); sp.size != want-(1+recHeader+5) {
				t.Fatalf("migrate %v: size %d after deleting x, want %d", migrate, sp.size, want-(1+recHeader+5))
			}
		}
	})
}
