package kv

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/logging"
	"github.com/cohortkv/kv/internal/storage"
)

// The state machine's leases, without Raft: entries are built by hand with
// the leader times they would carry.

func grantC(ttl uint64) command    { return command{kind: cmdGrant, n: ttl} }
func keepAliveC(id uint64) command { return command{kind: cmdKeepAlive, n: id} }
func revokeC(id uint64) command    { return command{kind: cmdRevoke, n: id} }
func expireC(id uint64) command    { return command{kind: cmdExpire, n: id} }
func opSetL(k, v string, lease uint64) Op {
	return Op{kind: opSet, key: k, value: []byte(v), lease: lease}
}
func opSetT(k, v string, ttl uint64) Op { return Op{kind: opSet, key: k, value: []byte(v), ttl: ttl} }
func txnC(ops ...Op) command            { return command{kind: cmdTxn, then: ops} }

// one applies an entry of one command at index and leader time now and
// returns its result.
func one(t *testing.T, f *fsm, index, now uint64, c command) cmdResult {
	t.Helper()
	res := results(t, f, entryLog(index, now, c))
	if len(res) != 1 {
		t.Fatalf("entry %d: %d results", index, len(res))
	}
	return res[0]
}

// leaseState is what the lease tables of the store's own state hold.
type leaseState struct {
	leases, expiries, keys int
}

func countLeaseState(t *testing.T, eng storage.Engine) leaseState {
	t.Helper()
	var st leaseState
	err := eng.View(func(tx storage.ReadTx) error {
		for _, p := range []struct {
			prefix string
			n      *int
		}{{sysLeasePrefix, &st.leases}, {sysExpiryPrefix, &st.expiries}, {sysLeaseKeyPrefix, &st.keys}} {
			err := tx.Scan([]byte(p.prefix), func(k, _ []byte) bool {
				if !strings.HasPrefix(string(k), p.prefix) {
					return false
				}
				*p.n++
				return true
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func checkLeaseState(t *testing.T, eng storage.Engine, want leaseState, when string) {
	t.Helper()
	if got := countLeaseState(t, eng); got != want {
		t.Errorf("%s: lease tables hold %+v, want %+v", when, got, want)
	}
}

func leaseOf(t *testing.T, eng storage.Engine, id uint64) (leaseRec, bool) {
	t.Helper()
	var l leaseRec
	var ok bool
	err := eng.View(func(tx storage.ReadTx) error {
		var err error
		l, ok, err = getLease(tx, id)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return l, ok
}

func keyExists(t *testing.T, eng storage.Engine, key string) bool {
	t.Helper()
	return entryOfKey(t, eng, key).ModRev != 0
}

// Grant, KeepAlive, Revoke and expiry as the state machine applies them:
// the deadline is the entry's leader time plus the TTL, a renewal moves
// it, and an expiry whose entry time is before the deadline (a renewal
// won the race with the leader's decision) does nothing.
func TestLeaseFSM_Lifecycle(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := open(t)
		f := newTestFSM(t, eng)
		r := one(t, f, 1, 10_000, grantC(500))
		if r.status != resOK || r.rev != 1 {
			t.Fatalf("grant: %+v, want lease 1", r)
		}
		if r := one(t, f, 2, 10_001, grantC(300)); r.status != resOK || r.rev != 2 {
			t.Fatalf("second grant: %+v, want lease 2", r)
		}
		if l, ok := leaseOf(t, eng, 1); !ok || l.ttl != 500 || l.deadline != 10_500 {
			t.Fatalf("lease 1: %+v %v, want TTL 500, deadline 10500", l, ok)
		}
		one(t, f, 3, 10_002, txnC(opSetL("a", "1", 1), opSetL("b", "2", 1), opSetL("c", "3", 2)))
		if e := entryOfKey(t, eng, "a"); e.Lease != 1 {
			t.Errorf("a: %+v, want lease 1", e)
		}
		checkLeaseState(t, eng, leaseState{leases: 2, expiries: 2, keys: 3}, "two leases, three keys")

		r = one(t, f, 4, 10_400, keepAliveC(1))
		if r.status != resOK || r.rev != 500 {
			t.Fatalf("keep-alive: %+v, want TTL 500", r)
		}
		if l, _ := leaseOf(t, eng, 1); l.deadline != 10_900 {
			t.Errorf("lease 1 after renewal: deadline %d, want 10900", l.deadline)
		}
		checkLeaseState(t, eng, leaseState{leases: 2, expiries: 2, keys: 3}, "after a renewal (the old deadline's entry replaced)")

		// The leader saw the old deadline pass; the renewal was applied first.
		if r := one(t, f, 5, 10_500, expireC(1)); r.status != resFailed {
			t.Errorf("expiry before the deadline: %+v, want refused", r)
		}
		if !keyExists(t, eng, "a") || !keyExists(t, eng, "b") {
			t.Fatal("an expiry before the deadline deleted keys")
		}
		if r := one(t, f, 6, 10_899, expireC(1)); r.status != resFailed {
			t.Errorf("expiry 1 ms before the deadline: %+v, want refused", r)
		}
		if r := one(t, f, 7, 10_900, expireC(1)); r.status != resOK {
			t.Errorf("expiry at the deadline: %+v, want OK", r)
		}
		if keyExists(t, eng, "a") || keyExists(t, eng, "b") || !keyExists(t, eng, "c") {
			t.Errorf("after lease 1 expired: a %v b %v c %v, want only c", keyExists(t, eng, "a"), keyExists(t, eng, "b"), keyExists(t, eng, "c"))
		}
		checkLeaseState(t, eng, leaseState{leases: 1, expiries: 1, keys: 1}, "lease 1 expired")

		for i, c := range []command{keepAliveC(1), revokeC(1), expireC(1), keepAliveC(99), revokeC(99)} {
			if r := one(t, f, uint64(8+i), 11_000, c); r.status != resNoLease {
				t.Errorf("command %d on a lease that is gone or never was: %+v, want not found", c.kind, r)
			}
		}
		if r := one(t, f, 20, 10_100, revokeC(2)); r.status != resOK {
			t.Fatalf("revoke: %+v", r)
		}
		if keyExists(t, eng, "c") {
			t.Error("c survived the revocation of its lease")
		}
		checkLeaseState(t, eng, leaseState{}, "every lease gone")
		// IDs are never reused.
		if r := one(t, f, 21, 12_000, grantC(1)); r.rev != 3 {
			t.Errorf("grant after two leases: ID %d, want 3", r.rev)
		}
	})
}

// A Txn whose branch to run names a lease that does not exist writes
// nothing, not even its other operations; the branch not run is not
// checked.
func TestLeaseFSM_UnknownLeaseWritesNothing(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := open(t)
		f := newTestFSM(t, eng)
		one(t, f, 1, 1000, grantC(1000))
		one(t, f, 2, 1000, set("x", "old"))
		if r := one(t, f, 3, 1000, txnC(setOp("a", "1"), OpDelete("x"), opSetL("b", "2", 7))); r.status != resNoLease {
			t.Errorf("Txn naming lease 7: %+v, want not found", r)
		}
		if keyExists(t, eng, "a") || keyExists(t, eng, "b") || !keyExists(t, eng, "x") {
			t.Error("a Txn that named an unknown lease wrote some of its operations")
		}
		c := command{kind: cmdTxn, conds: []Cond{Absent("x")}, then: []Op{opSetL("t", "1", 7)}, els: []Op{opSetL("e", "1", 1)}}
		if r := one(t, f, 4, 1000, c); r.status != resFailed || !keyExists(t, eng, "e") {
			t.Errorf("Else with a lease that exists, Then with one that does not: %+v, want Else run", r)
		}
		c.els = []Op{opSetL("e2", "1", 8)}
		if r := one(t, f, 5, 1000, c); r.status != resNoLease || keyExists(t, eng, "e2") {
			t.Errorf("Else naming lease 8: %+v, want not found and nothing written", r)
		}
		checkLeaseState(t, eng, leaseState{leases: 1, expiries: 1, keys: 1}, "end")
	})
}

// A write without the lease detaches the key; a TTL key's own lease ends
// when the key is deleted or written again, and leaves nothing behind in
// the lease tables.
func TestLeaseFSM_DetachAndOwnLeases(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := open(t)
		f := newTestFSM(t, eng)
		one(t, f, 1, 1000, grantC(100)) // lease 1, deadline 1100
		one(t, f, 2, 1000, txnC(opSetL("a", "1", 1), opSetL("b", "1", 1)))
		one(t, f, 3, 1050, set("a", "2")) // detached
		if e := entryOfKey(t, eng, "a"); e.Lease != 0 || e.Version != 2 {
			t.Errorf("a after a write without the lease: %+v, want lease 0, version 2", e)
		}
		checkLeaseState(t, eng, leaseState{leases: 1, expiries: 1, keys: 1}, "a detached")
		one(t, f, 4, 1100, expireC(1))
		if !keyExists(t, eng, "a") || keyExists(t, eng, "b") {
			t.Errorf("after the expiry: a %v b %v, want a kept, b deleted", keyExists(t, eng, "a"), keyExists(t, eng, "b"))
		}
		checkLeaseState(t, eng, leaseState{}, "lease 1 expired")

		// TTL keys, each way their own lease can end.
		idx := uint64(10)
		step := func(what string, c command, want leaseState) {
			t.Helper()
			idx++
			if r := one(t, f, idx, 2000, c); r.status != resOK {
				t.Fatalf("%s: %+v", what, r)
			}
			checkLeaseState(t, eng, want, what)
		}
		step("t written with a TTL", txnC(opSetT("t", "1", 500)), leaseState{1, 1, 1})
		own := entryOfKey(t, eng, "t").Lease
		if l, ok := leaseOf(t, eng, uint64(own)); !ok || l.flags&leaseOwnKey == 0 || l.deadline != 2500 {
			t.Fatalf("t's own lease %d: %+v %v", own, l, ok)
		}
		step("t written with a TTL again", txnC(opSetT("t", "2", 500)), leaseState{1, 1, 1})
		if e := entryOfKey(t, eng, "t"); e.Lease == own || e.Lease == 0 {
			t.Errorf("t after a second TTL write: lease %d, want a new one (not %d)", e.Lease, own)
		}
		step("t written without a TTL", set("t", "3"), leaseState{})
		if e := entryOfKey(t, eng, "t"); e.Lease != 0 {
			t.Errorf("t: %+v, want no lease", e)
		}
		step("u written with a TTL", txnC(opSetT("u", "1", 500)), leaseState{1, 1, 1})
		step("u deleted", txnC(OpDelete("u")), leaseState{})
		step("v written with a TTL", txnC(opSetT("v", "1", 500)), leaseState{1, 1, 1})
		step("a lease granted", grantC(1000), leaseState{2, 2, 1})
		var sharedID uint64
		err := eng.View(func(tx storage.ReadTx) error {
			b, _ := tx.Get([]byte(sysLeaseNextKey))
			sharedID = bigEndian(b) - 1
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		step("v written with the shared lease", txnC(opSetL("v", "2", sharedID)), leaseState{1, 1, 1})
		step("the shared lease revoked", revokeC(sharedID), leaseState{})
		if keyExists(t, eng, "v") {
			t.Error("v survived the revocation of its lease")
		}
		step("w written with a TTL", txnC(opSetT("w", "1", 500)), leaseState{1, 1, 1})
		own = entryOfKey(t, eng, "w").Lease
		step("w's own lease revoked", revokeC(uint64(own)), leaseState{})
		if keyExists(t, eng, "w") {
			t.Error("w survived the revocation of its own lease")
		}
	})
}

func bigEndian(b []byte) uint64 {
	var n uint64
	for _, c := range b {
		n = n<<8 | uint64(c)
	}
	return n
}

// Entry.Lease names a TTL key's own lease, and nothing stops a user from
// attaching another key to it with WithLease. The lease is then shared:
// writing the first key again does not end it (which would leave the
// second attached to a lease that no longer exists, never to expire, its
// entry in the lease's keys left forever); it expires with the second.
func TestLeaseFSM_OwnLeaseSharedByAnotherKey(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := open(t)
		f := newTestFSM(t, eng)
		one(t, f, 1, 1000, txnC(opSetT("a", "1", 500)))
		own := uint64(entryOfKey(t, eng, "a").Lease)
		if r := one(t, f, 2, 1000, txnC(opSetL("b", "1", own))); r.status != resOK {
			t.Fatalf("b with a's own lease: %+v", r)
		}
		one(t, f, 3, 1100, set("a", "2")) // a leaves the lease
		if l, ok := leaseOf(t, eng, own); !ok || l.deadline != 1500 {
			st := countLeaseState(t, eng)
			t.Fatalf("b is attached to lease %d, which is gone (%+v, lease tables %+v): b would never expire", own, l, st)
		}
		checkLeaseState(t, eng, leaseState{1, 1, 1}, "a left the shared lease")
		if r := one(t, f, 4, 1499, expireC(own)); r.status != resFailed {
			t.Errorf("expiry before the deadline: %+v", r)
		}
		one(t, f, 5, 1500, expireC(own))
		if keyExists(t, eng, "b") || !keyExists(t, eng, "a") {
			t.Errorf("after the expiry: a %v b %v, want a kept, b deleted", keyExists(t, eng, "a"), keyExists(t, eng, "b"))
		}
		checkLeaseState(t, eng, leaseState{}, "end")
	})
}

// A lease with more keys than expireBatch is expired over several
// entries, each deleting at most expireBatch keys; the lease stays (and
// can be expired again) until its last key is gone.
func TestLeaseFSM_ExpiryInBatches(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := open(t)
		f := newTestFSM(t, eng)
		const n = 2*expireBatch + 452
		one(t, f, 1, 1000, grantC(10))
		idx := uint64(1)
		for i := 0; i < n; i += 500 {
			var ops []Op
			for j := i; j < min(i+500, n); j++ {
				ops = append(ops, opSetL(fmt.Sprintf("k%05d", j), "v", 1))
			}
			idx++
			one(t, f, idx, 1000, txnC(ops...))
		}
		left := n
		for round := 1; left > 0; round++ {
			if round > 3 {
				t.Fatalf("%d keys left after 3 expiries", left)
			}
			idx++
			if r := one(t, f, idx, 2000, expireC(1)); r.status != resOK {
				t.Fatalf("expiry %d: %+v", round, r)
			}
			st := countLeaseState(t, eng)
			if deleted := left - st.keys; deleted != min(left, expireBatch) {
				t.Errorf("expiry %d deleted %d keys of %d, want %d", round, deleted, left, min(left, expireBatch))
			}
			left = st.keys
			if _, ok := leaseOf(t, eng, 1); ok != (left > 0) {
				t.Errorf("expiry %d: %d keys left, lease exists: %v", round, left, ok)
			}
		}
		if got := len(fsmDump(t, eng)); got != 0 {
			t.Errorf("%d keys left", got)
		}
		checkLeaseState(t, eng, leaseState{}, "end")
	})
}

// rawDump is every key and value of eng, the store's own state included.
func rawDump(t *testing.T, eng storage.Engine) string {
	t.Helper()
	var b strings.Builder
	err := eng.View(func(tx storage.ReadTx) error {
		return tx.Scan(nil, func(k, v []byte) bool {
			fmt.Fprintf(&b, "%x=%x\n", k, v)
			return true
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// leaseScript is a run of entries that exercises every lease command and
// operation, with sessions, at fixed leader times.
func leaseScript() []*raft.Log {
	s := newSessionID(1, 7)
	in := func(c command, seq uint64) command { return inSession(c, s, seq, 1) }
	return []*raft.Log{
		entryLog(1, 1000, command{kind: cmdRegister, nonce: 7}),
		entryLog(2, 1000, in(grantC(300), 1), grantC(5000)),
		entryLog(3, 1010, in(txnC(opSetL("a", "1", 1), opSetL("b", "1", 1), opSetL("c", "1", 2)), 2), txnC(opSetT("t1", "x", 200))),
		entryLog(4, 1100, txnC(opSetT("t2", "y", 50)), set("b", "detached")),
		entryLog(5, 1150, expireC(3)), // t1's lease, before its deadline
		entryLog(6, 1200, expireC(4), in(keepAliveC(1), 3)),
		entryLog(7, 1250, in(keepAliveC(1), 3)), // a retry: answered from the table
		entryLog(8, 1300, expireC(1)),           // renewed to 1500: refused
		entryLog(9, 1500, expireC(1), expireC(3)),
		entryLog(10, 1600, txnC(opSetT("c", "2", 100)), txnC(OpDelete("zz"))),
		entryLog(11, 1700, in(revokeC(2), 4), txnC(opSetL("q", "1", 2))),
		entryLog(12, 1800, in(revokeC(2), 4)), // a retry of the revocation
		entryLog(13, 1650, expireC(5)),        // c's lease, before its deadline
	}
}

// Apply is clock-free: the same entries give the same data, lease tables
// and results on every member, whatever the wall clock says when they are
// applied and however Raft batches them, on either engine.
func TestLeaseFSM_Deterministic(t *testing.T) {
	logs := leaseScript()
	type run struct {
		name string
		eng  storage.Engine
		res  string
	}
	var runs []run
	for _, e := range fsmTestEngines {
		// All at once.
		eng := e.open(t)
		f := newTestFSM(t, eng)
		resp := f.ApplyBatch(logs)
		runs = append(runs, run{e.name + ", one batch", eng, fmt.Sprint(resp)})
		// One entry at a time, the wall clock moving on between them.
		eng = e.open(t)
		f = newTestFSM(t, eng)
		resp = nil
		for _, l := range logs {
			time.Sleep(3 * time.Millisecond)
			resp = append(resp, f.ApplyBatch([]*raft.Log{l})...)
		}
		runs = append(runs, run{e.name + ", one at a time", eng, fmt.Sprint(resp)})
	}
	want := rawDump(t, runs[0].eng)
	for _, r := range runs[1:] {
		if got := rawDump(t, r.eng); got != want {
			t.Errorf("%s: data differs from %s:\n%s\nwant\n%s", r.name, runs[0].name, got, want)
		}
		if r.res != runs[0].res {
			t.Errorf("%s: results %s, want %s", r.name, r.res, runs[0].res)
		}
	}
	// What the script leaves: a and the detached b; t1's lease expired at
	// 1500 (its deadline 1210), c rewritten with a TTL; the revocation
	// retried was answered from the table, not with not found.
	eng := runs[0].eng
	for k, want := range map[string]bool{"a": false, "b": true, "c": true, "t1": false, "t2": false, "q": false} {
		if got := keyExists(t, eng, k); got != want {
			t.Errorf("%s exists: %v, want %v", k, got, want)
		}
	}
	t.Logf("results: %s", runs[0].res)
}

// The format of an entry with lease commands or operations is 3, which a
// version without leases does not read: it halts on the entry (as this
// version halts on format 4) instead of skipping what the others apply.
// An entry without them stays in format 2, which that version reads.
func TestLeaseFormat_OlderMembersRefuse(t *testing.T) {
	// knownFormat as the version before leases had it.
	knownFormat2 := func(b []byte) bool {
		return len(b) == 0 || b[0] == cmdVersion || b[0] == cmdVersion1 || b[0] == entryRestore
	}
	leased := [][]command{
		{grantC(10)}, {keepAliveC(1)}, {revokeC(1)}, {expireC(1)},
		{txnC(opSetL("k", "v", 1))}, {txnC(opSetT("k", "v", 1))},
		{{kind: cmdTxn, conds: []Cond{Exists("x")}, els: []Op{opSetL("k", "v", 1)}}},
		{set("plain", "v"), txnC(opSetT("k", "v", 1))},
	}
	for i, g := range leased {
		b := encodeEntry(5, g)
		if b[0] != cmdVersion3 {
			t.Errorf("entry %d with leases: format %d, want %d", i, b[0], cmdVersion3)
		}
		if knownFormat2(b) {
			t.Errorf("entry %d: a member without leases would read it", i)
		}
		// Were it labelled format 2, a reader refuses its lease parts.
		if d, err := decodeEntry(append([]byte{cmdVersion}, b[1:]...)); !errors.Is(err, errMalformed) {
			t.Errorf("entry %d labelled format 2: decoded %+v, %v; want malformed", i, d, err)
		}
		d, err := decodeEntry(b)
		if err != nil || len(d.cmds) != len(g) {
			t.Fatalf("entry %d: %+v, %v", i, d, err)
		}
		for j := range g {
			if diff := sameCommand(&d.cmds[j], &g[j]); diff != "" {
				t.Errorf("entry %d, command %d: %s", i, j, diff)
			}
		}
	}
	plain := encodeEntry(5, []command{set("k", "v"), {kind: cmdRegister, nonce: 1}, cas("k", "w", 3)})
	if plain[0] != cmdVersion || !knownFormat2(plain) {
		t.Errorf("entry without leases in format %d, want %d", plain[0], cmdVersion)
	}
	// The member halts before the entry; nothing of the batch is applied.
	eng := storage.NewMemory()
	t.Cleanup(func() { eng.Close() })
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	var halted error
	f := newFSM(eng, logging.Discard(), stop, func(err error) { halted = err }, WatchHistory{})
	next := encodeEntry(5, []command{grantC(10)})
	next[0] = cmdVersion4 + 1
	f.ApplyBatch([]*raft.Log{entryLog(1, 5, set("a", "1")), {Index: 2, Term: 1, Type: raft.LogCommand, Data: next}})
	if !errors.Is(halted, ErrNewerFormat) {
		t.Errorf("halt error %v, want ErrNewerFormat", halted)
	}
	checkApplied(t, eng, 0)
}

// leaseScale reads KV_LEASE_SCALE, "leases,keys" (default 2000,20000; a
// soak: 100000,1000000).
func leaseScale(t *testing.T) (leases, keys int) {
	leases, keys = 2000, 20000
	if v := os.Getenv("KV_LEASE_SCALE"); v != "" {
		l, k, ok := strings.Cut(v, ",")
		var err1, err2 error
		leases, err1 = strconv.Atoi(l)
		keys, err2 = strconv.Atoi(k)
		if !ok || err1 != nil || err2 != nil || leases < 1 || keys < leases {
			t.Fatalf("KV_LEASE_SCALE=%q: want leases,keys", v)
		}
	}
	return leases, keys
}

func rssKiB() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return -1
}

// Many leases with many keys, on the data file: writing them, renewing
// them all, and expiring them all take work in proportion (the expiry of
// a lease touches its own keys only, in bounded entries), the memory
// stays bounded, and nothing is left behind.
func TestLeaseFSM_ManyLeases(t *testing.T) {
	if testing.Short() {
		t.Skip("many leases: not in -short")
	}
	nLeases, nKeys := leaseScale(t)
	eng, err := storage.OpenBolt(t.TempDir()+"/data.db", storage.BoltOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	// The change log bounded as a Store bounds it by default.
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	f := newFSM(eng, logging.Discard(), stop, func(error) {}, WatchHistory{Revisions: DefaultWatchHistoryRevisions, Bytes: DefaultWatchHistoryBytes})
	idx := uint64(0)
	apply := func(now uint64, cmds ...command) []cmdResult {
		idx++
		return results(t, f, entryLog(idx, now, cmds...))
	}
	const perEntry = 1000
	rss0 := rssKiB()
	start := time.Now()
	for i := 0; i < nLeases; i += perEntry {
		var cmds []command
		for range min(perEntry, nLeases-i) {
			cmds = append(cmds, grantC(1000))
		}
		apply(1000, cmds...)
	}
	tGrant := time.Since(start)
	start = time.Now()
	for i := 0; i < nKeys; i += perEntry {
		var ops []Op
		for j := i; j < min(i+perEntry, nKeys); j++ {
			ops = append(ops, opSetL(fmt.Sprintf("k/%08d", j), "value-of-some-length", uint64(j%nLeases+1)))
		}
		apply(1000, txnC(ops...))
	}
	tSet := time.Since(start)
	start = time.Now()
	for i := 0; i < nLeases; i += perEntry {
		var cmds []command
		for j := i; j < min(i+perEntry, nLeases); j++ {
			cmds = append(cmds, keepAliveC(uint64(j+1)))
		}
		apply(1500, cmds...)
	}
	tRenew := time.Since(start)
	rssMid := rssKiB()
	start = time.Now()
	entries, maxEntry := 0, time.Duration(0)
	for i := 0; i < nLeases; i += 256 { // as expireLoop proposes them
		var cmds []command
		for j := i; j < min(i+256, nLeases); j++ {
			cmds = append(cmds, expireC(uint64(j+1)))
		}
		for left := true; left; {
			t0 := time.Now()
			apply(2500, cmds...)
			maxEntry = max(maxEntry, time.Since(t0))
			entries++
			left = false
			for j := range cmds {
				if _, ok := leaseOf(t, eng, cmds[j].n); ok {
					left = true // keys beyond expireBatch: expired again
					break
				}
			}
		}
	}
	tExpire := time.Since(start)
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	t.Logf("%d leases, %d keys: grant %v, write %v (%.1f µs/key), renew all %v, expire all %v in %d entries (slowest %v); RSS %d MiB before, %d MiB after writing, %d MiB at the end; heap in use after a GC %d MiB",
		nLeases, nKeys, tGrant, tSet, float64(tSet.Microseconds())/float64(nKeys), tRenew, tExpire, entries, maxEntry,
		rss0>>10, rssMid>>10, rssKiB()>>10, ms.HeapInuse>>20)
	if got := len(fsmDump(t, eng)); got != 0 {
		t.Errorf("%d keys left after every lease expired", got)
	}
	checkLeaseState(t, eng, leaseState{}, "every lease expired")
}

// A leader waits an ElectionTimeout before it expires anything when it is
// new, and again when its expiry loop stalled (a paused process): the
// renewals the stall held up land first.
func TestExpirySince_NewLeaderAndStall(t *testing.T) {
	t0 := time.Unix(1000, 0)
	if got := expirySince(time.Time{}, time.Time{}, t0, true); !got.Equal(t0) {
		t.Errorf("new leader: %v, want %v", got, t0)
	}
	steady := t0.Add(time.Second)
	if got := expirySince(t0, steady.Add(-expiryTick), steady, false); !got.Equal(t0) {
		t.Errorf("steady ticks: the wait restarted at %v", got)
	}
	resumed := steady.Add(3 * time.Second)
	if got := expirySince(t0, steady, resumed, false); !got.Equal(resumed) {
		t.Errorf("after a stall of 3 s: %v, want the wait to start again at %v", got, resumed)
	}
}

// An expiry carries the term of the leader that decided it: carried into
// another term's log (retried across a leader change), it expires nothing;
// the new leader decides again, after its own wait.
func TestLeaseFSM_ExpiryOfAnotherTermRefused(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		f := newTestFSM(t, open(t))
		now := uint64(1_000_000)
		f.ApplyBatch([]*raft.Log{opsLog(1, now, OpSet("k", []byte("v"), TTL(time.Second)))})
		k, _ := fsmEntry(t, f.eng, "k")
		expire := func(index, entryTerm, decidedIn uint64) uint8 {
			l := &raft.Log{Index: index, Term: entryTerm, Type: raft.LogCommand,
				Data: encodeEntry(now+5000, []command{{kind: cmdExpire, n: uint64(k.Lease), term: decidedIn}})}
			return results(t, f, l)[0].status
		}
		if st := expire(2, 3, 2); st != resFailed {
			t.Fatalf("an expiry decided in term 2, in an entry of term 3: status %d, want refused", st)
		}
		if _, ok := fsmEntry(t, f.eng, "k"); !ok {
			t.Fatal("the refused expiry deleted the key")
		}
		if st := expire(3, 3, 3); st != resOK {
			t.Fatalf("an expiry of its own term: status %d, want applied", st)
		}
		if _, ok := fsmEntry(t, f.eng, "k"); ok {
			t.Fatal("the key survived its expiry")
		}
	})
}
