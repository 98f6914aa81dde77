package concurrency

import (
	"context"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// testTTL is the sessions' TTL in the tests: short, so that a lost
// session hands its locks over in about a second.
const testTTL = 2 * time.Second

// newCluster starts a 3-member in-memory cluster with fast failure
// detection, so that a leader's loss costs well under a second.
func newCluster(t *testing.T) *kvtest.Cluster {
	t.Helper()
	return kvtest.NewCluster(t, 3, kvtest.InMemory(), kvtest.Configure(func(i int, cfg *kv.Config) {
		cfg.HeartbeatTimeout = 300 * time.Millisecond
		cfg.ElectionTimeout = 300 * time.Millisecond
		cfg.LeaderLeaseTimeout = 150 * time.Millisecond
		cfg.DeadMemberTimeout = time.Hour // a killed member stays a voter
	}))
}

// ctxT returns a context that ends after d or with the test.
func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// newSession opens a session of testTTL on s, closed with the test.
func newSession(t *testing.T, s *kv.Store) *Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := NewSession(s, testTTL, WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return sess
}

// queueLen returns how many keys are queued under prefix.
func queueLen(t *testing.T, s *kv.Store, prefix string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	es, _, err := s.ListEntries(ctx, prefix+"/")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// waitFor polls cond every 10 ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
	}
}

// guardedSet writes key=value if cond holds, and says whether it did.
func guardedSet(ctx context.Context, s *kv.Store, cond kv.Cond, key, value string) (bool, error) {
	res, err := s.Txn(ctx, kv.Txn{If: []kv.Cond{cond}, Then: []kv.Op{kv.OpSet(key, []byte(value))}})
	return res.Succeeded, err
}
