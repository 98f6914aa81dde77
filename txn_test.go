package kv_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// CompareAndSet and CompareAndDelete on every member: a mismatch writes
// nothing and reports the current entry.
func TestStore_CompareAndSet_Conflicts(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t, time.Minute)
	for i, s := range c.nodes {
		key := fmt.Sprintf("cas/%d", i)
		rev, err := s.CompareAndSet(ctx, key, []byte("x"), 0)
		if err != nil || rev == 0 {
			t.Fatalf("n%d: create only of an absent key: %d, %v", i+1, rev, err)
		}
		other := c.nodes[(i+1)%3]
		e, err := other.GetEntry(ctx, key)
		if err != nil || e.ModRev != rev || e.CreateRev != rev || e.Version != 1 {
			t.Fatalf("n%d: GetEntry after CompareAndSet returned %d: %+v, %v", i+1, rev, e, err)
		}
		_, err = s.CompareAndSet(ctx, key, []byte("y"), 0)
		var ce *kv.ConflictError
		if !errors.Is(err, kv.ErrConflict) || !errors.As(err, &ce) || !ce.Found || ce.Current.ModRev != rev || string(ce.Current.Value) != "x" || ce.Current.Key != key || ce.Current.Version != 1 {
			t.Fatalf("n%d: create only of an existing key: %v (%+v)", i+1, err, ce)
		}
		if _, err := s.CompareAndSet(ctx, key, []byte("y"), rev+1); !errors.Is(err, kv.ErrConflict) {
			t.Fatalf("n%d: a wrong ModRev: %v", i+1, err)
		}
		if v, err := other.Get(ctx, key); err != nil || string(v) != "x" {
			t.Fatalf("n%d: a failed CompareAndSet wrote: %q, %v", i+1, v, err)
		}
		rev2, err := s.CompareAndSet(ctx, key, []byte("y"), rev)
		if err != nil || rev2 <= rev {
			t.Fatalf("n%d: the right ModRev: %d, %v", i+1, rev2, err)
		}
		if e, err := other.GetEntry(ctx, key); err != nil || e.ModRev != rev2 || e.CreateRev != rev || e.Version != 2 || string(e.Value) != "y" {
			t.Fatalf("n%d: after the second CompareAndSet: %+v, %v", i+1, e, err)
		}
		err = s.CompareAndDelete(ctx, key, rev)
		if !errors.As(err, &ce) || ce.Current.ModRev != rev2 {
			t.Fatalf("n%d: CompareAndDelete with a stale ModRev: %v", i+1, err)
		}
		if err := s.CompareAndDelete(ctx, key, 0); !errors.As(err, &ce) || !ce.Found {
			t.Fatalf("n%d: CompareAndDelete of an existing key with 0: %v", i+1, err)
		}
		if err := s.CompareAndDelete(ctx, key, rev2); err != nil {
			t.Fatalf("n%d: CompareAndDelete with the current ModRev: %v", i+1, err)
		}
		if _, err := other.Get(ctx, key); !errors.Is(err, kv.ErrNotFound) {
			t.Fatalf("n%d: after CompareAndDelete: %v", i+1, err)
		}
		err = s.CompareAndDelete(ctx, key, rev2)
		if !errors.As(err, &ce) || ce.Found || ce.Current.Key != key || ce.Current.ModRev != 0 || !strings.Contains(err.Error(), "absent") {
			t.Fatalf("n%d: CompareAndDelete of an absent key: %v (%+v)", i+1, err, ce)
		}
		if err := s.CompareAndDelete(ctx, key, 0); err != nil {
			t.Fatalf("n%d: CompareAndDelete of an absent key with 0: %v", i+1, err)
		}
		// Create again: a new CreateRev, Version 1.
		rev3, err := other.CompareAndSet(ctx, key, nil, 0)
		if e, gerr := s.GetEntry(ctx, key); err != nil || gerr != nil || e.CreateRev != rev3 || e.Version != 1 || rev3 <= rev2 || e.Value == nil || len(e.Value) != 0 {
			t.Fatalf("n%d: created again: %d, %+v, %v %v", i+1, rev3, e, err, gerr)
		}
	}
}

// A transaction over many keys, from every member: Then runs on all of
// them at one revision, with Gets of what it wrote.
func TestStore_Txn_ManyKeys(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t, time.Minute)
	const n = 40
	for round, s := range c.nodes {
		var conds []kv.Cond
		var then []kv.Op
		for i := range n {
			key := fmt.Sprintf("many/%02d", i)
			if round == 0 {
				conds = append(conds, kv.Absent(key))
			} else {
				conds = append(conds, kv.VersionIs(key, uint64(round)))
			}
			then = append(then, kv.OpSet(key, []byte(fmt.Sprint(round))), kv.OpGet(key))
		}
		res, err := s.Txn(ctx, kv.Txn{If: conds, Then: then, Else: []kv.Op{kv.OpGet("many/00")}})
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if !res.Succeeded || len(res.Gets) != n || res.Revision == 0 {
			t.Fatalf("round %d: %+v", round, res)
		}
		for i, g := range res.Gets {
			if g.Key != fmt.Sprintf("many/%02d", i) || g.ModRev != res.Revision || string(g.Value) != fmt.Sprint(round) || g.Version != uint64(round+1) {
				t.Fatalf("round %d: get %d = %+v (txn at %d)", round, i, g, res.Revision)
			}
		}
		ents, rev, err := c.nodes[(round+1)%3].ListEntries(ctx, "many/")
		if err != nil || len(ents) != n || rev < res.Revision {
			t.Fatalf("round %d: ListEntries: %d entries at %d, %v", round, len(ents), rev, err)
		}
		for _, e := range ents {
			if e.ModRev != res.Revision {
				t.Fatalf("round %d: %+v not at the transaction's revision %d", round, e, res.Revision)
			}
		}
	}
}

// When a condition fails, Else runs (its writes too) and Then writes
// nothing; a transaction without writes is a read at a revision.
func TestStore_Txn_ElseBranch(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t, time.Minute)
	s := c.nodes[c.followers()[0]]
	if err := s.Set(ctx, "acct/a", []byte("50")); err != nil {
		t.Fatal(err)
	}
	ea, err := s.GetEntry(ctx, "acct/a")
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Txn(ctx, kv.Txn{
		If:   []kv.Cond{kv.ModRevIs("acct/a", ea.ModRev+1), kv.Exists("acct/a")},
		Then: []kv.Op{kv.OpSet("acct/a", []byte("0")), kv.OpSet("then", []byte("ran"))},
		Else: []kv.Op{kv.OpGet("acct/a"), kv.OpSet("else", []byte("ran")), kv.OpGet("else"), kv.OpDelete("acct/none"), kv.OpGet("acct/none")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Succeeded || len(res.Gets) != 3 || string(res.Gets[0].Value) != "50" || string(res.Gets[1].Value) != "ran" || res.Gets[1].ModRev != res.Revision || res.Gets[2].ModRev != 0 || res.Gets[2].Value != nil {
		t.Fatalf("Else: %+v", res)
	}
	for _, k := range []string{"then"} {
		if _, err := c.nodes[0].Get(ctx, k); !errors.Is(err, kv.ErrNotFound) {
			t.Fatalf("%s after the Else branch ran: %v", k, err)
		}
	}
	if v, err := c.nodes[2].Get(ctx, "acct/a"); err != nil || string(v) != "50" {
		t.Fatalf("acct/a after the Else branch ran: %q, %v", v, err)
	}
	// Every kind of condition, failing and holding.
	for _, tc := range []struct {
		cond kv.Cond
		want bool
	}{
		{kv.ValueIs("acct/a", []byte("50")), true},
		{kv.ValueIs("acct/a", []byte("5")), false},
		{kv.ValueIs("acct/none", nil), false},
		{kv.VersionIs("acct/a", 1), true},
		{kv.VersionIs("acct/none", 0), true},
		{kv.ModRevIs("acct/a", ea.ModRev), true},
		{kv.Exists("acct/none"), false},
		{kv.Absent("acct/none"), true},
		{kv.Absent("acct/a"), false},
	} {
		// A read-only transaction, served as a read.
		before := c.nodes[0].Stats().AppliedIndex
		res, err := s.Txn(ctx, kv.Txn{If: []kv.Cond{tc.cond}, Then: []kv.Op{kv.OpGet("acct/a")}})
		if err != nil || res.Succeeded != tc.want || res.Revision < before {
			t.Fatalf("%+v: %+v, %v; want Succeeded %v at a revision from %d", tc.cond, res, err, tc.want, before)
		}
		if tc.want && (len(res.Gets) != 1 || string(res.Gets[0].Value) != "50") || !tc.want && len(res.Gets) != 0 {
			t.Fatalf("%+v: Gets %+v", tc.cond, res.Gets)
		}
		// The same condition deciding a write.
		res, err = s.Txn(ctx, kv.Txn{If: []kv.Cond{tc.cond}, Then: []kv.Op{kv.OpSet("flag", []byte("t"))}, Else: []kv.Op{kv.OpSet("flag", []byte("e"))}})
		want := map[bool]string{true: "t", false: "e"}[tc.want]
		if v, gerr := c.nodes[0].Get(ctx, "flag"); err != nil || gerr != nil || res.Succeeded != tc.want || string(v) != want {
			t.Fatalf("%+v deciding a write: %+v, %v; flag %q, %v", tc.cond, res, err, v, gerr)
		}
	}
	// The empty transaction holds, and reads nothing.
	if res, err := s.Txn(ctx, kv.Txn{}); err != nil || !res.Succeeded || len(res.Gets) != 0 || res.Revision == 0 {
		t.Fatalf("empty Txn: %+v, %v", res, err)
	}
}

// Bad transactions are refused before anything is sent, with errors that
// say why.
func TestStore_Txn_Limits(t *testing.T) {
	s, err := kv.Open(kv.Config{NodeID: "solo", InMemory: true, MaxTxnOps: 8, MaxValueSize: 6 << 20, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := ctxT(t, time.Minute)
	ops := func(n int) []kv.Op {
		var out []kv.Op
		for i := range n {
			out = append(out, kv.OpSet(fmt.Sprint("k", i), nil))
		}
		return out
	}
	for _, tc := range []struct {
		name string
		txn  kv.Txn
		is   error
	}{
		{"too many operations", kv.Txn{Then: ops(9)}, kv.ErrTxnTooLarge},
		{"too many in all", kv.Txn{If: []kv.Cond{kv.Exists("a"), kv.Exists("b")}, Then: ops(4), Else: ops(3)}, kv.ErrTxnTooLarge},
		{"two writes to a key", kv.Txn{Then: []kv.Op{kv.OpSet("a", nil), kv.OpGet("a"), kv.OpDelete("a")}}, kv.ErrInvalidTxn},
		{"two writes to a key in Else", kv.Txn{Else: []kv.Op{kv.OpSet("a", nil), kv.OpSet("a", []byte("x"))}}, kv.ErrInvalidTxn},
		{"a zero Op", kv.Txn{Then: []kv.Op{{}}}, kv.ErrInvalidTxn},
		{"a zero Cond", kv.Txn{If: []kv.Cond{{}}, Then: ops(1)}, kv.ErrInvalidTxn},
		{"an empty key", kv.Txn{Then: []kv.Op{kv.OpGet("")}}, kv.ErrEmptyKey},
		{"an empty key in a condition", kv.Txn{If: []kv.Cond{kv.Exists("")}}, kv.ErrEmptyKey},
		{"a key too large", kv.Txn{Then: []kv.Op{kv.OpDelete(strings.Repeat("k", 5000))}}, kv.ErrKeyTooLarge},
		{"a value too large", kv.Txn{Then: []kv.Op{kv.OpSet("a", make([]byte, 7<<20))}}, kv.ErrValueTooLarge},
		{"a compared value too large", kv.Txn{If: []kv.Cond{kv.ValueIs("a", make([]byte, 7<<20))}}, kv.ErrValueTooLarge},
		{"a reserved key", kv.Txn{Then: []kv.Op{kv.OpSet("\xff\xffkv/s/x", nil)}}, kv.ErrReservedKey},
		{"too many bytes", kv.Txn{Then: []kv.Op{kv.OpSet("a", make([]byte, 5<<20)), kv.OpSet("b", make([]byte, 5<<20)), kv.OpSet("c", make([]byte, 5<<20))}}, kv.ErrTxnTooLarge},
	} {
		if _, err := s.Txn(ctx, tc.txn); !errors.Is(err, tc.is) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.is)
		}
	}
	for _, key := range []string{"", "\xff\xffkv/meta"} {
		if _, err := s.CompareAndSet(ctx, key, nil, 0); err == nil {
			t.Errorf("CompareAndSet of %q succeeded", key)
		}
		if err := s.CompareAndDelete(ctx, key, 0); err == nil {
			t.Errorf("CompareAndDelete of %q succeeded", key)
		}
	}
	if err := s.Set(ctx, "\xff\xffkv/meta", nil); !errors.Is(err, kv.ErrReservedKey) {
		t.Errorf("Set of a reserved key: %v", err)
	}
	if _, err := s.Get(ctx, "\xff\xffkv/meta"); !errors.Is(err, kv.ErrReservedKey) {
		t.Errorf("Get of a reserved key: %v", err)
	}
	// Gets over 8 MiB: found as the transaction applies (with a write),
	// or as it reads (without).
	big := make([]byte, 5<<20)
	for _, k := range []string{"big1", "big2"} {
		if err := s.Set(ctx, k, big); err != nil {
			t.Fatal(err)
		}
	}
	for _, then := range [][]kv.Op{
		{kv.OpSet("c", nil), kv.OpGet("big1"), kv.OpGet("big2")},
		{kv.OpGet("big1"), kv.OpGet("big2")},
	} {
		if _, err := s.Txn(ctx, kv.Txn{Then: then}); !errors.Is(err, kv.ErrTxnTooLarge) {
			t.Errorf("Gets of 10 MiB: %v, want ErrTxnTooLarge", err)
		}
	}
	if _, err := s.Get(ctx, "c"); !errors.Is(err, kv.ErrNotFound) {
		t.Errorf("c: %v: written by a transaction that failed", err)
	}
	// The limit holds exactly.
	if res, err := s.Txn(ctx, kv.Txn{Then: ops(8)}); err != nil || !res.Succeeded {
		t.Errorf("8 operations with MaxTxnOps 8: %+v, %v", res, err)
	}
	// List hides the store's own keys.
	pairs, err := s.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pairs {
		if strings.HasPrefix(p.Key, "\xff\xff") {
			t.Errorf("List shows %q", p.Key)
		}
	}
	if n := len(pairs); n != 10 {
		t.Errorf("List: %d pairs, want 10", n)
	}
	for _, bad := range []int{-1, 4097} {
		if _, err := kv.Open(kv.Config{NodeID: "x", InMemory: true, MaxTxnOps: bad}); !errors.Is(err, kv.ErrInvalidConfig) {
			t.Errorf("MaxTxnOps %d: %v", bad, err)
		}
	}
	s.Close()
	if _, err := s.Txn(ctx, kv.Txn{}); !errors.Is(err, kv.ErrClosed) {
		t.Errorf("Txn after Close: %v", err)
	}
	if _, err := s.CompareAndSet(ctx, "a", nil, 0); !errors.Is(err, kv.ErrClosed) {
		t.Errorf("CompareAndSet after Close: %v", err)
	}
}

// Keys that sort around the store's own are listed, and paged, as usual.
func TestStore_List_AroundReservedKeys(t *testing.T) {
	s, err := kv.Open(kv.Config{NodeID: "solo", InMemory: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := ctxT(t, time.Minute)
	keys := []string{"a", "\xff", "\xff\xff", "\xff\xffkv", "\xff\xffkv.", "\xff\xffkv0", "\xff\xffkw", "\xff\xff\xff"}
	for _, k := range keys {
		if err := s.Set(ctx, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	for _, prefix := range []string{"", "\xff", "\xff\xff", "\xff\xffkv"} {
		var want []string
		for _, k := range keys {
			if strings.HasPrefix(k, prefix) {
				want = append(want, k)
			}
		}
		var got []string
		after := ""
		for {
			opts := []kv.ReadOption{kv.Limit(2)}
			if after != "" {
				opts = append(opts, kv.After(after))
			}
			page, _, err := s.ListEntries(ctx, prefix, opts...)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range page {
				got = append(got, e.Key)
			}
			if len(page) < 2 {
				break
			}
			after = page[len(page)-1].Key
		}
		if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
			t.Errorf("prefix %q: %q, want %q", prefix, got, want)
		}
	}
	if pairs, err := s.List(ctx, "\xff\xffkv/"); err != nil || len(pairs) != 0 {
		t.Errorf("List of the reserved prefix: %v, %v", pairs, err)
	}
}

// Many writers share group-committed entries, and each gets its own
// result: Sets succeed, transactions whose conditions fail run Else,
// compare-and-sets that conflict fail alone; revisions are shared.
func TestStore_GroupCommit_PerWriterResults(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t, 2*time.Minute)
	if err := c.nodes[0].Set(ctx, "guard", []byte("g")); err != nil {
		t.Fatal(err)
	}
	// Slow commits make the writers queue up behind each other.
	c.kc.SetLatency(20 * time.Millisecond)
	defer c.kc.SetLatency(0)
	type outcome struct {
		kind string
		rev  uint64
		err  error
	}
	var mu sync.Mutex
	var outs []outcome
	var wg sync.WaitGroup
	for i := range 90 {
		s := c.nodes[i/3%3] // every member runs every kind
		wg.Go(func() {
			var o outcome
			switch i % 3 {
			case 0:
				o.kind = "set"
				o.err = s.Set(ctx, fmt.Sprintf("gc/%02d", i), []byte("v"))
				if o.err == nil {
					var e kv.Entry
					e, o.err = s.GetEntry(ctx, fmt.Sprintf("gc/%02d", i))
					o.rev = e.ModRev
				}
			case 1:
				o.kind = "failed txn"
				var res kv.TxnResult
				res, o.err = s.Txn(ctx, kv.Txn{If: []kv.Cond{kv.Absent("guard")}, Then: []kv.Op{kv.OpSet("never", nil)}, Else: []kv.Op{kv.OpSet(fmt.Sprintf("else/%02d", i), nil)}})
				if o.err == nil && res.Succeeded {
					o.err = errors.New("succeeded")
				}
				o.rev = res.Revision
			case 2:
				o.kind = "conflicting cas"
				_, o.err = s.CompareAndSet(ctx, "guard", []byte("x"), 1)
				if errors.Is(o.err, kv.ErrConflict) {
					o.err = nil
				} else {
					o.err = fmt.Errorf("want a conflict: %v", o.err)
				}
			}
			mu.Lock()
			outs = append(outs, o)
			mu.Unlock()
		})
	}
	wg.Wait()
	setRevs := map[uint64]int{}
	shared := 0
	for _, o := range outs {
		if o.err != nil {
			t.Fatalf("%s: %v", o.kind, o.err)
		}
		if o.kind == "set" {
			setRevs[o.rev]++
		}
	}
	for _, o := range outs {
		if o.kind == "failed txn" && setRevs[o.rev] > 0 {
			shared++
		}
	}
	multi := 0
	for _, n := range setRevs {
		if n > 1 {
			multi++
		}
	}
	t.Logf("30 Sets in %d entries; %d failed transactions shared an entry with a Set", len(setRevs), shared)
	if multi == 0 || shared == 0 {
		t.Fatalf("no entry carried writes of several writers with different results (Sets at %v)", setRevs)
	}
	if _, err := c.nodes[1].Get(ctx, "never"); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("never: %v", err)
	}
	if v, err := c.nodes[2].Get(ctx, "guard"); err != nil || string(v) != "g" {
		t.Fatalf("guard: %q, %v", v, err)
	}
}

// Writes of one key never share an entry, so each gets a revision of its
// own: a compare-and-set on the revision a write returned fails if another
// write of the key came after it, even one group-committed with it.
func TestStore_GroupCommit_OneWriteOfAKeyPerEntry(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t, 2*time.Minute)
	if err := c.nodes[0].Set(ctx, "warm", []byte("w")); err != nil {
		t.Fatal(err)
	}
	c.kc.SetLatency(20 * time.Millisecond)
	defer c.kc.SetLatency(0)
	var mu sync.Mutex
	revs := map[uint64]int{}    // revision -> writes of "hot" at it
	others := map[uint64]bool{} // revisions of writes of other keys
	var wg sync.WaitGroup
	for i := range 60 {
		s := c.nodes[i%3]
		wg.Go(func() {
			key := "hot"
			if i%2 == 1 {
				key = fmt.Sprintf("cold/%02d", i)
			}
			res, err := s.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpSet(key, []byte(strconv.Itoa(i)))}})
			if err != nil || !res.Succeeded {
				t.Errorf("write %d: %+v, %v", i, res, err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if key == "hot" {
				revs[res.Revision]++
			} else {
				others[res.Revision] = true
			}
		})
	}
	wg.Wait()
	shared := 0
	for rev, n := range revs {
		if n > 1 {
			t.Errorf("%d writes of one key share revision %d", n, rev)
		}
		if others[rev] {
			shared++
		}
	}
	t.Logf("30 writes of one key at %d revisions; %d of them shared with writes of other keys", len(revs), shared)
	if shared == 0 {
		t.Errorf("no write of the hot key was group-committed with another write: the test does not exercise group commit")
	}
	e, err := c.nodes[1].GetEntry(ctx, "hot")
	if err != nil || e.Version != 30 {
		t.Fatalf("hot: %+v, %v; want version 30", e, err)
	}
}

// Revisions and CAS survive restarts, and a snapshot installed on a member
// that fell behind.
func TestCluster_Revisions_SurviveRestartAndSnapshotInstall(t *testing.T) {
	kc := kvtest.NewCluster(t, 3, kvtest.Logger(testLogger(t)), kvtest.Configure(func(i int, cfg *kv.Config) {
		cfg.SnapshotThreshold = 64
		cfg.SnapshotInterval = 100 * time.Millisecond
		cfg.TrailingLogs = 16
	}))
	ctx := ctxT(t, 2*time.Minute)
	l, err := kc.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	behind := (l + 1) % 3
	leader := kc.Node(l)
	rev, err := leader.CompareAndSet(ctx, "rev/a", []byte("1"), 0)
	if err != nil {
		t.Fatal(err)
	}
	kc.Stop(behind)
	// Far more entries than the log keeps: the member that comes back
	// gets a snapshot.
	for i := range 300 {
		if err := leader.Set(ctx, fmt.Sprintf("rev/fill/%03d", i%50), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	rev2, err := leader.CompareAndSet(ctx, "rev/a", []byte("2"), rev)
	if err != nil {
		t.Fatal(err)
	}
	want, wantRev, err := leader.ListEntries(ctx, "rev/")
	if err != nil {
		t.Fatal(err)
	}
	kc.Restart(behind)
	kc.Restart(l) // and the old leader restarts too
	for i := range 3 {
		s := kc.Node(i)
		var got []kv.Entry
		var gotRev uint64
		deadline := time.Now().Add(30 * time.Second)
		for {
			got, gotRev, err = s.ListEntries(ctx, "rev/")
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("member %d: %v", i, err)
		}
		if gotRev < wantRev || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("member %d after the restarts: %d entries at %d, want %d at %d or later", i, len(got), gotRev, len(want), wantRev)
		}
		e, err := s.GetEntry(ctx, "rev/a")
		if err != nil || e.CreateRev != rev || e.ModRev != rev2 || e.Version != 2 {
			t.Fatalf("member %d: rev/a = %+v, %v", i, e, err)
		}
	}
	if st := kc.Node(behind).Stats(); st.LastSnapshotIndex == 0 {
		t.Logf("member %d took no snapshot of its own (%+v)", behind, st)
	}
	// CAS goes on from the revisions that survived, from any member.
	if _, err := kc.Node(behind).CompareAndSet(ctx, "rev/a", []byte("3"), rev); !errors.Is(err, kv.ErrConflict) {
		t.Fatalf("a stale CAS after the restarts: %v", err)
	}
	if _, err := kc.Node(behind).CompareAndSet(ctx, "rev/a", []byte("3"), rev2); err != nil {
		t.Fatalf("CAS after the restarts: %v", err)
	}
}

// casIncrement adds one to the counter at key with a read and a
// compare-and-set, until it succeeds; cas is the compare-and-set to use.
func casIncrement(ctx context.Context, s *kv.Store, key string, cas func(ctx context.Context, s *kv.Store, key string, v []byte, rev uint64) error) (conflicts int, err error) {
	for {
		e, err := s.GetEntry(ctx, key)
		if err != nil {
			return conflicts, err
		}
		var x int
		fmt.Sscan(string(e.Value), &x)
		err = cas(ctx, s, key, []byte(fmt.Sprint(x+1)), e.ModRev)
		if err == nil {
			return conflicts, nil
		}
		if !errors.Is(err, kv.ErrConflict) {
			return conflicts, err
		}
		conflicts++
	}
}

func realCAS(ctx context.Context, s *kv.Store, key string, v []byte, rev uint64) error {
	_, err := s.CompareAndSet(ctx, key, v, rev)
	return err
}

// notAtomicCAS checks and writes in two steps, as a client without
// compare-and-set would: another write can come between.
func notAtomicCAS(ctx context.Context, s *kv.Store, key string, v []byte, rev uint64) error {
	e, err := s.GetEntry(ctx, key)
	if err != nil {
		return err
	}
	if e.ModRev != rev {
		return &kv.ConflictError{Current: e, Found: true}
	}
	time.Sleep(time.Millisecond) // as a slow client would
	return s.Set(ctx, key, v)
}

// runCASCounter increments a counter from every member concurrently, perN
// times each, and returns the counter's final value and the increments
// acknowledged.
func runCASCounter(t *testing.T, c *cluster, key string, perN int, cas func(ctx context.Context, s *kv.Store, key string, v []byte, rev uint64) error) (final, acked int) {
	t.Helper()
	ctx := ctxT(t, 2*time.Minute)
	if err := c.nodes[0].Set(ctx, key, []byte("0")); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	conflicts := 0
	for _, s := range c.nodes {
		for range 2 {
			wg.Go(func() {
				for range perN {
					n, err := casIncrement(ctx, s, key, cas)
					mu.Lock()
					conflicts += n
					if err == nil {
						acked++
					} else {
						t.Errorf("increment: %v", err)
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	v, err := c.nodes[1].Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Sscan(string(v), &final)
	t.Logf("%d increments acknowledged, %d conflicts, counter %d", acked, conflicts, final)
	return final, acked
}

// Concurrent read and compare-and-set increments from every member: the
// counter counts exactly the acknowledged ones.
func TestCluster_CASCounter(t *testing.T) {
	c := newCluster(t, 3)
	final, acked := runCASCounter(t, c, "ctr", 10, realCAS)
	if final != acked || acked != 60 {
		t.Fatalf("counter %d after %d acknowledged increments", final, acked)
	}
}

// Negative control: the same counter with a compare-and-set that is not
// atomic loses increments, and the check above catches it.
func TestCluster_CASCounter_NegativeControl_NotAtomic(t *testing.T) {
	c := newCluster(t, 3)
	for round := range 5 {
		final, acked := runCASCounter(t, c, fmt.Sprint("ctr", round), 10, notAtomicCAS)
		if final != acked {
			t.Logf("round %d: caught: counter %d after %d acknowledged increments", round, final, acked)
			return
		}
	}
	t.Fatal("a compare-and-set that is not atomic lost no increment in 5 rounds: the check would not catch it")
}
