package kv

import (
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/metrics"
)

// storeMetrics are a Store's Prometheus collectors (Config.Metrics). A nil
// *storeMetrics is valid: every method does nothing, so that a Store
// without metrics pays one comparison per call.
type storeMetrics struct {
	*metrics.Metrics
}

// newMetrics makes s's collectors, or nil without Config.Metrics. They
// are registered by registerMetrics once the Store runs.
func newMetrics(s *Store) *storeMetrics {
	if s.cfg.Metrics == nil {
		return nil
	}
	return &storeMetrics{
		Metrics: metrics.New(s.cfg.NodeID, s.metricsState),
	}
}

// registerMetrics registers s's collectors with Config.Metrics.
func (s *Store) registerMetrics() error {
	if s.met == nil {
		return nil
	}
	if err := s.met.Register(s.cfg.Metrics); err != nil {
		return fmt.Errorf("%w: Metrics: %v", ErrInvalidConfig, err)
	}
	return nil
}

// metricsState reads the gauges for a scrape. It blocks on nothing and is
// safe at any time: during Open, while halted, during and after Close.
func (s *Store) metricsState() (metrics.State, bool) {
	if s.isClosed() || s.raft == nil || s.gossip == nil {
		return metrics.State{}, false
	}
	st := metrics.State{LastContact: -1}
	st.Quota, st.DataBytes = s.spaceUsage()
	st.AppliedIndex = s.eng.AppliedIndex()
	st.DBSize, st.DBInUse = s.eng.FileSize()
	st.Term = s.raft.CurrentTerm()
	st.CommitIndex = s.raft.CommitIndex()
	if s.halter.halted() != nil {
		st.Halted = true
	} else {
		_, leader := s.raft.LeaderWithID()
		st.HasLeader = leader != ""
		st.IsLeader = s.raft.State() == raft.Leader
		switch t := s.raft.LastContact(); {
		case st.IsLeader:
			st.LastContact = 0
		case t.IsZero(): // never: since this start
			st.LastContact = time.Since(time.Unix(0, s.started))
		default:
			st.LastContact = time.Since(t)
		}
	}
	for _, m := range s.Members() {
		switch m.Status {
		case StatusAlive:
			st.Alive++
		case StatusSuspect:
			st.Suspect++
		case StatusDead:
			st.Dead++
		case StatusLeft:
			st.Left++
		}
	}
	return st, true
}

// wrote counts a user's write call by its outcome.
func (m *storeMetrics) wrote(err error) {
	switch {
	case m == nil:
	case err == nil:
		m.WritesOK.Inc()
	case errors.Is(err, ErrConflict):
		m.WritesConflict.Inc()
	default:
		m.WritesError.Inc()
	}
}

// wroteAt counts the write call whose result *err is, for a defer.
func (m *storeMetrics) wroteAt(err *error) {
	if m != nil {
		m.wrote(*err)
	}
}

// read counts a user's read call.
func (m *storeMetrics) read(stale bool) {
	switch {
	case m == nil:
	case stale:
		m.ReadsStale.Inc()
	default:
		m.ReadsLinearizable.Inc()
	}
}

// now is the start of a measurement: the zero time without metrics, so
// that a Store without them reads no clock.
func (m *storeMetrics) now() time.Time {
	if m == nil {
		return time.Time{}
	}
	return time.Now()
}

// since records the time since t0 (from now) in histogram h.
func (m *storeMetrics) since(h metrics.Hist, t0 time.Time) {
	if m != nil {
		m.Observe(h, time.Since(t0))
	}
}

// observer returns the function that records durations in h, or nil.
func (m *storeMetrics) observer(h metrics.Hist) func(time.Duration) {
	if m == nil {
		return nil
	}
	return m.Observer(h)
}

// leaderSeen counts a change of leader seen in an observation, given the
// leader this member knew before it (empty: none).
func (m *storeMetrics) leaderSeen(before, now raft.ServerID) {
	if m != nil && now != "" && now != before {
		m.LeaderChanges.Inc()
	}
}

// unregister removes the collectors from the registry.
func (m *storeMetrics) unregister() {
	if m != nil {
		m.Unregister()
	}
}

// timedFSM is the state machine as Raft sees it when metrics are on: it
// times each batch applied and each snapshot. (fsm.go stays the state
// machine alone.)
type timedFSM struct {
	*fsm
	met *storeMetrics
}

var _ raft.BatchingFSM = (*timedFSM)(nil)

// Apply implements raft.FSM.
func (t *timedFSM) Apply(l *raft.Log) any { return t.ApplyBatch([]*raft.Log{l})[0] }

// ApplyBatch implements raft.BatchingFSM.
func (t *timedFSM) ApplyBatch(logs []*raft.Log) []any {
	t0 := time.Now()
	out := t.fsm.ApplyBatch(logs)
	t.met.since(metrics.FSMApply, t0)
	return out
}

// Snapshot implements raft.FSM; the time runs until Persist has written
// the snapshot.
func (t *timedFSM) Snapshot() (raft.FSMSnapshot, error) {
	t0 := time.Now()
	snap, err := t.fsm.Snapshot()
	if err != nil {
		return nil, err
	}
	return &timedSnapshot{FSMSnapshot: snap, met: t.met, t0: t0}, nil
}

type timedSnapshot struct {
	raft.FSMSnapshot
	met *storeMetrics
	t0  time.Time
}

// Persist implements raft.FSMSnapshot.
func (t *timedSnapshot) Persist(sink raft.SnapshotSink) error {
	err := t.FSMSnapshot.Persist(sink)
	if err == nil {
		t.met.since(metrics.Snapshot, t.t0)
	}
	return err
}
