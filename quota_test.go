package kv_test

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// recordHeader is the header of a stored record of a key without a lease:
// the logical size of a key is len(key) + recordHeader + len(value).
const recordHeader = 25

func logicalSize(ents []kv.Entry) int64 {
	var n int64
	for _, e := range ents {
		n += int64(len(e.Key) + recordHeader + len(e.Value))
	}
	return n
}

// waitQuota waits until every running member has applied quota want.
func waitQuota(t *testing.T, c *kvtest.Cluster, want int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; i < c.N(); i++ {
		s := c.Node(i)
		if s == nil {
			continue
		}
		for s.Stats().QuotaBytes != want {
			if time.Now().After(deadline) {
				t.Fatalf("node%d: quota %d, want %d", i, s.Stats().QuotaBytes, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// sameEverywhere waits until every running member has applied the same
// index, then checks that they hold the same entries (read with Stale, as
// each member has them) and the same logical size, and that the size is
// that of the entries. It returns the entries.
func sameEverywhere(t *testing.T, c *kvtest.Cluster) []kv.Entry {
	t.Helper()
	return sameData(t, c, true)
}

// sameData is sameEverywhere; sized says whether every record has the
// header of this version (not so for data from a format 1 DataDir).
func sameData(t *testing.T, c *kvtest.Cluster, sized bool) []kv.Entry {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	var nodes []*kv.Store
	for i := 0; i < c.N(); i++ {
		if s := c.Node(i); s != nil {
			nodes = append(nodes, s)
		}
	}
	for {
		idx, same := nodes[0].Stats().AppliedIndex, true
		for _, s := range nodes[1:] {
			same = same && s.Stats().AppliedIndex == idx
		}
		if same && idx >= nodes[0].Stats().CommitIndex {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the members did not reach the same applied index")
		}
		time.Sleep(20 * time.Millisecond)
	}
	var first []kv.Entry
	for i, s := range nodes {
		ents, _, err := s.ListEntries(ctx, "", kv.Stale())
		if err != nil {
			t.Fatal(err)
		}
		st := s.Stats()
		if sized && st.DataBytes != logicalSize(ents) {
			t.Errorf("%s: DataBytes %d, the size of its %d entries is %d", st.NodeID, st.DataBytes, len(ents), logicalSize(ents))
		}
		if i == 0 {
			first = ents
			continue
		}
		if fmt.Sprint(ents) != fmt.Sprint(first) {
			t.Fatalf("%s holds other data than %s: %d keys, %d bytes; %d keys, %d bytes", st.NodeID, nodes[0].Stats().NodeID,
				len(ents), logicalSize(ents), len(first), logicalSize(first))
		}
		if st.DataBytes != nodes[0].Stats().DataBytes || st.QuotaBytes != nodes[0].Stats().QuotaBytes {
			t.Fatalf("%s: %d bytes, quota %d; %s: %d, %d", st.NodeID, st.DataBytes, st.QuotaBytes,
				nodes[0].Stats().NodeID, nodes[0].Stats().DataBytes, nodes[0].Stats().QuotaBytes)
		}
	}
	return first
}

// fill writes values of n bytes under prefix until a write is refused for
// space, and returns how many were written.
func fill(t *testing.T, s *kv.Store, prefix string, n int) int {
	t.Helper()
	ctx := ctxT(t, 60*time.Second)
	for i := 0; i < 10000; i++ {
		err := s.Set(ctx, fmt.Sprintf("%s%04d", prefix, i), bytes.Repeat([]byte{'v'}, n))
		if errors.Is(err, kv.ErrNoSpace) {
			if errors.Is(err, kv.ErrOutcomeUnknown) {
				t.Fatalf("a refusal wraps ErrOutcomeUnknown: %v", err)
			}
			return i
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("no write was refused")
	return 0
}

// A cluster at its quota refuses every write that would grow the data
// (Set, Txn, CompareAndSet) with ErrNoSpace and changes nothing; deletes,
// overwrites no larger, shrinking transactions, lease grants and reads go
// on, and growing writes pass again once data is deleted. Every member
// ends with the same data and the same logical size.
func TestQuota_FullClusterRefusesGrowingWrites(t *testing.T) {
	const quota = 16 << 10
	c := kvtest.NewCluster(t, 3, kvtest.Configure(func(i int, cfg *kv.Config) { cfg.QuotaBytes = quota }))
	waitQuota(t, c, quota)
	ctx := ctxT(t, 60*time.Second)
	s := c.Node((c.Leader() + 1) % 3) // a follower: writes are forwarded
	n := fill(t, s, "fill/", 1000)
	if n < 10 {
		t.Fatalf("only %d values of 1000 bytes fit in %d bytes", n, quota)
	}
	before, rev, err := s.ListEntries(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	size := s.Stats().DataBytes
	if size != logicalSize(before) || size > quota || size+1000+recordHeader+9 <= quota {
		t.Fatalf("DataBytes %d for entries of %d bytes, quota %d", size, logicalSize(before), quota)
	}
	big := bytes.Repeat([]byte{'b'}, 1000)
	refused := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, kv.ErrNoSpace) || errors.Is(err, kv.ErrOutcomeUnknown) || errors.Is(err, kv.ErrConflict) {
			t.Fatalf("%s at the quota: %v, want ErrNoSpace", what, err)
		}
	}
	refused("a Set of a new key", s.Set(ctx, "new", big))
	refused("a Set that grows a value", s.Set(ctx, "fill/0000", append(big, big...)))
	_, err = s.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpSet("t1", big), kv.OpDelete("absent")}})
	refused("a Txn", err)
	_, err = s.CompareAndSet(ctx, "fill/0001", append(big, big...), before[1].ModRev)
	refused("a CompareAndSet", err)
	refused("a SetAsync", s.SetAsync("async", big).Wait(ctx))
	after, rev2, err := s.ListEntries(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(after) != fmt.Sprint(before) || s.Stats().DataBytes != size {
		t.Fatalf("refused writes changed the data:\n%v\n%v", after, before)
	}
	t.Logf("refused writes left the data as it was (revision %d, then %d: the refusals are entries of their own)", rev, rev2)

	// At the limit: reads, lease grants, writes no larger, shrinking
	// transactions and deletes pass.
	if _, err := s.Get(ctx, "fill/0000"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Grant(ctx, time.Minute); err != nil {
		t.Fatalf("Grant at the quota: %v", err)
	}
	if err := s.Set(ctx, "fill/0000", bytes.Repeat([]byte{'o'}, 1000)); err != nil {
		t.Fatalf("an overwrite of the same size: %v", err)
	}
	if _, err := s.CompareAndSet(ctx, "fill/0002", []byte("small"), before[2].ModRev); err != nil {
		t.Fatalf("a CompareAndSet that shrinks: %v", err)
	}
	if _, err := s.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpDelete("fill/0003"), kv.OpSet("fill/0004", append(big, 'x'))}}); err != nil {
		t.Fatalf("a Txn that shrinks the data: %v", err)
	}
	if err := s.Delete(ctx, "fill/0005"); err != nil {
		t.Fatalf("a Delete at the quota: %v", err)
	}
	// Room again: a growing write passes.
	if err := s.Set(ctx, "new", big); err != nil {
		t.Fatalf("a Set after deletes: %v", err)
	}
	sameEverywhere(t, c)
}

// Concurrent writers, group-committed into shared entries: writes that
// would pass the quota fail alone, while the overwrites in the same
// entries and exactly as many new writes as fit are applied.
func TestQuota_ConcurrentWritersRefusedAlone(t *testing.T) {
	const quota = 32 << 10
	c := kvtest.NewCluster(t, 3, kvtest.Configure(func(i int, cfg *kv.Config) { cfg.QuotaBytes = quota }))
	waitQuota(t, c, quota)
	ctx := ctxT(t, 60*time.Second)
	l := c.Node(c.Leader())
	for i := 0; i < 10; i++ {
		if err := l.Set(ctx, fmt.Sprintf("old/%02d", i), bytes.Repeat([]byte{'o'}, 500)); err != nil {
			t.Fatal(err)
		}
	}
	room := quota - l.Stats().DataBytes
	const rec = len("new/00") + recordHeader + 1000
	fits := int(room) / rec
	const writers = 40
	if fits >= writers || fits < 5 {
		t.Fatalf("%d of %d new values fit", fits, writers)
	}
	var (
		wg                          sync.WaitGroup
		mu                          sync.Mutex
		applied, refused, overwrote int
		revs                        = map[uint64]int{}
	)
	for i := 0; i < writers; i++ {
		wg.Add(2)
		s := c.Node(i % 3)
		go func() {
			defer wg.Done()
			r, err := s.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpSet(fmt.Sprintf("new/%02d", i), bytes.Repeat([]byte{'n'}, 1000))}})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				applied++
				revs[r.Revision]++
			case errors.Is(err, kv.ErrNoSpace):
				refused++
			default:
				t.Errorf("new/%02d: %v", i, err)
			}
		}()
		go func() {
			defer wg.Done()
			r, err := s.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpSet(fmt.Sprintf("old/%02d", i%10), bytes.Repeat([]byte{byte('a' + i%26)}, 500))}})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("an overwrite of old/%02d: %v", i%10, err)
				return
			}
			overwrote++
			revs[r.Revision]++
		}()
	}
	wg.Wait()
	if applied != fits || refused != writers-fits || overwrote != writers {
		t.Fatalf("%d new writes applied, %d refused, %d overwrites; want %d, %d, %d", applied, refused, overwrote, fits, writers-fits, writers)
	}
	shared := 0
	for _, n := range revs {
		if n > 1 {
			shared++
		}
	}
	t.Logf("%d writes in %d entries, %d of them shared", applied+overwrote, len(revs), shared)
	if shared == 0 {
		t.Error("no two writes shared an entry: group commit did not happen, the test proves nothing")
	}
	sameEverywhere(t, c)
}

// The quota is the leader's: members configured with other quotas apply
// the leader's, refuse the same writes, and hold the same data; the next
// leader sets its own. A negative QuotaBytes means no quota.
func TestQuota_LeaderSettingGoverns(t *testing.T) {
	quotas := []int64{8 << 10, 12 << 10, -1}
	c := kvtest.NewCluster(t, 3, kvtest.Configure(func(i int, cfg *kv.Config) { cfg.QuotaBytes = quotas[i] }))
	ctx := ctxT(t, 90*time.Second)
	want := func(i int) int64 { return max(quotas[i], 0) }
	first := c.Leader()
	waitQuota(t, c, want(first))
	// Write from every member, past the smallest quota.
	for i := 0; i < 30; i++ {
		err := c.Node(i%3).Set(ctx, fmt.Sprintf("k/%02d", i), bytes.Repeat([]byte{'v'}, 500))
		if err != nil && (!errors.Is(err, kv.ErrNoSpace) || want(first) == 0) {
			t.Fatalf("write %d with the quota of node%d (%d): %v", i, first, want(first), err)
		}
	}
	ents := sameEverywhere(t, c)
	if q := want(first); q > 0 && (logicalSize(ents) > q || logicalSize(ents)+500+recordHeader+4 <= q) {
		t.Fatalf("%d bytes stored under the quota %d", logicalSize(ents), q)
	}
	// Another leader: its quota governs.
	c.Stop(first)
	l, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitQuota(t, c, want(l))
	t.Logf("node%d led with quota %d, node%d leads with %d", first, want(first), l, want(l))
	for i := 30; i < 60; i++ {
		err := c.Node(l).Set(ctx, fmt.Sprintf("k/%02d", i), bytes.Repeat([]byte{'v'}, 500))
		if err != nil && (!errors.Is(err, kv.ErrNoSpace) || want(l) == 0) {
			t.Fatalf("write %d with the quota of node%d (%d): %v", i, l, want(l), err)
		}
	}
	ents = sameEverywhere(t, c)
	if want(l) == 0 && len(ents) != 60 {
		t.Fatalf("without a quota, %d of 60 keys stored", len(ents))
	}
}

// The logical size survives a restart, and a member that catches up
// through a snapshot install has the leader's.
func TestQuota_SizeSurvivesRestartAndSnapshotInstall(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.Configure(func(i int, cfg *kv.Config) {
		cfg.QuotaBytes = 1 << 20
		cfg.SnapshotThreshold = 32
		cfg.SnapshotInterval = 50 * time.Millisecond
		cfg.TrailingLogs = 8
	}))
	waitQuota(t, c, 1<<20)
	ctx := ctxT(t, 90*time.Second)
	f := (c.Leader() + 1) % 3
	c.Stop(f)
	l := c.Node(c.Leader())
	for i := 0; i < 200; i++ {
		if err := l.Set(ctx, fmt.Sprintf("s/%03d", i), bytes.Repeat([]byte{'v'}, i)); err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			if err := l.Delete(ctx, fmt.Sprintf("s/%03d", i/2)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for l.Stats().LastSnapshotIndex < 200 {
		if ctx.Err() != nil {
			t.Fatalf("no snapshot: %+v", l.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.Restart(f)
	for c.Node(f).Stats().LastSnapshotIndex == 0 {
		if ctx.Err() != nil {
			t.Fatalf("node%d installed no snapshot", f)
		}
		time.Sleep(20 * time.Millisecond)
	}
	sameEverywhere(t, c)
	// Every member restarts with it.
	for i := 0; i < 3; i++ {
		c.Restart(i)
	}
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	sameEverywhere(t, c)
	if err := c.Node(0).Set(ctx, "after", []byte("restart")); err != nil {
		t.Fatal(err)
	}
	sameEverywhere(t, c)
}

// A DataDir of a version before the quota gets the size of its data at
// Open: deleting every key brings it to exactly 0. A Backup restored into
// another cluster carries the size.
func TestQuota_OldDataDirAndRestoredBackupHaveTheirSize(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "datadir")
	untar(t, "testdata/datadir-format1.tar.gz", filepath.Dir(dir))
	s, err := kv.Open(kv.Config{NodeID: "old", DataDir: dir, BootstrapExpect: 1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := ctxT(t, time.Minute)
	ents, _, err := s.ListEntries(ctx, "")
	if err != nil || len(ents) == 0 {
		t.Fatalf("ListEntries: %v, %v", ents, err)
	}
	if st := s.Stats(); st.DataBytes <= int64(len(ents)) {
		t.Fatalf("the old data dir's %d keys: DataBytes %d", len(ents), st.DataBytes)
	}
	var buf bytes.Buffer
	if err := s.Backup(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	size := s.Stats().DataBytes
	for _, e := range ents {
		if err := s.Delete(ctx, e.Key); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.Stats().DataBytes; n != 0 {
		t.Fatalf("DataBytes %d with every key deleted", n)
	}

	c := kvtest.NewCluster(t, 3)
	l := c.Node(c.Leader())
	if err := l.Set(ctx, "only-in-dst", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := l.Restore(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	// The restore replaced the write sessions: the first write after it
	// registers a new one, and may be refused unapplied (ErrNoLeader) when
	// another entry goes first; retrying it is safe.
	for try := 0; ; try++ {
		err := l.Set(ctx, "after-restore", []byte("x"))
		if err == nil {
			break
		}
		if !errors.Is(err, kv.ErrNoLeader) || try == 5 {
			t.Fatal(err)
		}
	}
	after := sameData(t, c, false)
	got := l.Stats().DataBytes
	if want := size + int64(len("after-restore")+recordHeader+1); got != want {
		t.Fatalf("DataBytes %d after the restore, want %d (the backup's %d and one key)", got, want, size)
	}
	for _, e := range after {
		if err := l.Delete(ctx, e.Key); err != nil {
			t.Fatal(err)
		}
	}
	if n := l.Stats().DataBytes; n != 0 {
		t.Fatalf("DataBytes %d with every key deleted", n)
	}
}
