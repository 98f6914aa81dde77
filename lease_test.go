package kv_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// expiryBound is how late a lease may expire while a leader is in office:
// the leader's 100 ms check, a commit, and slack for a loaded machine.
const expiryBound = time.Second

// waitGone polls s (linearizable reads, unless opts say otherwise) until
// key is gone and returns when that was first seen, or fails the test
// after limit.
func waitGone(t *testing.T, s *kv.Store, key string, limit time.Duration, opts ...kv.ReadOption) time.Time {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := s.Get(ctx, key, opts...)
		cancel()
		now := time.Now()
		if errors.Is(err, kv.ErrNotFound) {
			return now
		}
		if now.After(deadline) {
			t.Fatalf("%s still there (last read: %v) after %v", key, err, limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func mustExist(t *testing.T, s *kv.Store, key, value string) kv.Entry {
	t.Helper()
	e, err := s.GetEntry(ctxT(t, 10*time.Second), key)
	if err != nil || string(e.Value) != value {
		t.Fatalf("%s = %+v, %v; want %q", key, e, err, value)
	}
	return e
}

// Grant, KeepAlive, Revoke, WithLease and TTL from a follower, and what
// each answers for a lease that does not exist.
func TestLease_Basics(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t, time.Minute)
	s := c.nodes[c.followers()[0]]

	id, err := s.Grant(ctx, 1500*time.Millisecond)
	if err != nil || id <= 0 {
		t.Fatalf("Grant = %d, %v", id, err)
	}
	if ttl, err := s.KeepAlive(ctx, id); err != nil || ttl != 1500*time.Millisecond {
		t.Fatalf("KeepAlive = %v, %v; want 1.5s", ttl, err)
	}
	if err := s.Set(ctx, "l/a", []byte("1"), kv.WithLease(id)); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "l/b", []byte("2"), kv.WithLease(id)); err != nil {
		t.Fatal(err)
	}
	if e := mustExist(t, s, "l/a", "1"); e.Lease != id {
		t.Errorf("GetEntry(l/a).Lease = %d, want %d", e.Lease, id)
	}
	if err := s.Revoke(ctx, id); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	for _, k := range []string{"l/a", "l/b"} {
		if _, err := s.Get(ctx, k); !errors.Is(err, kv.ErrNotFound) {
			t.Errorf("%s after Revoke: %v, want ErrNotFound", k, err)
		}
	}
	if _, err := s.KeepAlive(ctx, id); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Errorf("KeepAlive of a revoked lease: %v, want ErrLeaseNotFound", err)
	}
	if err := s.Revoke(ctx, id); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Errorf("Revoke of a revoked lease: %v, want ErrLeaseNotFound", err)
	}
	for _, bad := range []kv.LeaseID{id + 1000, 0, -1} {
		if _, err := s.KeepAlive(ctx, bad); !errors.Is(err, kv.ErrLeaseNotFound) {
			t.Errorf("KeepAlive(%d): %v, want ErrLeaseNotFound", bad, err)
		}
		if err := s.Revoke(ctx, bad); !errors.Is(err, kv.ErrLeaseNotFound) {
			t.Errorf("Revoke(%d): %v, want ErrLeaseNotFound", bad, err)
		}
		if bad == 0 {
			continue
		}
		if err := s.Set(ctx, "nolease", []byte("x"), kv.WithLease(bad)); !errors.Is(err, kv.ErrLeaseNotFound) {
			t.Errorf("Set WithLease(%d): %v, want ErrLeaseNotFound", bad, err)
		}
	}
	if _, err := s.Get(ctx, "nolease"); !errors.Is(err, kv.ErrNotFound) {
		t.Errorf("a Set naming an unknown lease wrote: %v", err)
	}
	// WithLease(0) attaches to no lease, as etcd's NoLease does.
	if err := s.Set(ctx, "nolease", []byte("x"), kv.WithLease(0)); err != nil {
		t.Errorf("Set WithLease(0): %v", err)
	}
	if e, err := s.GetEntry(ctx, "nolease"); err != nil || e.Lease != 0 {
		t.Errorf("after Set WithLease(0): %+v, %v", e, err)
	}
	_, err = s.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpSet("tx/a", []byte("1")), kv.OpSet("tx/b", []byte("1"), kv.WithLease(id))}})
	if !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Errorf("Txn with an OpSet naming a revoked lease: %v, want ErrLeaseNotFound", err)
	}
	if _, err := s.Get(ctx, "tx/a"); !errors.Is(err, kv.ErrNotFound) {
		t.Errorf("a Txn naming an unknown lease wrote its other operation: %v", err)
	}
	for _, ttl := range []time.Duration{0, -time.Second, 11 * 365 * 24 * time.Hour} {
		if _, err := s.Grant(ctx, ttl); err == nil {
			t.Errorf("Grant(%v) succeeded", ttl)
		}
	}

	// TTL: a lease of the key's own, reported by GetEntry, gone with it.
	if err := s.Set(ctx, "ttl", []byte("x"), kv.TTL(400*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if e := mustExist(t, s, "ttl", "x"); e.Lease <= 0 {
		t.Errorf("a TTL key's Entry.Lease = %d, want its own lease", e.Lease)
	}
	waitGone(t, s, "ttl", 400*time.Millisecond+expiryBound)
}

// A write without the lease detaches the key: it survives the lease's
// expiry. A TTL key written again without a TTL lives on.
func TestLease_WriteWithoutLeaseDetaches(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t, time.Minute)
	s := c.nodes[c.followers()[0]]
	id, err := s.Grant(ctx, 600*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b"} {
		if err := s.Set(ctx, k, []byte("leased"), kv.WithLease(id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Set(ctx, "t", []byte("ttl"), kv.TTL(600*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "a", []byte("plain")); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "t", []byte("plain")); err != nil {
		t.Fatal(err)
	}
	waitGone(t, s, "b", 600*time.Millisecond+expiryBound)
	time.Sleep(600*time.Millisecond + expiryBound) // t's old deadline well past
	for _, k := range []string{"a", "t"} {
		if e := mustExist(t, s, k, "plain"); e.Lease != 0 {
			t.Errorf("%s: Lease %d, want none", k, e.Lease)
		}
	}
	if _, err := s.KeepAlive(ctx, id); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Errorf("KeepAlive of the expired lease: %v", err)
	}
}

// A key lives at least its TTL: never gone before the TTL has passed since
// the Set was called (the leader stamps the write after that), and gone
// within expiryBound after it. Keys of several TTLs, written through the
// leader and a follower at once.
func TestLease_KeyLivesAtLeastItsTTL(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t, time.Minute)
	l := c.waitLeader()
	writers := []*kv.Store{c.nodes[l], c.nodes[c.followers()[0]]}
	reader := c.nodes[c.followers()[1]]
	// A new leader expires nothing for an ElectionTimeout (see
	// TestLease_NewLeaderWaitsElectionTimeout): the bound below is for a
	// leader in office.
	time.Sleep(kv.DefaultElectionTimeout + 200*time.Millisecond)
	ttls := []time.Duration{200 * time.Millisecond, 450 * time.Millisecond, 700 * time.Millisecond, 1100 * time.Millisecond}
	// 1 ms: the deadline is in whole milliseconds of the leader's clock.
	const slack = 2 * time.Millisecond
	var wg sync.WaitGroup
	for round := range 2 {
		for wi, w := range writers {
			for _, ttl := range ttls {
				key := fmt.Sprintf("k/%d/%d/%v", round, wi, ttl)
				wg.Go(func() {
					start := time.Now()
					if err := w.Set(ctx, key, []byte("v"), kv.TTL(ttl)); err != nil {
						t.Errorf("%s: %v", key, err)
						return
					}
					acked := time.Since(start)
					gone := waitGone(t, reader, key, ttl+expiryBound+5*time.Second).Sub(start)
					if gone < ttl-slack {
						t.Errorf("%s: gone %v after the Set was called, before its TTL", key, gone)
					}
					if gone > ttl+acked+expiryBound {
						t.Errorf("%s: gone %v after the Set was called (acknowledged after %v): later than the TTL and %v", key, gone, acked, expiryBound)
					}
					t.Logf("%s: acknowledged after %v, gone after %v", key, acked, gone)
				})
			}
		}
		wg.Wait()
	}
}

// A lease whose holder's member crashes expires after its TTL: nobody
// renews it any more.
func TestLease_HolderKilledExpires(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t, time.Minute)
	hi := c.followers()[0]
	holder, other := c.nodes[hi], c.nodes[c.waitLeader()]
	const ttl = time.Second
	id, err := holder.Grant(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Set(ctx, "lock", []byte("held"), kv.WithLease(id)); err != nil {
		t.Fatal(err)
	}
	var lastRenewal atomic.Int64 // start of the last KeepAlive that returned nil
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(ttl / 3):
			}
			start := time.Now()
			rctx, cancel := context.WithTimeout(context.Background(), ttl/3)
			_, err := holder.KeepAlive(rctx, id)
			cancel()
			if err == nil {
				lastRenewal.Store(start.UnixNano())
			}
		}
	}()
	time.Sleep(3 * ttl) // renewed all along
	mustExist(t, other, "lock", "held")
	c.kc.Kill(hi)
	killed := time.Now()
	c.nodes[hi] = nil
	close(stop)
	<-done
	gone := waitGone(t, other, "lock", ttl+expiryBound+5*time.Second)
	since := gone.Sub(time.Unix(0, lastRenewal.Load()))
	if since < ttl {
		t.Errorf("gone %v after the last renewal began, before the TTL", since)
	}
	if after := gone.Sub(killed); after > ttl+expiryBound {
		t.Errorf("gone %v after the holder was killed, later than the TTL and %v", after, expiryBound)
	}
	t.Logf("gone %v after the kill, %v after the last renewal began", gone.Sub(killed), since)
	if _, err := other.KeepAlive(ctx, id); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Errorf("KeepAlive after expiry: %v, want ErrLeaseNotFound", err)
	}
}

// renewer renews id every ttl/3 from any member but the one faulted, and
// records any answer that says the lease is gone.
type renewer struct {
	kc      *kvtest.Cluster
	id      kv.LeaseID
	ttl     time.Duration
	victim  atomic.Int32 // the member not to use (-1: none)
	lost    atomic.Value // error
	renewed atomic.Int64
	stop    chan struct{}
	done    chan struct{}
}

func startRenewer(kc *kvtest.Cluster, id kv.LeaseID, ttl time.Duration) *renewer {
	r := &renewer{kc: kc, id: id, ttl: ttl, stop: make(chan struct{}), done: make(chan struct{})}
	r.victim.Store(-1)
	go r.run()
	return r
}

func (r *renewer) run() {
	defer close(r.done)
	next := 0
	for {
		select {
		case <-r.stop:
			return
		case <-time.After(r.ttl / 3):
		}
		var s *kv.Store
		for range r.kc.N() {
			next = (next + 1) % r.kc.N()
			if next != int(r.victim.Load()) {
				if s = r.kc.Node(next); s != nil {
					break
				}
			}
		}
		if s == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.ttl)
		_, err := s.KeepAlive(ctx, r.id)
		cancel()
		if errors.Is(err, kv.ErrLeaseNotFound) {
			r.lost.CompareAndSwap(nil, fmt.Errorf("KeepAlive on member %d at %v: %w", next, time.Now().Format("15:04:05.000"), err))
		} else if err == nil {
			r.renewed.Add(1)
		}
	}
}

func (r *renewer) close() error {
	close(r.stop)
	<-r.done
	err, _ := r.lost.Load().(error)
	return err
}

// A lease renewed every ttl/3 from a member that stays up never expires
// while the leader is killed or cut off, again and again: the TTL is
// shorter than an election, so the deadline passes on the leaders' clock
// while no leader is in office, and only the new leader's wait of an
// ElectionTimeout before it expires anything lets the renewals in.
func TestLease_KeptAliveThroughLeaderChanges(t *testing.T) {
	// An ElectionTimeout of 2 s gives the renewals, which a loaded machine
	// (the race detector, 2 cores) can slow to several hundred
	// milliseconds each, room to land before the new leader expires
	// anything; the TTL stays shorter than an election.
	kc := kvtest.NewCluster(t, 3, kvtest.Logger(testLogger(t)), kvtest.Configure(func(i int, cfg *kv.Config) {
		cfg.NodeID = fmt.Sprintf("n%d", i+1)
		cfg.ElectionTimeout = 2 * time.Second
	}))
	ctx := ctxT(t, 3*time.Minute)
	const ttl = 1200 * time.Millisecond
	s := kc.Node(kc.Leader())
	id, err := s.Grant(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "held", []byte("x"), kv.WithLease(id)); err != nil {
		t.Fatal(err)
	}
	r := startRenewer(kc, id, ttl)
	for round := range 4 {
		l, err := kc.WaitLeader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r.victim.Store(int32(l))
		if round%2 == 0 {
			kc.Kill(l)
		} else {
			kc.Isolate(l)
		}
		if _, err := kc.WaitLeader(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * ttl)
		if round%2 == 0 {
			kc.Restart(l)
		} else {
			kc.Heal()
		}
		time.Sleep(2 * ttl)
		r.victim.Store(-1)
		if err, _ := r.lost.Load().(error); err != nil {
			t.Fatalf("round %d (%s the leader): the lease expired: %v", round, map[bool]string{true: "killing", false: "isolating"}[round%2 == 0], err)
		}
	}
	if err := r.close(); err != nil {
		t.Fatalf("the lease expired: %v", err)
	}
	l, err := kc.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustExist(t, kc.Node(l), "held", "x")
	t.Logf("%d renewals", r.renewed.Load())
}

// After a leader change nothing expires before the new leader has led for
// an ElectionTimeout, even a lease whose deadline passed long before. Two
// leader changes.
func TestLease_NewLeaderWaitsElectionTimeout(t *testing.T) {
	c := newCluster(t, 3)
	kc := c.kc
	ctx := ctxT(t, time.Minute)
	et := kc.Config(0).ElectionTimeout
	if et == 0 {
		et = kv.DefaultElectionTimeout
	}
	for round := range 2 {
		old := kc.Leader()
		key := fmt.Sprint("short", round)
		if err := kc.Node(old).Set(ctx, key, []byte("x"), kv.TTL(300*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		kc.Isolate(old) // before the deadline: the old leader cannot commit its expiry
		// Watch the others for the moment one becomes leader.
		var leaderAt time.Time
		newLeader := -1
		for deadline := time.Now().Add(30 * time.Second); newLeader < 0; time.Sleep(2 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("no new leader within 30 s")
			}
			for i := range kc.N() {
				if i != old && kc.Node(i).Stats().State == kv.StateLeader {
					newLeader, leaderAt = i, time.Now()
				}
			}
		}
		// The new leader may not have applied the write yet: the old
		// leader was cut off before it told the others the entry was
		// committed, and the new one commits it with its first entry.
		// Absent before that is not expired.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			if _, err := kc.Node(newLeader).Get(ctx, key, kv.Stale()); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the new leader never applied the write of %s", round, key)
			}
		}
		// The leader's own applied state, read at once: a linearizable
		// read may wait on the leader's first commit and see the delete
		// late.
		gone := waitGone(t, kc.Node(newLeader), key, 10*time.Second, kv.Stale())
		led := gone.Sub(leaderAt)
		// The leader was seen within 2 ms of its election; its wait
		// counts from its first check as leader, after the election.
		if led < et-20*time.Millisecond {
			t.Errorf("round %d: the key expired %v after the new leader took office, before an ElectionTimeout (%v)", round, led, et)
		}
		// No upper bound but waitGone's: the leader seen first may lose
		// office to another before it expires anything (seen: 3.2 s).
		t.Logf("round %d: expired %v after the new leader took office", round, led)
		kc.Heal()
		if _, err := kc.WaitLeader(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(et + 200*time.Millisecond)
	}
}

// A key written with a lease and overwritten without it just before the
// deadline survives the expiry, with the new value.
func TestLease_OverwriteSurvivesExpiry(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t, time.Minute)
	s := c.nodes[c.followers()[0]]
	const ttl = time.Second
	for round := range 3 {
		id, err := s.Grant(ctx, ttl)
		if err != nil {
			t.Fatal(err)
		}
		granted := time.Now()
		k, sib := fmt.Sprint("k", round), fmt.Sprint("sibling", round)
		for _, key := range []string{k, sib} {
			if err := s.Set(ctx, key, []byte("old"), kv.WithLease(id)); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(time.Until(granted.Add(ttl - time.Duration(30*(round+1))*time.Millisecond)))
		if err := s.Set(ctx, k, []byte("new")); err != nil {
			t.Fatal(err)
		}
		waitGone(t, s, sib, ttl+expiryBound)
		if e := mustExist(t, s, k, "new"); e.Lease != 0 {
			t.Errorf("%s: Lease %d after the overwrite, want none", k, e.Lease)
		}
	}
}

// lostLeaseAnswers makes lease commands on a follower lose their reply
// once the leader applied them, and on the leader report a lost
// leadership once applied, so that the library sends each again. It
// returns what each retried Revoke answered, and how many retried Grants
// granted a lease besides the one they returned.
func lostLeaseAnswers(t *testing.T, c *cluster) (revokeErrs []error, extraGrants int) {
	t.Helper()
	ctx := ctxT(t, time.Minute)
	l := c.waitLeader()
	leader, follower := c.nodes[l], c.nodes[c.followers()[0]]
	for _, s := range []*kv.Store{leader, follower} {
		if err := s.Set(ctx, "warm", nil); err != nil { // sessions registered
			t.Fatal(err)
		}
	}
	lose := func(s *kv.Store) {
		if s == leader {
			kv.LoseApplied(leader, 1)
		} else {
			kv.LoseReplies(follower, 1)
		}
	}
	for _, s := range []*kv.Store{leader, follower} {
		id, err := s.Grant(ctx, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Set(ctx, "r", []byte("x"), kv.WithLease(id)); err != nil {
			t.Fatal(err)
		}
		lose(s)
		revokeErrs = append(revokeErrs, s.Revoke(ctx, id))
		if _, err := s.Get(ctx, "r"); !errors.Is(err, kv.ErrNotFound) {
			t.Errorf("r after Revoke: %v", err)
		}
		// A Grant retried: the lease before the one it returns is the
		// one just revoked, unless a first apply granted it.
		lose(s)
		a, err := s.Grant(ctx, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if a-1 != id {
			if _, err := s.KeepAlive(ctx, a-1); err == nil {
				extraGrants++
			}
			if err := s.Revoke(ctx, a-1); err != nil {
				t.Error(err)
			}
		}
		if err := s.Revoke(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	kv.LoseApplied(leader, 0)
	kv.LoseReplies(follower, 0)
	return revokeErrs, extraGrants
}

// A Revoke (or Grant) whose answer is lost is sent again and gets its
// first answer: nil, not ErrLeaseNotFound, and one lease granted.
func TestLease_ExactlyOnce(t *testing.T) {
	c := newCluster(t, 3)
	errs, extra := lostLeaseAnswers(t, c)
	for i, err := range errs {
		if err != nil {
			t.Errorf("Revoke %d retried after a lost answer: %v, want nil", i, err)
		}
	}
	if extra != 0 {
		t.Errorf("%d Grants retried after a lost answer granted a second lease", extra)
	}
}

// Negative control: with the session table off, the retried Revoke finds
// the lease gone and the retried Grant grants twice, and the checks above
// catch both.
func TestLease_ExactlyOnce_NegativeControl_SessionsOff(t *testing.T) {
	t.Cleanup(kv.SetSessionsOff())
	c := newCluster(t, 3)
	errs, extra := lostLeaseAnswers(t, c)
	caught := 0
	for _, err := range errs {
		if errors.Is(err, kv.ErrLeaseNotFound) {
			caught++
		}
	}
	if caught != len(errs) || extra != len(errs) {
		t.Fatalf("without sessions the retried Revokes answered %v and %d of %d retried Grants granted twice: the checks would not catch a second apply", errs, extra, len(errs))
	}
}

// leaseClusterScale reads KV_LEASE_CLUSTER_SCALE, "leases,keys" (default
// 200 leases, 3000 keys: one lease holds 2500, over expireBatch).
func leaseClusterScale(t *testing.T) (leases, keys int) {
	leases, keys = 200, 3000
	if v := os.Getenv("KV_LEASE_CLUSTER_SCALE"); v != "" {
		var err error
		if _, err = fmt.Sscanf(v, "%d,%d", &leases, &keys); err != nil || leases < 1 || keys < 2500+leases {
			t.Fatalf("KV_LEASE_CLUSTER_SCALE=%q: want leases,keys with keys >= 2500+leases", v)
		}
	}
	return leases, keys
}

// One lease with more keys than one expiry deletes (expireBatch, 1024) is
// expired in several revisions and completes; many leases expiring at once
// all go, each with its keys. A watcher sees every delete.
func TestLease_ExpiryOfManyKeys(t *testing.T) {
	nLeases, nKeys := leaseClusterScale(t)
	c := newCluster(t, 3)
	ctx := ctxT(t, 5*time.Minute)
	s := c.nodes[c.waitLeader()]
	const ttl = 3 * time.Second
	_, rev, err := s.ListEntries(ctx, "m/", kv.Limit(1))
	if err != nil {
		t.Fatal(err)
	}
	var ids []kv.LeaseID
	for range nLeases {
		id, err := s.Grant(ctx, ttl)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	big := 2500
	start := time.Now() // after the last Grant: every deadline is before start+ttl
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := 0; i < nKeys; i += 100 {
		var ops []kv.Op
		for j := i; j < min(i+100, nKeys); j++ {
			id := ids[0]
			if j >= big {
				id = ids[1+(j-big)%(nLeases-1)]
			}
			ops = append(ops, kv.OpSet("m/"+strconv.Itoa(j), []byte("v"), kv.WithLease(id)))
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if _, err := s.Txn(ctx, kv.Txn{Then: ops}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	written := time.Since(start)
	if t.Failed() {
		t.FailNow()
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	deletes := map[string]uint64{}
	bigRevs := map[uint64]int{}
	watchDone := make(chan error, 1)
	go func() {
		for ev, err := range c.nodes[c.followers()[0]].Watch(wctx, "m/", rev+1) {
			if err != nil {
				watchDone <- err
				return
			}
			if ev.Type != kv.EventDelete {
				continue
			}
			deletes[ev.Entry.Key] = ev.Entry.ModRev
			if n, _ := strconv.Atoi(ev.Entry.Key[2:]); n < big {
				bigRevs[ev.Entry.ModRev]++
			}
			if len(deletes) == nKeys {
				watchDone <- nil
				return
			}
		}
	}()
	var expired time.Time
	select {
	case err := <-watchDone:
		if err != nil {
			t.Fatal(err)
		}
		expired = time.Now()
	case <-time.After(ttl + time.Duration(nLeases)*50*time.Millisecond + time.Minute):
		t.Fatalf("%d of %d keys deleted", len(deletes), nKeys)
	}
	t.Logf("%d leases, %d keys written in %v; all expired %v after the last deadline; the lease of %d keys in %d revisions (%v)",
		nLeases, nKeys, written, expired.Sub(start.Add(ttl)), big, len(bigRevs), bigRevs)
	if len(bigRevs) < (big+1023)/1024 {
		t.Errorf("the lease of %d keys expired in %d revisions, want at least %d", big, len(bigRevs), (big+1023)/1024)
	}
	for _, n := range bigRevs {
		if n > 1024 {
			t.Errorf("one revision deleted %d keys of the big lease, more than expireBatch", n)
		}
	}
	if l, err := s.List(ctx, "m/"); err != nil || len(l) != 0 {
		t.Errorf("%d keys left, %v", len(l), err)
	}
}
