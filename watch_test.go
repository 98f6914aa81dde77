package kv_test

// Watch's guarantees: a list continued by a watch reproduces the data; the
// stream is gapless and duplicate-free across kills, restarts and moves
// between members; the changes of one revision come together; deletes of
// every kind are events; the history is bounded, trimmed alike on every
// member, kept across restarts and snapshots, and ended by a restore; a
// watch ends with ErrClosed or the ctx's error.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// ---------------------------------------------------------------------------
// Helpers.

// watchUntil consumes s.Watch(ctx, prefix, from) until stop returns true for
// an event (kept) or the stream ends, and returns the events and the error
// the stream ended with (nil when stop ended it).
func watchUntil(ctx context.Context, s *kv.Store, prefix string, from uint64, stop func(kv.Event) bool) ([]kv.Event, error) {
	var evs []kv.Event
	for ev, err := range s.Watch(ctx, prefix, from) {
		if err != nil {
			return evs, err
		}
		evs = append(evs, ev)
		if stop != nil && stop(ev) {
			return evs, nil
		}
	}
	return evs, errors.New("the watch ended without an error")
}

// throughRev stops a watch at the first event of revision rev or later.
func throughRev(rev uint64) func(kv.Event) bool {
	return func(ev kv.Event) bool { return ev.Entry.ModRev >= rev }
}

// atKey stops a watch at the first event of key.
func atKey(key string) func(kv.Event) bool {
	return func(ev kv.Event) bool { return ev.Entry.Key == key }
}

// mustSet writes key through a Txn and returns the write's revision.
func mustSet(ctx context.Context, t testing.TB, s *kv.Store, key string, value []byte, opts ...kv.WriteOption) uint64 {
	t.Helper()
	res, err := s.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpSet(key, value, opts...)}})
	if err != nil {
		t.Fatalf("set %s: %v", key, err)
	}
	return res.Revision
}

// compacted asserts that err is a *CompactedError for rev (any, for 0) and
// returns the oldest revision it names.
func compacted(t testing.TB, err error, rev uint64) uint64 {
	t.Helper()
	var ce *kv.CompactedError
	if !errors.Is(err, kv.ErrCompacted) || !errors.As(err, &ce) {
		t.Fatalf("watch from %d: got %v, want a *CompactedError", rev, err)
	}
	if rev != 0 && ce.Rev != rev {
		t.Fatalf("CompactedError.Rev = %d, want %d", ce.Rev, rev)
	}
	return ce.Oldest
}

// wop is one write of the concurrent tests: a put (value set) or a delete
// (value ""), with its revision when acknowledged.
type wop struct {
	key, value string
	rev        uint64
}

// writeLog records the writes of concurrent writers: acknowledged ones
// with their revision, and those whose outcome is unknown.
type writeLog struct {
	mu      sync.Mutex
	acked   []wop
	unknown []wop
	n       atomic.Int64 // calls that returned
}

// record files one write's outcome. A write that failed with ErrNoLeader
// (and not ErrOutcomeUnknown) had no effect; any other error leaves it
// unknown.
func (l *writeLog) record(w wop, err error) {
	l.n.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err == nil:
		l.acked = append(l.acked, w)
	case errors.Is(err, kv.ErrNoLeader) && !errors.Is(err, kv.ErrOutcomeUnknown):
	default:
		l.unknown = append(l.unknown, w)
	}
}

// put writes key=value through a Txn (which returns the revision).
func (l *writeLog) put(ctx context.Context, s *kv.Store, key, value string) {
	res, err := s.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpSet(key, []byte(value))}})
	l.record(wop{key: key, value: value, rev: res.Revision}, err)
}

// del deletes key if it exists; a delete of an absent key changes nothing
// and is not recorded.
func (l *writeLog) del(ctx context.Context, s *kv.Store, key string) {
	res, err := s.Txn(ctx, kv.Txn{If: []kv.Cond{kv.Exists(key)}, Then: []kv.Op{kv.OpDelete(key)}})
	if err == nil && !res.Succeeded {
		l.n.Add(1)
		return
	}
	l.record(wop{key: key, rev: res.Revision}, err)
}

// checkEvents checks the events a watch from after+1 yielded against the
// writes: revisions above after and non-decreasing; no change twice; every
// acknowledged write after after exactly once, at its revision, with its
// value; every other event a write whose outcome is unknown, at most once.
func checkEvents(t *testing.T, name string, evs []kv.Event, l *writeLog, after uint64) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	type kr struct {
		key string
		rev uint64
	}
	acked := map[kr]wop{}
	for _, w := range l.acked {
		acked[kr{w.key, w.rev}] = w
	}
	unknownPut := map[string]string{} // value -> key
	unknownDel := map[string]int{}
	for _, w := range l.unknown {
		if w.value == "" {
			unknownDel[w.key]++
		} else {
			unknownPut[w.value] = w.key
		}
	}
	seen := map[kr]bool{}
	seenValue := map[string]bool{}
	var prev uint64
	errs := 0
	fail := func(format string, args ...any) {
		t.Helper()
		if errs++; errs <= 10 {
			t.Errorf(name+": "+format, args...)
		}
	}
	for i, ev := range evs {
		e := ev.Entry
		if e.ModRev <= after {
			fail("event %d (%s %s) has revision %d, at or before the start %d", i, ev.Type, e.Key, e.ModRev, after)
		}
		if e.ModRev < prev {
			fail("event %d (%s %s) has revision %d after revision %d", i, ev.Type, e.Key, e.ModRev, prev)
		}
		prev = e.ModRev
		k := kr{e.Key, e.ModRev}
		if seen[k] {
			fail("event %d: %s %s at revision %d came twice", i, ev.Type, e.Key, e.ModRev)
		}
		seen[k] = true
		if w, ok := acked[k]; ok {
			switch {
			case w.value == "" && ev.Type != kv.EventDelete:
				fail("event %d: %s %s at %d, want a delete", i, ev.Type, e.Key, e.ModRev)
			case w.value != "" && (ev.Type != kv.EventPut || string(e.Value) != w.value):
				fail("event %d: %s %s=%q at %d, want put of %q", i, ev.Type, e.Key, e.Value, e.ModRev, w.value)
			}
			continue
		}
		switch ev.Type {
		case kv.EventPut:
			v := string(e.Value)
			if unknownPut[v] != e.Key || seenValue[v] {
				fail("event %d: put %s=%q at %d is no write of the test (or came twice)", i, e.Key, v, e.ModRev)
			}
			seenValue[v] = true
		case kv.EventDelete:
			if unknownDel[e.Key] == 0 {
				fail("event %d: delete %s at %d is no delete of the test", i, e.Key, e.ModRev)
			}
			unknownDel[e.Key]--
			if e.Value != nil {
				fail("event %d: delete %s carries a value %q", i, e.Key, e.Value)
			}
		default:
			fail("event %d: type %v", i, ev.Type)
		}
	}
	missing := 0
	for _, w := range l.acked {
		if w.rev > after && !seen[kr{w.key, w.rev}] {
			if missing++; missing <= 10 {
				t.Errorf("%s: acknowledged write %s=%q at revision %d never came", name, w.key, w.value, w.rev)
			}
		}
	}
	if missing > 0 {
		t.Errorf("%s: %d acknowledged writes missing from %d events", name, missing, len(evs))
	}
}

// checkUnion checks that list (a ListEntries at some revision) with the
// events of a watch from that revision plus one applied on top is final.
func checkUnion(t *testing.T, name string, list []kv.Entry, evs []kv.Event, final []kv.Entry) {
	t.Helper()
	state := map[string]kv.Entry{}
	for _, e := range list {
		state[e.Key] = e
	}
	for _, ev := range evs {
		if ev.Type == kv.EventDelete {
			delete(state, ev.Entry.Key)
		} else {
			state[ev.Entry.Key] = ev.Entry
		}
	}
	bad := 0
	for _, e := range final {
		got, ok := state[e.Key]
		if !ok || !reflect.DeepEqual(got, e) {
			if bad++; bad <= 10 {
				t.Errorf("%s: list+events give %s = %+v (present %v), the store has %+v", name, e.Key, got, ok, e)
			}
		}
		delete(state, e.Key)
	}
	for k, e := range state {
		if bad++; bad <= 10 {
			t.Errorf("%s: list+events have %s = %+v, the store does not", name, k, e)
		}
	}
}

// ---------------------------------------------------------------------------
// 1. A list continued by a watch, under concurrent writes.

// ListEntries then Watch(rev+1), while writers on every member write and
// delete: the list with the events applied on top is the final data; no
// event is at or before rev; every acknowledged write comes exactly once, at
// the revision its Txn returned, in revision order. Watched on the member
// that listed and on another one.
func TestWatch_ListThenWatchUnderConcurrentWrites(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t, 120*time.Second)
	const prefix, nkeys, writers, perWriter = "lw/", 10, 6, 50
	for i := range nkeys {
		mustSet(ctx, t, c.nodes[0], fmt.Sprintf("%sk%02d", prefix, i), []byte("init"))
	}
	l := &writeLog{}
	var wg sync.WaitGroup
	for wi := range writers {
		s := c.nodes[wi%3]
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(wi), 1))
			for n := range perWriter {
				key := fmt.Sprintf("%sk%02d", prefix, rng.IntN(nkeys))
				if rng.IntN(5) == 0 {
					l.del(ctx, s, key)
				} else {
					l.put(ctx, s, key, fmt.Sprintf("w%d-%d", wi, n))
				}
			}
		}()
	}
	for l.n.Load() < writers*perWriter/5 {
		if ctx.Err() != nil {
			t.Fatal("the writers made no progress")
		}
		time.Sleep(time.Millisecond)
	}
	lister := c.nodes[1]
	list, rev, err := lister.ListEntries(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if n := l.n.Load(); n >= writers*perWriter {
		t.Fatalf("the list came after every write (%d): no concurrency to test", n)
	}
	const end = prefix + "~end"
	type result struct {
		evs []kv.Event
		err error
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	results := make([]chan result, 2)
	for i, s := range []*kv.Store{lister, c.nodes[2]} {
		results[i] = make(chan result, 1)
		go func() {
			evs, err := watchUntil(wctx, s, prefix, rev+1, atKey(end))
			results[i] <- result{evs, err}
		}()
	}
	wg.Wait()
	endRev := mustSet(ctx, t, c.nodes[0], end, []byte("end"))
	l.mu.Lock()
	l.acked = append(l.acked, wop{key: end, value: "end", rev: endRev})
	l.mu.Unlock()
	final, _, err := lister.ListEntries(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	t.Logf("list at revision %d: %d keys; %d writes acknowledged, %d unknown", rev, len(list), len(l.acked), len(l.unknown))
	l.mu.Unlock()
	// The members have applied the end marker by now, or will in a moment.
	stop := time.AfterFunc(20*time.Second, wcancel)
	defer stop.Stop()
	for i, ch := range results {
		r := <-ch
		name := fmt.Sprintf("watcher %d", i)
		if r.err != nil {
			t.Errorf("%s: %v after %d events, before the end marker", name, r.err, len(r.evs))
		}
		checkEvents(t, name, r.evs, l, rev)
		if r.err == nil {
			checkUnion(t, name, list, r.evs, final)
		}
	}
}

// ---------------------------------------------------------------------------
// 2. Gapless across kills, restarts and moves between members.

// A watcher follows the writes of concurrent writers while leaders are
// killed and members restarted; whenever its stream ends (its member died)
// or every so many events (a reconnect), it resumes from the last revision
// it saw plus one on another member. At the end every acknowledged write
// came exactly once, no change came twice, a write whose outcome is
// unknown came at most once, and the events on top of the first list give
// the final data.
func TestWatch_GaplessAcrossKillsAndRestarts(t *testing.T) {
	c := newCluster(t, 3)
	kc := c.kc
	ctx := ctxT(t, 180*time.Second)
	const prefix, nkeys, writers, perWriter = "gw/", 8, 3, 400
	list, startRev, err := kc.Node(kc.Leader()).ListEntries(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}

	l := &writeLog{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for wi := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(wi), 2))
			for n := 0; n < perWriter; n++ {
				select {
				case <-stop:
					return
				default:
				}
				s := kc.Node((wi + n) % 3)
				if s == nil {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				key := fmt.Sprintf("%sk%02d", prefix, rng.IntN(nkeys))
				octx, cancel := context.WithTimeout(ctx, 3*time.Second)
				if rng.IntN(5) == 0 {
					l.del(octx, s, key)
				} else {
					l.put(octx, s, key, fmt.Sprintf("w%d-%d", wi, n))
				}
				cancel()
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}

	const end = prefix + "~end"
	errReconnect := errors.New("reconnect")
	var (
		evs     []kv.Event
		resumes = map[string]int{}
		werr    error
	)
	wdone := make(chan struct{})
	var watching atomic.Int32 // the member the watcher reads from
	go func() {
		defer close(wdone)
		from, member := startRev+1, 1
		// After a break of its own, which may fall within a revision, the
		// watcher resumes from that revision and expects first the events
		// of it that it already has (held), which it does not keep twice.
		var held []kv.Event
		for {
			s := kc.Node(member)
			if s == nil {
				member = (member + 1) % 3
				time.Sleep(20 * time.Millisecond)
				continue
			}
			n := 0
			var err error
			watching.Store(int32(member))
			for ev, e := range s.Watch(ctx, prefix, from) {
				if e != nil {
					err = e
					break
				}
				if len(held) > 0 {
					if !reflect.DeepEqual(ev, held[0]) {
						werr = fmt.Errorf("member %d, from %d: %+v, want %+v again", member, from, ev, held[0])
						return
					}
					held = held[1:]
					continue
				}
				evs = append(evs, ev)
				if ev.Entry.Key == end {
					return
				}
				if n++; n >= 40 {
					err = errReconnect
					break
				}
			}
			switch {
			case err == nil:
				werr = errors.New("the watch ended without an error")
				return
			case errors.Is(err, errReconnect):
				resumes["reconnect"]++
				from = lastRev(evs)
				for i := len(evs) - 1; i >= 0 && evs[i].Entry.ModRev == from; i-- {
					held = append([]kv.Event{evs[i]}, held...)
				}
			case errors.Is(err, kv.ErrClosed):
				// A stream ends between revisions: resume after the last.
				resumes["closed"]++
				if len(held) == 0 && len(evs) > 0 {
					from = lastRev(evs) + 1
				}
			default:
				werr = fmt.Errorf("watch on member %d from %d: %w", member, from, err)
				return
			}
			member = (member + 1) % 3
		}
	}()

	for round := range 3 {
		time.Sleep(700 * time.Millisecond)
		ld := kc.Leader()
		if round == 0 {
			// Once under the watcher for sure: it moves between members
			// every 40 events, and need not be on the leader.
			ld = int(watching.Load())
		}
		t.Logf("round %d: kill node%d (leader node%d)", round, ld, kc.Leader())
		kc.Kill(ld)
		time.Sleep(1500 * time.Millisecond)
		kc.Restart(ld)
		time.Sleep(700 * time.Millisecond)
		f := (kc.Leader() + 1 + round%2) % 3
		t.Logf("round %d: restart node%d", round, f)
		kc.Restart(f)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()

	// One end marker, written exactly once whatever the retries.
	for attempt := 0; ; attempt++ {
		s := kc.Node(kc.Leader())
		octx, cancel := context.WithTimeout(ctx, 5*time.Second)
		res, err := s.Txn(octx, kv.Txn{If: []kv.Cond{kv.Absent(end)}, Then: []kv.Op{kv.OpSet(end, []byte("end"))}})
		cancel()
		if err == nil {
			l.mu.Lock()
			if res.Succeeded {
				l.acked = append(l.acked, wop{key: end, value: "end", rev: res.Revision})
			} else {
				l.unknown = append(l.unknown, wop{key: end, value: "end"})
			}
			l.mu.Unlock()
			break
		}
		if attempt == 10 {
			t.Fatalf("end marker: %v", err)
		}
		l.mu.Lock()
		l.unknown = append(l.unknown, wop{key: end, value: "end"})
		l.mu.Unlock()
	}
	select {
	case <-wdone:
	case <-time.After(30 * time.Second):
		t.Fatal("the watcher did not reach the end marker within 30 s")
	}
	if werr != nil {
		t.Fatal(werr)
	}
	final, _, err := kc.Node(kc.Leader()).ListEntries(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	t.Logf("%d events; %d writes acknowledged, %d unknown; resumes %v", len(evs), len(l.acked), len(l.unknown), resumes)
	l.mu.Unlock()
	if resumes["closed"] == 0 {
		t.Errorf("the watcher's member never died under it: the test did not test resuming after a kill")
	}
	checkEvents(t, "watcher", evs, l, startRev)
	checkUnion(t, "watcher", list, evs, final)
}

func lastOf(revs []uint64, none uint64) uint64 {
	if len(revs) == 0 {
		return none
	}
	return revs[len(revs)-1]
}

func lastRev(evs []kv.Event) uint64 {
	if len(evs) == 0 {
		return 0
	}
	return evs[len(evs)-1].Entry.ModRev
}

// ---------------------------------------------------------------------------
// 3. What the events are.

// The changes of one Txn come together, at its revision, in the order of
// its operations; a prefix leaves out every other key.
func TestWatch_TxnChangesTogetherInOrder(t *testing.T) {
	s, _ := openSingle(t, t.TempDir())
	defer s.Close()
	ctx := ctxT(t, 30*time.Second)
	mustSet(ctx, t, s, "t/c", []byte("c0"))
	mustSet(ctx, t, s, "t/a", []byte("a0"))
	from := mustSet(ctx, t, s, "u/x", []byte("outside")) + 1
	res, err := s.Txn(ctx, kv.Txn{Then: []kv.Op{
		kv.OpSet("t/b", []byte("b1")),
		kv.OpSet("tt", []byte("not under t/")),
		kv.OpDelete("t/c"),
		kv.OpSet("t/a", []byte("a1")),
		kv.OpDelete("t/absent"), // deletes nothing: no event
		kv.OpSet("t", []byte("the prefix itself is not under it")),
		kv.OpGet("t/a"),
	}})
	if err != nil || !res.Succeeded {
		t.Fatal(res, err)
	}
	mustSet(ctx, t, s, "u/y", []byte("outside"))
	last := mustSet(ctx, t, s, "t/z", []byte("after"))
	evs, err := watchUntil(ctx, s, "t/", from, throughRev(last))
	if err != nil {
		t.Fatal(err)
	}
	type ev struct {
		typ kv.EventType
		key string
		val string
		rev uint64
	}
	var got []ev
	for _, e := range evs {
		got = append(got, ev{e.Type, e.Entry.Key, string(e.Entry.Value), e.Entry.ModRev})
	}
	want := []ev{
		{kv.EventPut, "t/b", "b1", res.Revision},
		{kv.EventDelete, "t/c", "", res.Revision},
		{kv.EventPut, "t/a", "a1", res.Revision},
		{kv.EventPut, "t/z", "after", last},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("events:\n got %v\nwant %v", got, want)
	}
	if a := evs[2].Entry; a.Version != 2 || a.CreateRev >= res.Revision || a.CreateRev == 0 {
		t.Errorf("put of t/a: %+v, want version 2 and its first write's CreateRev", a)
	}
	if d := evs[1].Entry; d.Value != nil || d.Version != 0 || d.CreateRev != 0 {
		t.Errorf("delete of t/c: %+v, want only Key and ModRev", d)
	}
	// An empty prefix watches everything.
	all, err := watchUntil(ctx, s, "", from, throughRev(last))
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 7 {
		t.Errorf("watch of every key: %d events, want 7 (t/b, tt, t/c, t/a, t, u/y, t/z): %v", len(all), all)
	}
}

// A Delete, a Txn's OpDelete, a lease's Revoke and its expiry, and the
// expiry of a TTL are delete events at the delete's revision.
func TestWatch_DeleteEvents(t *testing.T) {
	s, _ := openSingle(t, t.TempDir())
	defer s.Close()
	ctx := ctxT(t, 60*time.Second)
	from := mustSet(ctx, t, s, "d/plain", []byte("1"))
	if err := s.Delete(ctx, "d/plain"); err != nil {
		t.Fatal(err)
	}
	_, afterDelete, err := s.ListEntries(ctx, "d/")
	if err != nil {
		t.Fatal(err)
	}
	mustSet(ctx, t, s, "d/txn", []byte("1"))
	tres, err := s.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpDelete("d/txn")}})
	if err != nil {
		t.Fatal(err)
	}
	long, err := s.Grant(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	mustSet(ctx, t, s, "d/rev1", []byte("1"), kv.WithLease(long))
	mustSet(ctx, t, s, "d/rev2", []byte("2"), kv.WithLease(long))
	if err := s.Revoke(ctx, long); err != nil {
		t.Fatal(err)
	}
	_, afterRevoke, err := s.ListEntries(ctx, "d/")
	if err != nil {
		t.Fatal(err)
	}
	short, err := s.Grant(ctx, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	leasedRev := mustSet(ctx, t, s, "d/leased", []byte("1"), kv.WithLease(short))
	ttlRev := mustSet(ctx, t, s, "d/ttl", []byte("1"), kv.TTL(300*time.Millisecond))

	var dels []kv.Entry
	puts := map[string]kv.Entry{}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	_, err = watchUntil(wctx, s, "d/", from, func(ev kv.Event) bool {
		if ev.Type == kv.EventDelete {
			dels = append(dels, ev.Entry)
		} else {
			puts[ev.Entry.Key] = ev.Entry
		}
		return len(dels) == 6
	})
	if err != nil {
		t.Fatalf("%v: deletes %+v", err, dels)
	}
	want := []string{"d/plain", "d/txn", "d/rev1", "d/rev2", "d/leased", "d/ttl"}
	var keys []string
	for _, d := range dels {
		keys = append(keys, d.Key)
		if d.Value != nil {
			t.Errorf("delete of %s carries a value", d.Key)
		}
	}
	// The two expiries may come in either order (or together).
	if len(keys) == 6 && keys[4] == "d/ttl" {
		keys[4], keys[5] = keys[5], keys[4]
		dels[4], dels[5] = dels[5], dels[4]
	}
	if !reflect.DeepEqual(keys, want) {
		t.Fatalf("deletes %v, want %v", keys, want)
	}
	if r := dels[0].ModRev; r <= from || r > afterDelete {
		t.Errorf("Delete's event at %d, want in (%d, %d]", r, from, afterDelete)
	}
	if dels[1].ModRev != tres.Revision {
		t.Errorf("OpDelete's event at %d, want the Txn's revision %d", dels[1].ModRev, tres.Revision)
	}
	if dels[2].ModRev != dels[3].ModRev || dels[2].ModRev > afterRevoke || dels[2].ModRev <= puts["d/rev2"].ModRev {
		t.Errorf("Revoke's deletes at %d and %d, want one revision after the puts and by %d", dels[2].ModRev, dels[3].ModRev, afterRevoke)
	}
	if dels[4].ModRev <= leasedRev || dels[5].ModRev <= ttlRev {
		t.Errorf("expiry deletes at %d and %d, after puts at %d and %d", dels[4].ModRev, dels[5].ModRev, leasedRev, ttlRev)
	}
	for _, p := range puts {
		if p.Key == "d/leased" && p.Lease != short || p.Key == "d/ttl" && p.Lease == 0 || p.Key == "d/rev1" && p.Lease != long {
			t.Errorf("put %s: Lease %d", p.Key, p.Lease)
		}
	}
	// The expiry's revision is the store's: nothing else changed d/.
	for _, k := range []string{"d/leased", "d/ttl"} {
		if _, err := s.Get(ctx, k); !errors.Is(err, kv.ErrNotFound) {
			t.Errorf("%s after its delete event: %v", k, err)
		}
	}
}

// fromRev 0 is "from now": a write acknowledged before the watch began is
// not yielded, the writes after it are.
func TestWatch_FromZeroIsFromNow(t *testing.T) {
	s, _ := openSingle(t, t.TempDir())
	defer s.Close()
	ctx := ctxT(t, 30*time.Second)
	before := mustSet(ctx, t, s, "z/k", []byte("before"))
	got := make(chan kv.Event, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for ev, err := range s.Watch(wctx, "z/", 0) {
			if err == nil {
				got <- ev
			}
			return
		}
	}()
	for i := 0; ; i++ {
		mustSet(ctx, t, s, "z/k", []byte(fmt.Sprint("after", i)))
		select {
		case ev := <-got:
			if ev.Entry.ModRev <= before || string(ev.Entry.Value) == "before" {
				t.Fatalf("Watch(0) yielded %+v, acknowledged before it began (revision %d)", ev, before)
			}
			return
		case <-time.After(50 * time.Millisecond):
		}
		if i == 100 {
			t.Fatal("Watch(0) yielded nothing")
		}
	}
}

// ---------------------------------------------------------------------------
// 4. The bounded history.

// With WatchHistory.Revisions 10, a watch from a revision that is no longer
// kept ends at once with a *CompactedError that names the oldest revision
// kept; from that one, it yields exactly the last 10 revisions that changed
// a key.
func TestWatch_CompactedByRevisions(t *testing.T) {
	cfg := fastConfig(t, t.TempDir(), "solo", 1, nil)
	cfg.WatchHistory = kv.WatchHistory{Revisions: 10}
	s, err := kv.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := ctxT(t, 30*time.Second)
	if err := s.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	var revs []uint64
	for i := range 30 {
		revs = append(revs, mustSet(ctx, t, s, fmt.Sprintf("c/%02d", i), []byte("v")))
	}
	checkKept(ctx, t, s, revs, 10)
}

// checkKept checks that the history of s holds exactly the last n of the
// revisions revs (each written by one Txn, nothing else written between).
func checkKept(ctx context.Context, t *testing.T, s *kv.Store, revs []uint64, n int) {
	t.Helper()
	for _, from := range []uint64{1, revs[0], revs[len(revs)-n-1]} {
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		evs, err := watchUntil(wctx, s, "", from, nil)
		cancel()
		if len(evs) != 0 {
			t.Fatalf("watch from %d yielded %d events before its error %v; revisions kept should start after %d", from, len(evs), err, revs[len(revs)-n-1])
		}
		oldest := compacted(t, err, from)
		if oldest <= revs[len(revs)-n-1] || oldest > revs[len(revs)-n] {
			t.Errorf("CompactedError.Oldest = %d, want in (%d, %d]", oldest, revs[len(revs)-n-1], revs[len(revs)-n])
		}
	}
	_, err := watchUntil(ctx, s, "", 1, nil)
	oldest := compacted(t, err, 1)
	evs, err := watchUntil(ctx, s, "", oldest, throughRev(revs[len(revs)-1]))
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, ev := range evs {
		got = append(got, ev.Entry.ModRev)
	}
	if want := revs[len(revs)-n:]; !reflect.DeepEqual(got, want) {
		t.Fatalf("watch from the oldest revision kept (%d): revisions %v, want %v", oldest, got, want)
	}
}

// With a byte budget, the oldest revisions are dropped while the changes
// kept exceed it.
func TestWatch_CompactedByBytes(t *testing.T) {
	cfg := fastConfig(t, t.TempDir(), "solo", 1, nil)
	cfg.WatchHistory = kv.WatchHistory{Revisions: -1, Bytes: 4096}
	s, err := kv.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := ctxT(t, 30*time.Second)
	if err := s.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	var revs []uint64
	value := bytes.Repeat([]byte("b"), 600) // about 615 bytes a revision: 6 fit in 4096
	for i := range 30 {
		revs = append(revs, mustSet(ctx, t, s, fmt.Sprintf("b/%02d", i), value))
	}
	checkKept(ctx, t, s, revs, 6)
}

// A watch that starts within the history but lags (its body blocks) while
// the history moves past it ends with ErrCompacted once it reads on: it
// never skips a revision.
func TestWatch_LaggingWatcherFallsOut(t *testing.T) {
	cfg := fastConfig(t, t.TempDir(), "solo", 1, nil)
	cfg.WatchHistory = kv.WatchHistory{Revisions: 10}
	s, err := kv.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := ctxT(t, 30*time.Second)
	if err := s.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	first := mustSet(ctx, t, s, "lag/00", []byte("v"))
	got := make(chan kv.Event)
	release := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := watchUntil(ctx, s, "lag/", first, func(ev kv.Event) bool {
			got <- ev
			<-release
			return false
		})
		done <- err
	}()
	if ev := <-got; ev.Entry.ModRev != first {
		t.Fatalf("first event at %d, want %d", ev.Entry.ModRev, first)
	}
	var revs []uint64
	for i := 1; i <= 30; i++ {
		revs = append(revs, mustSet(ctx, t, s, fmt.Sprintf("lag/%02d", i), []byte("v")))
	}
	close(release)
	var seen []uint64
	for {
		select {
		case ev := <-got:
			seen = append(seen, ev.Entry.ModRev)
			continue
		case err := <-done:
			// Whatever it saw before it fell out is gapless from the start.
			if !reflect.DeepEqual(seen, revs[:len(seen)]) && len(seen) > 0 {
				t.Fatalf("the lagging watcher saw %v, not a gapless run from %d", seen, revs[0])
			}
			oldest := compacted(t, err, 0)
			var ce *kv.CompactedError
			errors.As(err, &ce)
			if lastSeen := lastOf(seen, first); ce.Rev <= lastSeen || ce.Rev >= oldest {
				t.Errorf("fell out at %d after %d, want a revision before the oldest kept, %d", ce.Rev, lastSeen, oldest)
			}
			if oldest <= revs[len(revs)-11] || oldest > revs[len(revs)-10] {
				t.Errorf("Oldest %d, want in (%d, %d]", oldest, revs[len(revs)-11], revs[len(revs)-10])
			}
			return
		}
	}
}

// Trimming is deterministic: members that applied the same writes, in
// batches of their own, one of them restarted (so that it serves from its
// data file alone), keep the same history, from the same oldest revision.
func TestWatch_TrimmingIsTheSameOnEveryMember(t *testing.T) {
	kc := kvtest.NewCluster(t, 3, kvtest.Logger(testLogger(t)), kvtest.Configure(func(i int, cfg *kv.Config) {
		cfg.WatchHistory = kv.WatchHistory{Revisions: 50, Bytes: 16 << 10}
	}))
	ctx := ctxT(t, 90*time.Second)
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := kc.Node(w % 3)
			rng := rand.New(rand.NewPCG(uint64(w), 3))
			for n := range 60 {
				key := fmt.Sprintf("tr/%02d", rng.IntN(20))
				var err error
				if rng.IntN(6) == 0 {
					err = s.Delete(ctx, key)
				} else {
					err = s.Set(ctx, key, bytes.Repeat([]byte{byte('a' + n%26)}, rng.IntN(1000)))
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	last := mustSet(ctx, t, kc.Node(kc.Leader()), "tr/~end", []byte("end"))
	kc.Restart(2)
	var ref []kv.Event
	var refOldest uint64
	for i := range 3 {
		s := kc.Node(i)
		if _, err := s.Get(ctx, "tr/~end"); err != nil { // caught up
			t.Fatal(err)
		}
		_, err := watchUntil(ctx, s, "", 1, nil)
		oldest := compacted(t, err, 1)
		evs, err := watchUntil(ctx, s, "", oldest, throughRev(last))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			ref, refOldest = evs, oldest
			t.Logf("history from %d: %d events up to %d", oldest, len(evs), last)
			continue
		}
		if oldest != refOldest {
			t.Errorf("node%d keeps history from %d, node0 from %d", i, oldest, refOldest)
		}
		if !reflect.DeepEqual(evs, ref) {
			t.Errorf("node%d's history (%d events) differs from node0's (%d events)", i, len(evs), len(ref))
		}
	}
}

// ---------------------------------------------------------------------------
// 5. The history across restarts, snapshots and restores.

// After Close and Open, a watch from an old revision yields every change
// from it on, from the data file.
func TestWatch_HistorySurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	s, cfg := openSingle(t, dir)
	ctx := ctxT(t, 30*time.Second)
	var revs []uint64
	for i := range 20 {
		revs = append(revs, mustSet(ctx, t, s, fmt.Sprintf("r/%02d", i), []byte(fmt.Sprint(i))))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := kv.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	evs, err := watchUntil(ctx, s, "r/", revs[5], throughRev(revs[19]))
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for i, ev := range evs {
		got = append(got, ev.Entry.ModRev)
		if want := fmt.Sprint(i + 5); string(ev.Entry.Value) != want {
			t.Errorf("event %d: value %q, want %q", i, ev.Entry.Value, want)
		}
	}
	if !reflect.DeepEqual(got, revs[5:]) {
		t.Fatalf("after a restart, watch from %d: revisions %v, want %v", revs[5], got, revs[5:])
	}
}

// A follower that catches up through a snapshot install serves a watch
// from a revision written while it was down, from the snapshot's history.
func TestWatch_HistoryInSnapshot(t *testing.T) {
	c := &cluster{t: t, dir: t.TempDir()}
	for i := 0; i < 3; i++ {
		var join []string
		if i > 0 {
			join = []string{c.nodes[0].GossipAddr()}
		}
		cfg := fastConfig(t, c.dir, fmt.Sprintf("n%d", i+1), 3, join)
		cfg.SnapshotThreshold = 64
		cfg.SnapshotInterval = 50 * time.Millisecond
		cfg.TrailingLogs = 16
		s, err := kv.Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, s)
		c.cfgs = append(c.cfgs, cfg)
	}
	t.Cleanup(c.closeAll)
	ctx := ctxT(t, 90*time.Second)
	f := c.followers()[0]
	if err := c.nodes[f].Close(); err != nil {
		t.Fatal(err)
	}
	c.nodes[f] = nil
	w := c.nodes[c.waitLeader()]
	var revs []uint64
	for i := range 300 {
		revs = append(revs, mustSet(ctx, t, w, fmt.Sprintf("snap/%03d", i), []byte(fmt.Sprint(i))))
	}
	for w.Stats().LastSnapshotIndex < revs[200] {
		if ctx.Err() != nil {
			t.Fatalf("leader took no snapshot: %+v", w.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.open(f)
	back := c.nodes[f]
	for st := back.Stats(); st.LastSnapshotIndex == 0; st = back.Stats() {
		if ctx.Err() != nil {
			t.Fatalf("the follower did not install a snapshot: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	evs, err := watchUntil(wctx, back, "snap/", revs[0], throughRev(revs[len(revs)-1]))
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, ev := range evs {
		got = append(got, ev.Entry.ModRev)
	}
	if !reflect.DeepEqual(got, revs) {
		t.Fatalf("watch on the follower from %d: %d revisions (first %v), want the %d written", revs[0], len(got), got[:min(3, len(got))], len(revs))
	}
}

// A Restore ends every watch that has not reached it with ErrCompacted (the
// restored data's changes are not in the history); a watch from after it
// yields the writes that follow.
func TestWatch_RestoreEndsWatches(t *testing.T) {
	s, _ := openSingle(t, t.TempDir())
	defer s.Close()
	ctx := ctxT(t, 30*time.Second)
	first := mustSet(ctx, t, s, "rs/a", []byte("1"))
	var backup bytes.Buffer
	if err := s.Backup(ctx, &backup); err != nil {
		t.Fatal(err)
	}
	last := mustSet(ctx, t, s, "rs/b", []byte("2"))
	done := make(chan error, 1)
	var seen atomic.Int64
	go func() {
		_, err := watchUntil(ctx, s, "rs/", first, func(kv.Event) bool { seen.Add(1); return false })
		done <- err
	}()
	for seen.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	if err := s.Restore(ctx, &backup); err != nil {
		t.Fatal(err)
	}
	var oldest uint64
	select {
	case err := <-done:
		oldest = compacted(t, err, 0)
		if oldest <= last {
			t.Errorf("after the restore the history starts at %d, at or before the last write %d", oldest, last)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the watch did not end at the restore")
	}
	_, err := watchUntil(ctx, s, "rs/", first, nil)
	if o := compacted(t, err, first); o != oldest {
		t.Errorf("Oldest after the restore: %d, then %d", oldest, o)
	}
	next := mustSet(ctx, t, s, "rs/c", []byte("3"))
	evs, err := watchUntil(ctx, s, "rs/", oldest, throughRev(next))
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Entry.ModRev != next {
		t.Fatalf("after the restore, watch from %d: %+v, want the one write at %d", oldest, evs, next)
	}
}

// ---------------------------------------------------------------------------
// 6. A stalled watcher.

// A watcher whose body blocks while megabytes of changes are written (more
// than the memory a member keeps for watchers) gets every one of them, in
// order, once it reads on: from the change log.
func TestWatch_StalledWatcherGetsEverything(t *testing.T) {
	s, _ := openSingle(t, t.TempDir())
	defer s.Close()
	ctx := ctxT(t, 120*time.Second)
	value := bytes.Repeat([]byte("s"), 48<<10)
	first := mustSet(ctx, t, s, "st/000", value)
	got := make(chan uint64, 1)
	release := make(chan struct{})
	type result struct {
		evs []kv.Event
		err error
	}
	done := make(chan result, 1)
	var last atomic.Uint64
	go func() {
		n := 0
		evs, err := watchUntil(ctx, s, "st/", first, func(ev kv.Event) bool {
			if n++; n == 1 {
				got <- ev.Entry.ModRev
				<-release
			}
			l := last.Load()
			return l != 0 && ev.Entry.ModRev >= l
		})
		done <- result{evs, err}
	}()
	<-got
	revs := []uint64{first}
	start := time.Now()
	for i := 1; i < 400; i++ { // 19 MiB
		revs = append(revs, mustSet(ctx, t, s, fmt.Sprintf("st/%03d", i), value))
	}
	t.Logf("400 writes of 48 KiB with a stalled watcher: %v", time.Since(start))
	last.Store(revs[len(revs)-1])
	close(release)
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the stalled watcher did not get every change within 30 s of reading on")
	}
	if r.err != nil {
		t.Fatalf("%v after %d events", r.err, len(r.evs))
	}
	var gotRevs []uint64
	for i, ev := range r.evs {
		gotRevs = append(gotRevs, ev.Entry.ModRev)
		if !bytes.Equal(ev.Entry.Value, value) || ev.Entry.Key != fmt.Sprintf("st/%03d", i) {
			t.Fatalf("event %d: %s with %d bytes", i, ev.Entry.Key, len(ev.Entry.Value))
		}
	}
	if !reflect.DeepEqual(gotRevs, revs) {
		t.Fatalf("the stalled watcher got %d revisions, want %d", len(gotRevs), len(revs))
	}
}

// ---------------------------------------------------------------------------
// 7. How a watch ends.

// A watch ends with ErrClosed when the Store closes, with the ctx's error
// when it ends, and at once with ErrClosed on a closed Store.
func TestWatch_EndsOnCloseAndCancel(t *testing.T) {
	s, _ := openSingle(t, t.TempDir())
	ctx := ctxT(t, 30*time.Second)
	mustSet(ctx, t, s, "e/k", []byte("v"))

	cctx, cancel := context.WithCancel(ctx)
	canceled := make(chan error, 1)
	go func() {
		_, err := watchUntil(cctx, s, "e/", 0, nil)
		canceled <- err
	}()
	closed := make(chan error, 1)
	go func() {
		_, err := watchUntil(ctx, s, "e/", 1, nil)
		closed <- err
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case err := <-canceled:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("after cancel: %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the watch did not end when its ctx did")
	}
	dctx, dcancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer dcancel()
	if _, err := watchUntil(dctx, s, "e/", 0, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("after the deadline: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-closed:
		if !errors.Is(err, kv.ErrClosed) {
			t.Errorf("after Close: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the watch did not end when the Store closed")
	}
	if evs, err := watchUntil(ctx, s, "e/", 1, nil); len(evs) != 0 || !errors.Is(err, kv.ErrClosed) {
		t.Errorf("watch on a closed Store: %d events, %v", len(evs), err)
	}
	// Breaking out of the loop ends the watch; nothing runs on (the
	// package's TestMain looks for leaked goroutines).
	for range s.Watch(ctx, "", 1) {
		break
	}
}
