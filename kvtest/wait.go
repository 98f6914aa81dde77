package kvtest

import (
	"context"
	"errors"
	"fmt"
	"time"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/internal/hooks"
)

// pollInterval is how often WaitFor and WaitLeaseExpired check their
// condition.
const pollInterval = 10 * time.Millisecond

// WaitFor calls cond every 10 ms, from the calling goroutine, until it
// returns true, and returns nil then; it checks at once first. It returns
// an error wrapping ctx.Err() if ctx ends before. Use it instead of a
// fixed sleep: a test waits as long as the condition needs, and no longer.
//
//	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
//	defer cancel()
//	if err := c.WaitFor(ctx, func() bool { return c.Node(2).Stats().AppliedIndex >= idx }); err != nil {
//		t.Fatal(err)
//	}
func (c *Cluster) WaitFor(ctx context.Context, cond func() bool) error {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("kvtest: condition not met: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// WaitKeyGone waits until key is absent from member i's applied state: it
// was never there, or member i has applied its deletion (a Delete, a Txn,
// or the expiry or revocation of its lease). It reads member i's own data
// (kv.Stale) and then watches it, so it returns as soon as that member
// applies the delete, with no polling. It returns an error if member i is
// not running, if it stops during the wait (wrapping kv.ErrClosed), or if
// ctx ends first (wrapping ctx.Err()).
func (c *Cluster) WaitKeyGone(ctx context.Context, i int, key string) error {
	s := c.Node(i)
	if s == nil {
		return fmt.Errorf("kvtest: node%d is not running", i)
	}
	for {
		// The list and the watch that continues it see every change
		// of key once, in order.
		entries, rev, err := s.ListEntries(ctx, key, kv.Stale(), kv.Limit(1))
		if err != nil {
			return fmt.Errorf("kvtest: node%d: %w", i, err)
		}
		if len(entries) == 0 || entries[0].Key != key {
			return nil
		}
		for ev, err := range s.Watch(ctx, key, rev+1) {
			if errors.Is(err, kv.ErrCompacted) {
				break // fell behind the history kept: list again
			}
			if err != nil {
				return fmt.Errorf("kvtest: node%d: waiting for %q to go: %w", i, key, err)
			}
			if ev.Type == kv.EventDelete && ev.Entry.Key == key {
				return nil
			}
		}
	}
}

// WaitLeaseExpired waits until lease id is gone from every running member:
// each has applied its expiry (or revocation), and with it the deletion of
// every key the lease held. It reads each member's own data every 10 ms
// and renews nothing. A member stopped or killed during the wait no
// longer counts. It returns an error wrapping ctx.Err() if ctx ends first.
//
// Expiry is decided by the leader (see kv.Store.Grant): give ctx at least
// the lease's TTL plus an election timeout, more if the leader changes.
func (c *Cluster) WaitLeaseExpired(ctx context.Context, id kv.LeaseID) error {
	var lastErr error
	err := c.WaitFor(ctx, func() bool {
		lastErr = nil
		for i := range c.N() {
			s := c.Node(i)
			if s == nil {
				continue
			}
			ok, err := hooks.LeaseExists(s, int64(id))
			if err != nil {
				if c.Node(i) == nil {
					continue // stopped under the read
				}
				lastErr = fmt.Errorf("node%d: %w", i, err)
				return false
			}
			if ok {
				return false
			}
		}
		return true
	})
	if err != nil {
		if lastErr != nil {
			return fmt.Errorf("kvtest: lease %d: %w (last read: %v)", id, err, lastErr)
		}
		return fmt.Errorf("kvtest: lease %d still exists: %w", id, err)
	}
	return nil
}
