package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	kv "github.com/cohortkv/kv"
)

// cohortSystem is cohort/kv: 3 Stores opened with kv.Open, default Config
// (fsync on), each with its own DataDir, transport and gossip port on
// 127.0.0.1. The callers run in the same process as the Stores: that is how
// the library is used.
type cohortSystem struct {
	stores   []*kv.Store
	leader   int
	follower int
	d        *dataset
}

func (s *cohortSystem) Name() string { return "cohort" }

func (s *cohortSystem) Start(dir string, d *dataset) error {
	s.d = d
	for i := range 3 {
		cfg := kv.Config{
			NodeID:          fmt.Sprintf("cohort%d", i),
			DataDir:         filepath.Join(dir, "cohort", fmt.Sprintf("n%d", i)),
			BindAddr:        "127.0.0.1:0",
			GossipBindAddr:  "127.0.0.1:0",
			BootstrapExpect: 3,
		}
		if i > 0 {
			cfg.Join = []string{s.stores[0].GossipAddr()}
		}
		st, err := kv.Open(cfg)
		if err != nil {
			return err
		}
		s.stores = append(s.stores, st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := s.waitLeader(ctx); err != nil {
		return err
	}
	leader := s.stores[s.leader]
	err := loadWithin(ctx, len(d.keys), 256, func(ctx context.Context, k int) error {
		return leader.Set(ctx, d.keys[k], d.value)
	})
	if err != nil {
		return err
	}
	// Every member has applied everything, and answers a linearizable read.
	for _, st := range s.stores {
		if _, err := st.Get(ctx, d.keys[len(d.keys)-1]); err != nil {
			return err
		}
	}
	return nil
}

// waitLeader waits until all 3 members name the same leader and that leader
// serves a linearizable read.
func (s *cohortSystem) waitLeader(ctx context.Context) error {
	for {
		leader, agree := -1, true
		for i, st := range s.stores {
			stats := st.Stats()
			if stats.State == kv.StateLeader {
				leader = i
			}
			if stats.Leader == "" || stats.Leader != s.stores[0].Stats().Leader {
				agree = false
			}
		}
		if leader >= 0 && agree {
			_, err := s.stores[leader].Get(ctx, "bench-probe", kv.Stale())
			if err == nil || errors.Is(err, kv.ErrNotFound) {
				if _, err := s.stores[leader].Get(ctx, "bench-probe"); err == nil || errors.Is(err, kv.ErrNotFound) {
					s.leader, s.follower = leader, (leader+1)%3
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no leader: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *cohortSystem) Prepare() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return s.waitLeader(ctx)
}

func (s *cohortSystem) Op(w workload, c, i int) opFunc {
	d := s.d
	if len(s.stores) < 3 {
		return func(context.Context, int) error { return errors.New("not started") }
	}
	leader, follower := s.stores[s.leader], s.stores[s.follower]
	switch w.ID {
	case "write-leader":
		return func(ctx context.Context, k int) error { return leader.Set(ctx, d.keys[k], d.value) }
	case "write-all":
		st := s.stores[i%3]
		return func(ctx context.Context, k int) error { return st.Set(ctx, d.keys[k], d.value) }
	case "read-lin-leader", "read-lin-follower":
		st := leader
		if w.ID == "read-lin-follower" {
			st = follower
		}
		return func(ctx context.Context, k int) error {
			v, err := st.Get(ctx, d.keys[k])
			if err != nil {
				return err
			}
			return checkValue(v, d)
		}
	case "read-stale":
		stale := kv.Stale()
		return func(ctx context.Context, k int) error {
			v, err := follower.Get(ctx, d.keys[k], stale)
			if err != nil {
				return err
			}
			return checkValue(v, d)
		}
	case "list100":
		limit := kv.Limit(100)
		return func(ctx context.Context, k int) error {
			pairs, err := leader.List(ctx, d.prefix(k), limit)
			if err != nil {
				return err
			}
			if len(pairs) != 100 {
				return fmt.Errorf("list returned %d pairs, want 100", len(pairs))
			}
			return nil
		}
	}
	return nil
}

func (s *cohortSystem) Close() error {
	var errs []error
	for _, st := range s.stores {
		errs = append(errs, st.Close())
	}
	return errors.Join(errs...)
}
