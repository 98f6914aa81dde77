package kv

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/storage"
)

// The state machine's transactions, per-command results and session
// table, without Raft.

func entryLog(index, time uint64, cmds ...command) *raft.Log {
	return &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: encodeEntry(time, cmds)}
}

// results applies logs and returns the results of the last one.
func results(t *testing.T, f *fsm, logs ...*raft.Log) []cmdResult {
	t.Helper()
	resp := f.ApplyBatch(logs)
	res, ok := resp[len(resp)-1].([]cmdResult)
	if !ok {
		t.Fatalf("response %v, want results", resp[len(resp)-1])
	}
	return res
}

func set(key, value string) command {
	return command{kind: cmdTxn, then: []Op{OpSet(key, []byte(value))}}
}

func cas(key, value string, rev uint64) command {
	return command{kind: cmdTxn, conds: []Cond{ModRevIs(key, rev)}, then: []Op{OpSet(key, []byte(value))}, els: []Op{OpGet(key)}}
}

// inSession puts c in session id with seq and floor.
func inSession(c command, id sessionID, seq, floor uint64) command {
	c.sess, c.seq, c.floor = id, seq, floor
	return c
}

// register applies a registration at index and leader time now and
// returns the session.
func register(t *testing.T, f *fsm, index, now uint64) sessionID {
	t.Helper()
	res := results(t, f, entryLog(index, now, command{kind: cmdRegister, nonce: index * 7}))
	if len(res) != 1 || res[0].status != resOK || res[0].rev != index {
		t.Fatalf("register at %d: %+v", index, res)
	}
	return newSessionID(index, index*7)
}

func entryOfKey(t *testing.T, eng storage.Engine, key string) Entry {
	t.Helper()
	var e Entry
	err := eng.View(func(tx storage.ReadTx) error {
		var err error
		e, err = getEntry(tx, key)
		e.Value = bytes.Clone(e.Value)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// One entry, many writers: each command gets its own result, and a
// failing condition fails only its own command.
func TestFSMApply_PerCommandResults(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := open(t)
		f := newTestFSM(t, eng)
		results(t, f, entryLog(1, 0, set("b", "old")))
		res := results(t, f, entryLog(2, 0,
			set("a", "1"),
			cas("b", "new", 99), // conflict: b is at 1
			set("c", "3"),
			cas("b", "new", 1),   // holds
			cas("fresh", "x", 0), // create only: holds
			cas("fresh", "y", 0), // create only: conflict now
			command{kind: cmdTxn, conds: []Cond{Exists("a"), VersionIs("b", 2), ValueIs("c", []byte("3"))}, then: []Op{OpGet("a"), OpDelete("c"), OpGet("c"), OpSet("d", nil), OpGet("d")}},
			command{kind: cmdTxn, conds: []Cond{Absent("a")}, then: []Op{OpSet("never", []byte("x"))}, els: []Op{OpGet("zz")}},
		))
		want := []struct {
			status uint8
			gets   string
		}{
			{resOK, "[]"},
			{resFailed, `[{b [111 108 100] 1 1 1 0}]`},
			{resOK, "[]"},
			{resOK, "[]"},
			{resOK, "[]"},
			{resFailed, `[{fresh [120] 2 2 1 0}]`},
			{resOK, `[{a [49] 2 2 1 0} {c [] 0 0 0 0} {d [] 2 2 1 0}]`},
			{resFailed, `[{zz [] 0 0 0 0}]`},
		}
		if len(res) != len(want) {
			t.Fatalf("%d results for %d commands", len(res), len(want))
		}
		for i, w := range want {
			if res[i].status != w.status || res[i].rev != 2 || fmt.Sprint(res[i].gets) != w.gets && !(w.gets == "[]" && res[i].gets == nil) {
				t.Errorf("command %d: %+v, want status %d at 2 with gets %s", i, res[i], w.status, w.gets)
			}
		}
		checkDump(t, eng, fsmPair{"a", "1", 2, 2}, fsmPair{"b", "new", 1, 2}, fsmPair{"d", "", 2, 2}, fsmPair{"fresh", "x", 2, 2})
		if e := entryOfKey(t, eng, "b"); e.Version != 2 {
			t.Errorf("b: %+v, want version 2", e)
		}
	})
}

// A repeated command of a session is answered with its first result and
// applied once; with the table off it applies twice.
func TestFSMSessions_AppliedOnce(t *testing.T) {
	for _, off := range []bool{false, true} {
		t.Run(fmt.Sprintf("sessions off %v", off), func(t *testing.T) {
			forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
				eng := open(t)
				f := newTestFSM(t, eng)
				id := register(t, f, 1, 1000)
				if off {
					sessionsOff.Store(true)
					defer sessionsOff.Store(false)
				}
				first := results(t, f, entryLog(2, 1001, inSession(set("k", "v"), id, 1, 1), inSession(cas("c", "x", 0), id, 2, 1)))
				// The same commands again (a retry after a lost reply), in
				// another entry, alone and among others.
				again := results(t, f, entryLog(4, 1002, set("other", "o"), inSession(cas("c", "x", 0), id, 2, 1), inSession(set("k", "v"), id, 1, 1)))
				e := entryOfKey(t, eng, "k")
				if off {
					if e.Version != 2 || again[1].status != resFailed {
						t.Fatalf("without the table: k %+v, the repeated CAS %+v; want applied twice", e, again[1])
					}
					return
				}
				if e.Version != 1 || e.ModRev != 2 {
					t.Fatalf("k = %+v, want version 1 at 2: applied once", e)
				}
				if first[0].status != resOK || first[0].rev != 2 || first[1].status != resOK || first[1].rev != 2 {
					t.Fatalf("first results %+v", first)
				}
				if again[0].rev != 4 || fmt.Sprint(again[1]) != fmt.Sprint(first[1]) || again[2].status != resOK || again[2].rev != 2 {
					t.Fatalf("repeated: %+v, want the first results (%+v)", again, first)
				}
			})
		})
	}
}

// The floor trims recorded results; a sequence below it is not applied.
func TestFSMSessions_FloorAndStale(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := open(t)
		f := newTestFSM(t, eng)
		id := register(t, f, 1, 1000)
		for seq := uint64(1); seq <= 5; seq++ {
			results(t, f, entryLog(1+seq, 1000, inSession(set(fmt.Sprint("k", seq), "v"), id, seq, 1)))
		}
		held := func() []uint64 {
			var seqs []uint64
			err := eng.View(func(tx storage.ReadTx) error {
				b, ok := tx.Get(sessKey(id))
				if !ok {
					return fmt.Errorf("session gone")
				}
				s, err := decodeSession(id, b)
				for i := range s.n() {
					seqs = append(seqs, s.at(i).seq)
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			return seqs
		}
		if got := fmt.Sprint(held()); got != "[1 2 3 4 5]" {
			t.Fatalf("results held for %s", got)
		}
		// Sequences 1 to 3 answered: a command says so.
		res := results(t, f, entryLog(7, 1001, inSession(set("k6", "v"), id, 6, 4)))
		if res[0].status != resOK {
			t.Fatal(res)
		}
		if got := fmt.Sprint(held()); got != "[4 5 6]" {
			t.Fatalf("after the floor rose to 4: results held for %s", got)
		}
		// A late copy of sequence 2 is not applied.
		res = results(t, f, entryLog(8, 1002, inSession(set("k2", "late"), id, 2, 1)))
		if res[0].status != resStale {
			t.Fatalf("a sequence below the floor: %+v, want resStale", res[0])
		}
		if e := entryOfKey(t, eng, "k2"); string(e.Value) != "v" || e.Version != 1 {
			t.Fatalf("k2 = %+v: the stale command was applied", e)
		}
		// A command of a session the table does not hold is not applied.
		res = results(t, f, entryLog(9, 1003, inSession(set("nope", "x"), newSessionID(77, 1), 1, 1)))
		if res[0].status != resNoSession {
			t.Fatalf("an unknown session: %+v, want resNoSession", res[0])
		}
		if e := entryOfKey(t, eng, "nope"); e.ModRev != 0 {
			t.Fatalf("nope = %+v: written for an unknown session", e)
		}
	})
}

// Sessions expire by leader time, checked by a sweep; the least recently
// used one goes when a registration finds the table full. Nothing reads a
// clock.
func TestFSMSessions_ExpiryAndCap(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		oldTTL, oldMax := sessionTTL.Load(), maxSessions.Load()
		defer func() { sessionTTL.Store(oldTTL); maxSessions.Store(oldMax) }()
		sessionTTL.Store(1000)
		maxSessions.Store(2)
		eng := open(t)
		f := newTestFSM(t, eng)
		a := register(t, f, 1, 10_000)
		b := register(t, f, 2, 10_100)
		// a is used later than b: b is the least recently used.
		results(t, f, entryLog(3, 10_200, inSession(set("x", "1"), a, 1, 1)))
		c := register(t, f, 4, 10_300)
		status := func(index, now uint64, id sessionID, seq uint64) uint8 {
			return results(t, f, entryLog(index, now, inSession(set(fmt.Sprint("y", index), "1"), id, seq, 1)))[0].status
		}
		if st := status(5, 10_300, b, 1); st != resNoSession {
			t.Fatalf("the least recently used session, after a registration found the table full: %d, want resNoSession", st)
		}
		if st := status(6, 10_300, a, 2); st != resOK {
			t.Fatalf("session a: %d", st)
		}
		// Leader time passes beyond a's TTL (c is used meanwhile).
		if st := status(7, 11_000, c, 1); st != resOK {
			t.Fatalf("session c: %d", st)
		}
		if st := status(8, 11_400, c, 2); st != resOK {
			t.Fatalf("session c: %d", st)
		}
		if st := status(9, 11_400, a, 3); st != resNoSession {
			t.Fatalf("session a, unused for more than its TTL: %d, want resNoSession", st)
		}
		// Time that goes back (a new leader's slower clock) expires nothing.
		if st := status(10, 5_000, c, 3); st != resOK {
			t.Fatalf("session c at an earlier leader time: %d", st)
		}
		var count uint64
		eng.View(func(tx storage.ReadTx) error {
			b, _ := tx.Get([]byte(sysMetaKey))
			r := reader{b: b}
			count, _ = r.uvarint()
			return nil
		})
		if count != 1 {
			t.Errorf("the table counts %d sessions, want 1", count)
		}
	})
}

// A transaction's Gets are recorded with its result and returned again
// for a repeated command, until the floor passes it.
func TestFSMSessions_RecordedGets(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := open(t)
		f := newTestFSM(t, eng)
		id := register(t, f, 1, 1)
		results(t, f, entryLog(2, 1, set("a", "1")))
		txn := inSession(command{kind: cmdTxn, conds: []Cond{ModRevIs("a", 2)}, then: []Op{OpSet("a", []byte("2")), OpGet("a"), OpGet("none")}}, id, 1, 1)
		first := results(t, f, entryLog(3, 1, txn))
		results(t, f, entryLog(4, 1, set("a", "3")))
		again := results(t, f, entryLog(5, 1, txn))
		if fmt.Sprint(again) != fmt.Sprint(first) || first[0].status != resOK || string(first[0].gets[0].Value) != "2" {
			t.Fatalf("repeated: %+v, first %+v", again, first)
		}
		if e := entryOfKey(t, eng, "a"); string(e.Value) != "3" {
			t.Fatalf("a = %+v: the repeated transaction was applied", e)
		}
		key := getsKey(id, 1)
		stored := func() bool {
			ok := false
			eng.View(func(tx storage.ReadTx) error { _, ok = tx.Get(key); return nil })
			return ok
		}
		if !stored() {
			t.Fatal("the Gets are not stored")
		}
		results(t, f, entryLog(6, 1, inSession(set("b", "1"), id, 2, 2)))
		if stored() {
			t.Fatal("the Gets are still stored after the floor passed them")
		}
	})
}

// The Gets of the branch that runs are bounded: past the bound the
// command fails as a whole, with nothing written.
func TestFSMApply_GetsTooLarge(t *testing.T) {
	f := newTestFSM(t, storage.NewMemory())
	big := strings.Repeat("x", 5<<20)
	results(t, f, entryLog(1, 0, set("a", big), set("b", big)))
	res := results(t, f, entryLog(2, 0,
		command{kind: cmdTxn, then: []Op{OpSet("c", []byte("1")), OpGet("a"), OpGet("b")}},
		command{kind: cmdTxn, then: []Op{OpGet("a"), OpGet("b")}},
		command{kind: cmdTxn, then: []Op{OpDelete("a"), OpGet("a"), OpGet("b")}},
	))
	if res[0].status != resTooLarge || res[1].status != resTooLarge || res[2].status != resOK {
		t.Fatalf("results %v %v %v", res[0].status, res[1].status, res[2].status)
	}
	if e := entryOfKey(t, f.eng, "c"); e.ModRev != 0 {
		t.Fatalf("c = %+v: written by a transaction that failed", e)
	}
}

// The table travels with the data: a snapshot restored elsewhere answers
// a repeated command with its first result.
func TestFSMSessions_InSnapshots(t *testing.T) {
	src := newTestFSM(t, storage.NewMemory())
	id := register(t, src, 1, 1)
	first := results(t, src, entryLog(2, 1, inSession(set("k", "v"), id, 1, 1)))
	snap := persist(t, src)
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		dst := newTestFSM(t, open(t))
		if _, err := restore(dst, snap); err != nil {
			t.Fatal(err)
		}
		again := results(t, dst, entryLog(3, 1, inSession(set("k", "v"), id, 1, 1)))
		if fmt.Sprint(again[0]) != fmt.Sprint(first[0]) {
			t.Fatalf("after a restore: %+v, want %+v", again[0], first[0])
		}
		if e := entryOfKey(t, dst.eng, "k"); e.Version != 1 {
			t.Fatalf("k = %+v", e)
		}
	})
}

func FuzzDecodeSession(f *testing.F) {
	s := &sessState{lastSeen: 5, floor: 3}
	s.put(sessResult{seq: 7, status: resFailed, rev: 11, gets: true})
	s.put(sessResult{seq: 3, status: resOK, rev: 9})
	s.put(sessResult{seq: 5, status: resOK, rev: 10})
	s.put(sessResult{seq: 5, status: resOK, rev: 12})
	if s.n() != 3 || s.at(0).seq != 3 || s.at(1).rev != 12 || !s.at(2).gets {
		f.Fatalf("results %x", s.res)
	}
	f.Add(s.encode(nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeSession(sessionID{}, b)
		if err != nil {
			return
		}
		if _, err := decodeSession(sessionID{}, s.encode(nil)); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
	})
}

// A command that names a key of the store's own state is refused alike on
// every member, and the table is untouched.
func TestFSMApply_RefusesSysKeys(t *testing.T) {
	forEachFSMEngine(t, func(t *testing.T, open func(t *testing.T) storage.Engine) {
		eng := open(t)
		f := newTestFSM(t, eng)
		id := register(t, f, 1, 1)
		for i, c := range []command{
			set(sysMetaKey, "x"),
			{kind: cmdTxn, conds: []Cond{Exists(string(sessKey(id)))}},
			{kind: cmdTxn, els: []Op{OpGet(sysPrefix + "anything")}},
		} {
			res := results(t, f, entryLog(uint64(2+i), 1, c, set("fine", "1")))
			if res[0].status != resInvalid || res[1].status != resOK {
				t.Fatalf("command %d: %+v", i, res)
			}
		}
		if got := results(t, f, entryLog(9, 1, inSession(set("k", "v"), id, 1, 1))); got[0].status != resOK {
			t.Fatalf("the session after the refusals: %+v", got)
		}
	})
}
