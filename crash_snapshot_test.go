package kv_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"hash/fnv"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/internal/storage"
)

// These tests kill -9 real child processes (see runCrashChild) while a
// snapshot is being written and while a snapshot is being installed, then
// restart them on the same DataDir and check that every acknowledged write
// is there, on every member, and that the members hold the same data.
//
// "While" is read from the filesystem: raft's FileSnapshotStore writes a
// snapshot into DataDir/snapshots/<id>.tmp and renames it when complete, and
// the data engine restores a snapshot into DataDir/data.db.restore before it
// renames that over data.db. A .tmp directory (or data.db.restore) still
// there after the process is dead proves the kill landed mid-way.
//
// The children log to a file each (shown when a test fails); set
// KV_SNAPTEST_LOGDIR to keep those files in a directory of your choice.

// snapCluster is three voters in child processes, with small snapshot
// settings and an inspection server each, and this process as a non-voting
// in-memory member that writes.
type snapCluster struct {
	t     *testing.T
	start time.Time
	dir   string
	env   []string
	kids  map[string]*child
	ids   []string
	me    *kv.Store
	hc    *http.Client
}

func newSnapCluster(t *testing.T, prefix string, threshold, trailing uint64, interval time.Duration) *snapCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("starts child processes")
	}
	c := &snapCluster{t: t, start: time.Now(), dir: t.TempDir(), kids: map[string]*child{}}
	c.env = []string{
		"KV_CRASH_HTTP=1",
		fmt.Sprintf("KV_CRASH_SNAPSHOT_THRESHOLD=%d", threshold),
		fmt.Sprintf("KV_CRASH_TRAILING_LOGS=%d", trailing),
		"KV_CRASH_SNAPSHOT_INTERVAL=" + interval.String(),
	}
	var seeds []string
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("%s%d", prefix, i)
		k := startChildEnv(t, id, filepath.Join(c.dir, id), 3, seeds, c.childEnv(id))
		c.kids[id] = k
		c.ids = append(c.ids, id)
		seeds = append(seeds, k.gossip)
	}
	c.hc = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 20 * time.Second}
	t.Cleanup(c.hc.CloseIdleConnections)
	me, err := kv.Open(kv.Config{NodeID: "driver", InMemory: true, Join: seeds, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	c.me = me
	t.Cleanup(func() { me.Close() })
	t.Cleanup(func() {
		if t.Failed() {
			c.logTails(200)
		}
	})
	c.leader(30 * time.Second)
	return c
}

// logf is t.Logf with the time since the cluster started.
func (c *snapCluster) logf(format string, args ...any) {
	c.t.Helper()
	c.t.Logf("[%4.1fs] "+format, append([]any{time.Since(c.start).Seconds()}, args...)...)
}

func (c *snapCluster) childEnv(id string) []string {
	return append([]string{"KV_CRASH_LOG=" + c.logPath(id)}, c.env...)
}

func (c *snapCluster) logPath(id string) string {
	if d := os.Getenv("KV_SNAPTEST_LOGDIR"); d != "" {
		return filepath.Join(d, c.t.Name()+"-"+id+".log")
	}
	return filepath.Join(c.dir, id+".log")
}

// seeds is the gossip addresses of the driver and of every running (and
// ready) child but id.
func (c *snapCluster) seeds(id string) []string {
	out := []string{c.me.GossipAddr()}
	for kid, k := range c.kids {
		if kid != id && k.cmd.ProcessState == nil && k.gossip != "" {
			out = append(out, k.gossip)
		}
	}
	return out
}

// restart starts child id again on its DataDir and waits until it is ready.
func (c *snapCluster) restart(id string) *child {
	c.t.Helper()
	k := startChildEnv(c.t, id, c.kids[id].dir, 3, c.seeds(id), c.childEnv(id))
	c.kids[id] = k
	return k
}

// restartAll starts the given children again, all at once, and waits until
// they are ready.
func (c *snapCluster) restartAll(ids ...string) {
	c.t.Helper()
	lines := map[string]<-chan string{}
	for _, id := range ids {
		c.kids[id], lines[id] = spawnChild(c.t, id, c.kids[id].dir, 3, c.seeds(id), c.childEnv(id))
	}
	for _, id := range ids {
		c.kids[id].waitReady(c.t, lines[id], 30*time.Second)
	}
}

// leader waits until the driver knows a leader, which is a child.
func (c *snapCluster) leader(timeout time.Duration) *child {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if k := c.kids[c.me.Stats().Leader]; k != nil && k.cmd.ProcessState == nil {
			return k
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("no leader among the children within %v (driver sees %+v)", timeout, c.me.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (c *snapCluster) stats(k *child) (kv.Stats, error) {
	var st kv.Stats
	resp, err := c.hc.Get("http://" + k.http + "/stats")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st, err
}

// dumpEntry is what the inspection server reports of a value.
type dumpEntry struct {
	n    int
	crc  uint32
	head string
}

func dumpEntryOf(v []byte) dumpEntry {
	head := v
	if i := bytes.IndexByte(head, '|'); i >= 0 {
		head = head[:i]
	}
	if len(head) > 64 {
		head = head[:64]
	}
	return dumpEntry{n: len(v), crc: crc32.Checksum(v, crashCRCTable), head: string(head)}
}

// dump reads every pair of child k, linearizably or (stale) from its local
// state.
func (c *snapCluster) dump(k *child, stale bool) (uint64, map[string]dumpEntry, error) {
	url := "http://" + k.http + "/dump"
	if stale {
		url += "?stale=1"
	}
	resp, err := c.hc.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	if !sc.Scan() {
		return 0, nil, fmt.Errorf("empty dump: %v", sc.Err())
	}
	if resp.StatusCode != http.StatusOK {
		return 0, nil, fmt.Errorf("dump: %s: %s", resp.Status, sc.Text())
	}
	var applied uint64
	if _, err := fmt.Sscanf(sc.Text(), "applied %d", &applied); err != nil {
		return 0, nil, fmt.Errorf("dump header %q: %v", sc.Text(), err)
	}
	got := map[string]dumpEntry{}
	complete := false
	for sc.Scan() {
		if n := 0; !complete && strings.HasPrefix(sc.Text(), "end ") {
			fmt.Sscanf(sc.Text(), "end %d", &n)
			if n != len(got) {
				return 0, nil, fmt.Errorf("dump of %d pairs says %q", len(got), sc.Text())
			}
			complete = true
			continue
		}
		f := strings.Split(sc.Text(), "\t")
		if len(f) != 4 {
			return 0, nil, fmt.Errorf("dump line %q", sc.Text())
		}
		n, err1 := strconv.Atoi(f[1])
		crc, err2 := strconv.ParseUint(f[2], 16, 32)
		if err1 != nil || err2 != nil {
			return 0, nil, fmt.Errorf("dump line %q", sc.Text())
		}
		got[f[0]] = dumpEntry{n: n, crc: uint32(crc), head: f[3]}
	}
	if err := sc.Err(); err != nil {
		return 0, nil, fmt.Errorf("dump: %w", err)
	}
	if !complete {
		return 0, nil, fmt.Errorf("dump of %d pairs cut short", len(got))
	}
	return applied, got, nil
}

// driverDump is dump for the driver's own Store.
func (c *snapCluster) driverDump(ctx context.Context, opts ...kv.ReadOption) (map[string]dumpEntry, error) {
	pairs, err := c.me.List(ctx, "", opts...)
	if err != nil {
		return nil, err
	}
	got := map[string]dumpEntry{}
	for _, p := range pairs {
		got[p.Key] = dumpEntryOf(p.Value)
	}
	return got, nil
}

const crashBarrierKey = "barrier"

// verify checks, with no writes in flight, that every acknowledged write is
// there and nothing else: linearizable reads on the driver and on every
// child, then, after a barrier write that every member has applied, the
// local state of every member, which must be identical.
func (c *snapCluster) verify(ctx context.Context, w *crashWorkload, label string) {
	c.t.Helper()
	retry := func(what string, f func() error) {
		c.t.Helper()
		start := time.Now()
		deadline := start.Add(30 * time.Second)
		var err, last error
		for {
			if err = f(); err == nil {
				if d := time.Since(start); d > 3*time.Second {
					// Not a failure (the guarantees say nothing about
					// latency), but worth seeing: see the children's logs.
					c.logf("%s: SLOW: %s took %v (last error: %v)", label, what, d.Round(time.Millisecond), last)
				}
				return
			}
			last = err
			if time.Now().After(deadline) || ctx.Err() != nil {
				c.t.Fatalf("%s: %s: %v", label, what, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	var got map[string]dumpEntry
	retry("linearizable List on the driver", func() (err error) {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		got, err = c.driverDump(rctx)
		return err
	})
	c.report(label, "driver (linearizable)", w.check(got))
	applied := map[string]uint64{}
	for _, id := range c.ids {
		k := c.kids[id]
		retry("linearizable List on "+id, func() (err error) {
			applied[id], got, err = c.dump(k, false)
			return err
		})
		c.report(label, id+" (linearizable)", w.check(got))
	}

	nonce := fmt.Sprintf("%s#%d", crashBarrierKey, time.Now().UnixNano())
	retry("barrier write", func() error {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return c.me.Set(wctx, crashBarrierKey, []byte(nonce+"|"))
	})
	stale := map[string]map[string]dumpEntry{}
	for _, id := range c.ids {
		k := c.kids[id]
		retry("barrier on "+id, func() (err error) {
			var m map[string]dumpEntry
			applied[id], m, err = c.dump(k, true)
			if err == nil && m[crashBarrierKey].head != nonce {
				err = fmt.Errorf("barrier not applied yet (applied index %d)", applied[id])
			}
			stale[id] = m
			return err
		})
	}
	retry("barrier on the driver", func() (err error) {
		m, err := c.driverDump(ctx, kv.Stale())
		if err == nil && m[crashBarrierKey].head != nonce {
			err = fmt.Errorf("barrier not applied yet")
		}
		stale["driver"] = m
		return err
	})
	ref := c.ids[0]
	for id, m := range stale {
		c.report(label, id+" (stale, after the barrier)", w.check(m))
		if id != ref {
			if d := diffDumps(stale[ref], m); len(d) > 0 {
				c.failWithLogs(fmt.Sprintf("%s: %s and %s differ after the barrier: %s", label, ref, id, strings.Join(d, "; ")))
			}
		}
	}
	c.logf("%s: %d keys, all %d acknowledged operations present on every member, members identical (applied %v)",
		label, len(stale[ref])-1, w.ok.Load(), applied)
}

func (c *snapCluster) report(label, where string, problems []string) {
	c.t.Helper()
	if len(problems) > 0 {
		if len(problems) > 20 {
			problems = append(problems[:20], fmt.Sprintf("... and %d more", len(problems)-20))
		}
		c.failWithLogs(fmt.Sprintf("%s: %s:\n  %s", label, where, strings.Join(problems, "\n  ")))
	}
}

// failWithLogs fails the test; the cleanup shows the children's logs.
func (c *snapCluster) failWithLogs(msg string) {
	c.t.Helper()
	c.t.Fatal(msg)
}

// logTails logs the last n lines of every child's log.
func (c *snapCluster) logTails(n int) {
	for _, id := range c.ids {
		b, _ := os.ReadFile(c.logPath(id))
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		c.t.Logf("--- last lines of %s's log:\n%s", id, strings.Join(lines, "\n"))
	}
}

func diffDumps(a, b map[string]dumpEntry) []string {
	var out []string
	for k, e := range a {
		if f, ok := b[k]; !ok {
			out = append(out, fmt.Sprintf("%s only on the first (%s)", k, e.head))
		} else if f != e {
			out = append(out, fmt.Sprintf("%s: %s vs %s", k, e.head, f.head))
		}
	}
	for k, e := range b {
		if _, ok := a[k]; !ok {
			out = append(out, fmt.Sprintf("%s only on the second (%s)", k, e.head))
		}
	}
	sort.Strings(out)
	if len(out) > 10 {
		out = append(out[:10], fmt.Sprintf("... %d differences", len(out)))
	}
	return out
}

// crashWorkload writes a fixed key space through the driver: every key is
// written by one goroutine only, one operation at a time, each operation
// numbered (seq) per key; every fifth one is a Delete, the others Set a
// value derived from the key and seq. It records which operations were
// acknowledged, and which failed (those may or may not have been applied,
// possibly later: their outcome is unknown).
type crashWorkload struct {
	size    int
	writers int

	mu   sync.Mutex
	keys []crashKeyState

	ok, failed atomic.Int64
	errMu      sync.Mutex
	errs       map[string]int
}

type crashKeyState struct {
	seq    int          // the last operation issued
	acked  int          // the last acknowledged operation; 0 when none
	unsure map[int]bool // failed operations
}

func newWorkload(keys, size, writers int) *crashWorkload {
	return &crashWorkload{size: size, writers: writers, keys: make([]crashKeyState, keys), errs: map[string]int{}}
}

func wlKey(i int) string                { return fmt.Sprintf("k/%05d", i) }
func wlIsDelete(seq int) bool           { return seq%5 == 0 }
func wlHead(key string, seq int) string { return fmt.Sprintf("%s#%d", key, seq) }

// wlValue is the value of operation seq on key: its head, '|', and bytes
// that depend on both.
func wlValue(key string, seq, size int) []byte {
	b := make([]byte, size)
	n := copy(b, wlHead(key, seq)+"|")
	h := fnv.New64a()
	h.Write([]byte(key))
	x := h.Sum64() ^ uint64(seq)*0x9E3779B97F4A7C15 | 1
	var w [8]byte
	for i := n; i < size; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(w[:], x)
		copy(b[i:], w[:])
	}
	return b
}

func (w *crashWorkload) op(ctx context.Context, me *kv.Store, i int) {
	w.mu.Lock()
	st := &w.keys[i]
	st.seq++
	seq := st.seq
	w.mu.Unlock()
	key := wlKey(i)
	octx, cancel := context.WithTimeout(ctx, 10*time.Second)
	var err error
	if wlIsDelete(seq) {
		err = me.Delete(octx, key)
	} else {
		err = me.Set(octx, key, wlValue(key, seq, w.size))
	}
	cancel()
	w.mu.Lock()
	if err == nil {
		st.acked = seq
	} else {
		if st.unsure == nil {
			st.unsure = map[int]bool{}
		}
		st.unsure[seq] = true
	}
	w.mu.Unlock()
	if err == nil {
		w.ok.Add(1)
	} else {
		w.failed.Add(1)
		w.errMu.Lock()
		w.errs[err.Error()]++
		w.errMu.Unlock()
	}
}

// pass writes every key once, with n goroutines.
func (w *crashWorkload) pass(ctx context.Context, me *kv.Store, n int) {
	var wg sync.WaitGroup
	for g := 0; g < n; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < len(w.keys) && ctx.Err() == nil; i += n {
				w.op(ctx, me, i)
			}
		}()
	}
	wg.Wait()
}

// start writes the key space round and round until stop is closed; the
// returned channel is closed once every operation has returned.
func (w *crashWorkload) start(ctx context.Context, me *kv.Store, stop <-chan struct{}) <-chan struct{} {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < w.writers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; ctx.Err() == nil; i += w.writers {
				select {
				case <-stop:
					return
				default:
				}
				w.op(ctx, me, i%len(w.keys))
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	return done
}

// check compares a member's pairs with what was acknowledged: a key holds
// the value of its last acknowledged operation (absent for a Delete), or of
// a later operation whose outcome is unknown, with the right bytes; no
// other key exists. A failed operation that took effect after a later one
// was acknowledged would undo an acknowledged write: that is reported too.
func (w *crashWorkload) check(got map[string]dumpEntry) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var problems []string
	for i, st := range w.keys {
		key := wlKey(i)
		e, present := got[key]
		if !present {
			ok := st.acked == 0 || wlIsDelete(st.acked)
			for seq := range st.unsure {
				ok = ok || wlIsDelete(seq) && seq > st.acked
			}
			if !ok {
				problems = append(problems, fmt.Sprintf("acknowledged %s is missing (unknown outcome: %v)", wlHead(key, st.acked), sortedSeqs(st.unsure)))
			}
			continue
		}
		k, seqStr, _ := strings.Cut(e.head, "#")
		seq, err := strconv.Atoi(seqStr)
		if k != key || err != nil {
			problems = append(problems, fmt.Sprintf("%s holds a value headed %q", key, e.head))
			continue
		}
		if wlIsDelete(seq) || seq != st.acked && !(st.unsure[seq] && seq > st.acked) {
			problems = append(problems, fmt.Sprintf("%s holds %s but the last acknowledged operation is #%d (unknown outcome: %v)", key, e.head, st.acked, sortedSeqs(st.unsure)))
			continue
		}
		if want := dumpEntryOf(wlValue(key, seq, w.size)); e != want {
			problems = append(problems, fmt.Sprintf("%s: damaged value for %s: %d bytes crc %08x, want %d bytes crc %08x", key, e.head, e.n, e.crc, want.n, want.crc))
		}
	}
	for k := range got {
		if k == crashBarrierKey {
			continue
		}
		if i, err := strconv.Atoi(strings.TrimPrefix(k, "k/")); err != nil || !strings.HasPrefix(k, "k/") || i < 0 || i >= len(w.keys) || wlKey(i) != k {
			problems = append(problems, fmt.Sprintf("unexpected key %q", k))
		}
	}
	sort.Strings(problems)
	return problems
}

func (w *crashWorkload) summary() string {
	w.errMu.Lock()
	defer w.errMu.Unlock()
	var errs []string
	for e, n := range w.errs {
		errs = append(errs, fmt.Sprintf("%dx %s", n, e))
	}
	sort.Strings(errs)
	return fmt.Sprintf("%d operations acknowledged, %d failed %v", w.ok.Load(), w.failed.Load(), errs)
}

func sortedSeqs(m map[int]bool) []int {
	var out []int
	for s := range m {
		out = append(out, s)
	}
	sort.Ints(out)
	return out
}

// snapshotTmps lists the snapshot directories in progress in a DataDir.
func snapshotTmps(dir string) map[string]bool {
	out := map[string]bool{}
	ents, _ := os.ReadDir(filepath.Join(dir, "snapshots"))
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".tmp") {
			out[e.Name()] = true
		}
	}
	return out
}

// newSnapshotTmp returns a snapshot directory in progress in dir that is not
// in known, or "".
func newSnapshotTmp(dir string, known map[string]bool) string {
	for name := range snapshotTmps(dir) {
		if !known[name] {
			return name
		}
	}
	return ""
}

// snapshotMeta reads the meta.json of a snapshot directory.
func snapshotMeta(dir, name string) (index uint64, err error) {
	b, err := os.ReadFile(filepath.Join(dir, "snapshots", name, "meta.json"))
	if err != nil {
		return 0, err
	}
	var m struct{ Index uint64 }
	err = json.Unmarshal(b, &m)
	return m.Index, err
}

func sizeOf(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return -1
	}
	return fi.Size()
}

func pathExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// dataApplied opens the data file of a dead child and returns the index it
// reflects: the file opens, and says how far it is.
func dataApplied(t *testing.T, dir string) uint64 {
	t.Helper()
	e, err := storage.OpenBolt(filepath.Join(dir, "data.db"), storage.BoltOptions{})
	if err != nil {
		t.Fatalf("data file of a killed child does not open: %v", err)
	}
	defer e.Close()
	return e.AppliedIndex()
}

// lastIndex is the last index in the Raft log or snapshots of a dead child.
func lastIndex(t *testing.T, dir string) uint64 {
	t.Helper()
	ls, err := storage.OpenLogStore(filepath.Join(dir, "raft.db"), storage.LogStoreOptions{})
	if err != nil {
		t.Fatalf("raft log of a killed child does not open: %v", err)
	}
	defer ls.Close()
	last, err := ls.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	snap, _ := newestSnapshot(t, dir)
	return max(last, snap)
}

// newestSnapshot returns the Raft index of the newest complete snapshot in
// dir, and the index its data reflects (from the stream's header; it can be
// lower when the last entries were not commands).
func newestSnapshot(t *testing.T, dir string) (index, dataIndex uint64) {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(dir, "snapshots"))
	var newest string
	for _, e := range ents {
		if !e.IsDir() || strings.HasSuffix(e.Name(), ".tmp") {
			continue
		}
		i, err := snapshotMeta(dir, e.Name())
		if err != nil {
			t.Fatalf("complete snapshot %s: %v", e.Name(), err)
		}
		if newest == "" || i > index {
			newest, index = e.Name(), i
		}
	}
	if newest == "" {
		return 0, 0
	}
	f, err := os.Open(filepath.Join(dir, "snapshots", newest, "state.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var hdr [17]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil || string(hdr[:8]) != "cohortkv" {
		t.Fatalf("complete snapshot %s: header %q: %v", newest, hdr, err)
	}
	return index, binary.BigEndian.Uint64(hdr[9:])
}

// kill -9 of a member while it writes a snapshot (the leader, a follower,
// then every member at once, while writes go on through the driver) loses no
// acknowledged write; the members restart from their files, catch up and
// hold the same data.
func TestCrash_KillNineDuringSnapshot(t *testing.T) {
	c := newSnapCluster(t, "s", 128, 64, 100*time.Millisecond)
	ctx := ctxT(t, 3*time.Minute)
	w := newWorkload(400, 8<<10, 8)
	start := time.Now()
	w.pass(ctx, c.me, 32)
	c.logf("preloaded %d keys of %d bytes in %v: %s", len(w.keys), w.size, time.Since(start).Round(time.Millisecond), w.summary())

	// Round 0 kills the leader as soon as its snapshot directory appears,
	// round 1 a follower once its snapshot has written 512 KiB, round 2
	// every member at once once the leader's snapshot has written 2 MiB.
	const rounds = 3
	hits := 0
	for r := 0; r < rounds; r++ {
		leader := c.leader(30 * time.Second)
		target, role := leader, "leader"
		if r == 2 {
			role = "leader, and every other member with it"
		}
		if r == 1 {
			role = "follower"
			for _, id := range c.ids {
				if id != leader.id {
					target = c.kids[id]
					break
				}
			}
		}
		// Kill once a snapshot in progress has written this much of its
		// state (it may have completed first).
		atLeast := []int64{0, 512 << 10, 2 << 20}[r]
		known := snapshotTmps(target.dir)
		stop := make(chan struct{})
		done := w.start(ctx, c.me, stop)
		tmp, size := "", int64(-1)
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
			if tmp == "" {
				tmp = newSnapshotTmp(target.dir, known)
			}
			if tmp != "" {
				dir := filepath.Join(target.dir, "snapshots", tmp)
				size = sizeOf(filepath.Join(dir, "state.bin"))
				if size >= atLeast || !pathExists(dir) {
					break
				}
			}
		}
		target.kill()
		if r == 2 {
			for _, id := range c.ids {
				c.kids[id].kill()
			}
		}
		switch dir := filepath.Join(target.dir, "snapshots", tmp); {
		case tmp == "":
			c.logf("round %d: no snapshot seen on %s (%s) within 15 s; killed it anyway", r, target.id, role)
		case pathExists(dir):
			hits++
			c.logf("round %d: killed %s (%s) while it wrote snapshot %s (state.bin %d bytes, target %d)",
				r, target.id, role, tmp, sizeOf(filepath.Join(dir, "state.bin")), atLeast)
		default:
			c.logf("round %d: killed %s (%s) after snapshot %s completed (target %d bytes, seen %d)", r, target.id, role, tmp, atLeast, size)
		}
		// Writes go on through the failover and while it restarts.
		time.Sleep(300 * time.Millisecond)
		if r == 2 {
			c.restartAll(c.ids...)
		} else {
			c.restart(target.id)
		}
		time.Sleep(300 * time.Millisecond)
		close(stop)
		<-done
		c.verify(ctx, w, fmt.Sprintf("round %d", r))
	}
	leftovers := 0
	for _, id := range c.ids {
		leftovers += len(snapshotTmps(c.kids[id].dir))
	}
	c.logf("%d of %d kills landed mid-snapshot; %d unfinished snapshot directories are left in the DataDirs; %s",
		hits, rounds, leftovers, w.summary())
	if hits == 0 {
		t.Errorf("no kill landed while a snapshot was in progress")
	}
}

// kill -9 of a follower while the leader installs a snapshot on it, at each
// step of the install: (1) while the snapshot is received, (2) while the
// data file is rebuilt from it, (3) while the data file is rebuilt from the
// received snapshot when the follower starts again, and (4) right after the
// rebuilt data file replaced the old one, with writes going on. Each time it
// restarts from its files, and in the end it holds exactly the others' data,
// with every acknowledged write.
func TestCrash_KillNineDuringSnapshotInstall(t *testing.T) {
	const trailing = 32
	c := newSnapCluster(t, "i", 64, trailing, 100*time.Millisecond)
	ctx := ctxT(t, 3*time.Minute)
	w := newWorkload(400, 8<<10, 8)
	start := time.Now()
	w.pass(ctx, c.me, 32)
	c.logf("preloaded %d keys of %d bytes in %v: %s", len(w.keys), w.size, time.Since(start).Round(time.Millisecond), w.summary())

	leader := c.leader(30 * time.Second)
	var f *child
	for _, id := range c.ids {
		if id != leader.id {
			f = c.kids[id]
			break
		}
	}

	// fallBehind kills f and writes until the leader has compacted its log
	// past f's last entry, so that f can only catch up through a snapshot.
	// The writes go on until the returned function is called.
	fallBehind := func() (stopWriting func()) {
		t.Helper()
		if f.cmd.ProcessState == nil {
			f.kill()
		}
		fLast := lastIndex(t, f.dir)
		stop := make(chan struct{})
		done := w.start(ctx, c.me, stop)
		stopWriting = func() { close(stop); <-done }
		deadline := time.Now().Add(20 * time.Second)
		var lst kv.Stats
		for {
			time.Sleep(20 * time.Millisecond)
			var err error
			if lst, err = c.stats(c.leader(30 * time.Second)); err == nil && lst.LastSnapshotIndex > fLast+trailing+16 {
				break
			}
			if time.Now().After(deadline) {
				stopWriting()
				t.Fatalf("the leader did not compact past index %d within 20 s: %+v, %v", fLast, lst, err)
			}
		}
		c.logf("%s is at index %d; the leader's snapshot is at %d", f.id, fLast, lst.LastSnapshotIndex)
		return stopWriting
	}

	// watch restarts f and kills it as soon as hit reports true; it returns
	// whether it did before timeout, and whether f had printed READY.
	watch := func(what string, hit func() bool) (killed, ready bool) {
		t.Helper()
		k, lines := spawnChild(t, f.id, f.dir, 3, c.seeds(f.id), c.childEnv(f.id))
		f, c.kids[f.id] = k, k
		deadline := time.Now().Add(20 * time.Second)
		var line string
		for time.Now().Before(deadline) && k.cmd.ProcessState == nil {
			if hit() {
				k.kill()
				killed = true
				break
			}
			select {
			case l, ok := <-lines:
				if ok && line == "" {
					line = l
					ready = strings.HasPrefix(l, "READY")
					if !ready {
						t.Fatalf("%s did not start: %q", f.id, l)
					}
				}
			default:
			}
			time.Sleep(time.Millisecond)
		}
		if !killed {
			k.kill()
			c.logf("%s: not seen on %s within 20 s; killed it anyway", what, f.id)
		}
		return killed, ready
	}

	// 1. kill -9 while the snapshot is being received.
	fallBehind()()
	fLast := lastIndex(t, f.dir)
	known := snapshotTmps(f.dir)
	tmp := ""
	killed, _ := watch("a snapshot being received", func() bool {
		if tmp = newSnapshotTmp(f.dir, known); tmp == "" {
			return false
		}
		i, err := snapshotMeta(f.dir, tmp)
		if err != nil {
			tmp = "" // meta.json is being written
			return false
		}
		if i <= fLast {
			// f's own snapshot of what it has, not the leader's.
			known[tmp], tmp = true, ""
			return false
		}
		return sizeOf(filepath.Join(f.dir, "snapshots", tmp, "state.bin")) > 0
	})
	midReceive := killed && tmp != "" && pathExists(filepath.Join(f.dir, "snapshots", tmp))
	if midReceive {
		c.logf("1: killed %s while it received snapshot %s (state.bin %d bytes so far)", f.id, tmp, sizeOf(filepath.Join(f.dir, "snapshots", tmp, "state.bin")))
	} else {
		c.logf("1: the kill of %s did not land while it received a snapshot (%q)", f.id, tmp)
	}

	// 2. kill -9 while the data file is rebuilt from the received snapshot.
	// If f caught up in step 1 after all, make it fall behind again.
	if applied := dataApplied(t, f.dir); applied > fLast {
		fallBehind()()
	}
	// Kill once the new data file has 1 MiB (or at once if it is renamed
	// into place before that).
	restoreFile := filepath.Join(f.dir, "data.db.restore")
	seen := false
	killed, _ = watch("a data file being rebuilt from a received snapshot", func() bool {
		n := sizeOf(restoreFile)
		hit := n >= 1<<20 || seen && n < 0
		seen = seen || n >= 0
		return hit
	})
	restoreSize := sizeOf(restoreFile)
	midRestore := killed && restoreSize >= 0
	snapIdx, snapData := newestSnapshot(t, f.dir)
	dataIdx := dataApplied(t, f.dir)
	if midRestore {
		c.logf("2: killed %s while it rebuilt its data file (data.db.restore %d bytes); its data file is at index %d, its newest snapshot at %d",
			f.id, restoreSize, dataIdx, snapIdx)
	} else {
		c.logf("2: the kill of %s did not land while it rebuilt its data file; its data file is at %d, its newest snapshot at %d", f.id, dataIdx, snapIdx)
	}

	// 3. kill -9 while the data file is rebuilt from that snapshot at start
	// (Open restores the newest snapshot when the data file is behind it).
	// dataApplied opened the data file, which removed data.db.restore.
	midOpen := false
	if snapIdx > dataIdx {
		killed, ready := watch("a data file being rebuilt at start", func() bool { return pathExists(restoreFile) })
		restoreSize := sizeOf(restoreFile)
		midOpen = killed && !ready && restoreSize >= 0
		c.logf("3: killed %s while it rebuilt its data file at start: %v (data.db.restore %d bytes, READY printed: %v)", f.id, midOpen, restoreSize, ready)
		// The rebuild is all or nothing.
		if d := dataApplied(t, f.dir); d != dataIdx && d != snapData {
			t.Errorf("3: data file at index %d after the kill; it was at %d, the snapshot's data at %d", d, dataIdx, snapData)
		}
	} else {
		c.logf("3: skipped, %s's data file is not behind its newest snapshot", f.id)
	}

	// f comes back, catches up and holds exactly the others' data.
	f = c.restart(f.id)
	c.verify(ctx, w, "after the install")

	// 4. Again, with writes going on, kill -9 right after the new data file
	// replaced the old one, before or while raft compacts f's log and
	// records the install.
	stopWriting := fallBehind()
	seen = false
	killed, _ = watch("the end of a data file rebuild", func() bool {
		n := sizeOf(restoreFile)
		seen = seen || n >= 0
		return seen && n < 0
	})
	stopWriting()
	snapIdx, snapData = newestSnapshot(t, f.dir)
	dataIdx = dataApplied(t, f.dir)
	afterSwap := killed && seen
	c.logf("4: killed %s right after its data file was rebuilt: %v; its data file is at index %d, its newest snapshot at %d, its log ends at %d",
		f.id, afterSwap, dataIdx, snapIdx, lastIndex(t, f.dir))
	if afterSwap && dataIdx < snapData {
		t.Errorf("4: the rebuilt data file is at index %d, behind the installed snapshot's data (%d)", dataIdx, snapData)
	}
	f = c.restart(f.id)
	c.verify(ctx, w, "after the second install")

	c.logf("kills mid-receive %v, mid-restore %v, mid-restore at start %v, right after the swap %v; %s", midReceive, midRestore, midOpen, afterSwap, w.summary())
	if !midReceive && !midRestore && !midOpen {
		t.Errorf("no kill landed while a snapshot was being installed")
	}
}
