package kv

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/storage"
)

// leaseLog is the entry at index of one lease command, at leader time now.
func leaseLog(index, now uint64, kind uint8, n uint64) *raft.Log {
	return &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: encodeEntry(now, []command{{kind: kind, n: n}})}
}

// opsLog is the entry at index of one Txn of ops, at leader time now.
func opsLog(index, now uint64, ops ...Op) *raft.Log {
	return &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: encodeEntry(now, []command{{kind: cmdTxn, then: ops}})}
}

func fsmEntry(t *testing.T, eng storage.Engine, key string) (Entry, bool) {
	t.Helper()
	var e Entry
	if err := eng.View(func(tx storage.ReadTx) error {
		var err error
		e, err = getEntry(tx, key)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return e, e.ModRev != 0
}

// sysKeys returns the keys of the store's own state under prefix.
func sysKeys(t *testing.T, eng storage.Engine, prefix string) []string {
	t.Helper()
	var keys []string
	if err := eng.View(func(tx storage.ReadTx) error {
		return tx.Scan([]byte(prefix), func(k, _ []byte) bool {
			if string(k[:min(len(k), len(prefix))]) != prefix {
				return false
			}
			keys = append(keys, string(k))
			return true
		})
	}); err != nil {
		t.Fatal(err)
	}
	return keys
}

// A key attached, WithLease, to the lease another key's TTL made is
// deleted when that lease expires, even after the TTL key was written again
// without it: the lease is the attached key's too, and a lease is not
// ended while a key is attached to it.
func TestLease_KeyOnAnotherKeysTTLLeaseExpires(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		f := newTestFSM(t, open(t))
		now := uint64(1_000_000)
		f.ApplyBatch([]*raft.Log{opsLog(1, now, OpSet("a", []byte("1"), TTL(time.Second)))})
		a, _ := fsmEntry(t, f.eng, "a")
		if a.Lease == 0 {
			t.Fatal("the TTL key has no lease")
		}
		// Another key joins that lease, as a user who read a's Entry.Lease can.
		r := results(t, f, opsLog(2, now, OpSet("b", []byte("2"), WithLease(a.Lease))))
		if r[0].status != resOK {
			t.Fatalf("attaching b to a's lease: status %d", r[0].status)
		}
		// a is written again without a TTL: a leaves the lease.
		f.ApplyBatch([]*raft.Log{opsLog(3, now, setOp("a", "3"))})
		// The lease's deadline passes; the leader proposes its expiry.
		f.ApplyBatch([]*raft.Log{leaseLog(4, now+2000, cmdExpire, uint64(a.Lease))})
		if e, ok := fsmEntry(t, f.eng, "b"); ok {
			t.Errorf("b, attached to lease %d, survived its deadline: %+v", a.Lease, e)
		}
		if _, ok := fsmEntry(t, f.eng, "a"); !ok {
			t.Error("a, written again without a lease, was deleted")
		}
		for _, p := range []string{sysLeasePrefix, sysExpiryPrefix, sysLeaseKeyPrefix} {
			if k := sysKeys(t, f.eng, p); len(k) != 0 {
				t.Errorf("lease state left behind: %q", k)
			}
		}
	})
}

// A lease whose expiry has begun (it has more keys than one expiry entry
// deletes) is gone for KeepAlive and WithLease: a renewal between the
// entries of its expiry does not keep the keys not deleted yet, nor tell
// its holder that the lease lives while some of its keys are gone.
func TestLease_ExpiryInSeveralEntriesIsNotUndoneByKeepAlive(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		f := newTestFSM(t, open(t))
		now := uint64(1_000_000)
		id := results(t, f, leaseLog(1, now, cmdGrant, 1000))[0].rev
		var ops []Op
		for i := 0; i < expireBatch+10; i++ {
			ops = append(ops, OpSet(fmt.Sprintf("k%05d", i), []byte("v"), WithLease(LeaseID(id))))
		}
		if r := results(t, f, opsLog(2, now, ops...)); r[0].status != resOK {
			t.Fatalf("attach: status %d", r[0].status)
		}
		// The deadline passes; the first expiry entry deletes expireBatch keys.
		results(t, f, leaseLog(3, now+1500, cmdExpire, id))
		if n := len(fsmDump(t, f.eng)); n != 10 {
			t.Fatalf("%d keys after the first expiry entry, want 10", n)
		}
		// The holder's late renewal, before the next expiry entry.
		if r := results(t, f, leaseLog(4, now+1501, cmdKeepAlive, id)); r[0].status != resNoLease {
			t.Errorf("KeepAlive of a lease whose keys are being deleted: status %d, want resNoLease", r[0].status)
		}
		if r := results(t, f, opsLog(5, now+1502, OpSet("late", []byte("v"), WithLease(LeaseID(id))))); r[0].status != resNoLease {
			t.Errorf("a write WithLease of a lease whose keys are being deleted: status %d, want resNoLease", r[0].status)
		}
		// The leader proposes the expiry again, at its next tick.
		results(t, f, leaseLog(6, now+1600, cmdExpire, id))
		if got := fsmDump(t, f.eng); len(got) != 0 {
			t.Errorf("keys of the expired lease left: %v", got)
		}
		for _, p := range []string{sysLeasePrefix, sysExpiryPrefix, sysLeaseKeyPrefix} {
			if k := sysKeys(t, f.eng, p); len(k) != 0 {
				t.Errorf("lease state left behind: %q", k)
			}
		}
	})
}

// The Gets of a Txn that wrote carry the Lease of the keys they read,
// alike in the reply to a forwarded batch and when a retried Txn is
// answered from its session's record.
func TestLease_TxnGetsCarryLease(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		f := newTestFSM(t, open(t))
		now := uint64(1_000_000)
		id := results(t, f, leaseLog(1, now, cmdGrant, 60_000))[0].rev
		results(t, f, opsLog(2, now, OpSet("leased", []byte("v"), WithLease(LeaseID(id)))))
		sess := register(t, f, 3, now)
		txn := inSession(command{kind: cmdTxn, then: []Op{OpSet("other", []byte("x")), OpGet("leased")}}, sess, 1, 1)
		first := results(t, f, entryLog(4, now, txn))
		if len(first[0].gets) != 1 || first[0].gets[0].Lease != LeaseID(id) {
			t.Fatalf("the Get as applied: %+v, want lease %d", first[0].gets, id)
		}
		// The reply to a forwarded batch.
		fwd, err := decodeResults(appendResults(nil, first))
		if err != nil {
			t.Fatal(err)
		}
		if g := fwd[0].gets[0]; g.Lease != LeaseID(id) {
			t.Errorf("the Get in a forwarded reply: %+v, want lease %d", g, id)
		}
		// The retry, answered from the session's record.
		again := results(t, f, entryLog(5, now, txn))
		if len(again[0].gets) != 1 || again[0].gets[0].Lease != LeaseID(id) {
			t.Errorf("the Get of the retried Txn: %+v, want lease %d", again[0].gets, id)
		}
	})
}

// A Grant retried under its sequence (its reply was lost) is answered with
// the first lease, and makes no second one; a retried Revoke is answered
// with its first answer, not ErrLeaseNotFound.
func TestLease_RetriedGrantAndRevokeAreAppliedOnce(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		f := newTestFSM(t, open(t))
		now := uint64(1_000_000)
		sess := register(t, f, 1, now)
		grant := inSession(command{kind: cmdGrant, n: 5000}, sess, 1, 1)
		first := results(t, f, entryLog(2, now, grant))[0]
		again := results(t, f, entryLog(3, now+10, grant))[0]
		if first.status != resOK || again.status != first.status || again.rev != first.rev {
			t.Fatalf("grant %+v, its retry %+v", first, again)
		}
		if k := sysKeys(t, f.eng, sysLeasePrefix); len(k) != 1 {
			t.Fatalf("leases after a retried grant: %q", k)
		}
		revoke := inSession(command{kind: cmdRevoke, n: first.rev}, sess, 2, 1)
		if r := results(t, f, entryLog(4, now, revoke))[0]; r.status != resOK {
			t.Fatalf("revoke: %+v", r)
		}
		if r := results(t, f, entryLog(5, now, revoke))[0]; r.status != resOK {
			t.Fatalf("retried revoke: %+v", r)
		}
	})
}
