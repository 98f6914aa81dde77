// Package metrics holds the Prometheus collectors of one Store: counters
// and histograms the Store updates as it works, and gauges read when the
// registry is scraped. Every series carries the constant label node, so
// that several Stores can share one registry.
//
// It never touches Prometheus's default registry (the Store hands it the
// Registerer of Config.Metrics) nor the global sink of hashicorp/go-metrics:
// the figures operators take from hashicorp/raft's own metrics are measured
// here instead.
package metrics

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Namespace prefixes every series.
const Namespace = "cohortkv"

// Hist names one of the latency histograms.
type Hist int

// The latency histograms.
const (
	LogFsync   Hist = iota // a Raft log append, with its fdatasync
	DataCommit             // a commit of the data file (bbolt), with its fsync
	Snapshot               // a state machine snapshot taken and persisted
	Forward                // a follower's forwarded write batch, round trip to the leader
	ReadIndex              // obtaining a read index for a linearizable read
	FSMApply               // the state machine applying a batch of committed entries
	RaftCommit             // on the leader: an entry handed to Raft until its result
	nHist
)

// LatencyBuckets are the buckets of the latency histograms, in seconds:
// 100 µs doubling to about 6.5 s, which spans an fsync on fast NVMe to one
// on a disk in trouble.
var LatencyBuckets = prometheus.ExponentialBuckets(0.0001, 2, 17)

// SnapshotBuckets are the buckets of the snapshot histogram, in seconds:
// 10 ms doubling to about 11 minutes (a snapshot copies the data file).
var SnapshotBuckets = prometheus.ExponentialBuckets(0.01, 2, 17)

var hists = [nHist]struct {
	name, help string
	buckets    []float64
}{
	LogFsync:   {"log_fsync_duration_seconds", "Latency of Raft log appends, each with its fdatasync, on this member.", nil},
	DataCommit: {"data_commit_duration_seconds", "Latency of commits of the data file (bbolt), each with its fsync.", nil},
	Snapshot:   {"snapshot_duration_seconds", "Time to take a state machine snapshot and persist it.", SnapshotBuckets},
	Forward:    {"forward_duration_seconds", "Round trip of a write batch forwarded by this follower to the leader.", nil},
	ReadIndex:  {"read_index_duration_seconds", "Time to obtain a read index (the leader's confirmation) for a linearizable read.", nil},
	FSMApply:   {"fsm_apply_duration_seconds", "Time the state machine takes to apply a batch of committed log entries.", nil},
	RaftCommit: {"raft_commit_duration_seconds", "On the leader: from handing an entry to Raft to its result (replicated to a majority, committed, applied).", nil},
}

// State is what the gauges report, read at each scrape.
type State struct {
	HasLeader    bool // this member knows a leader
	IsLeader     bool
	Halted       bool
	Term         uint64
	CommitIndex  uint64
	AppliedIndex uint64
	// LastContact is how long ago a leader last contacted this member
	// (since it started, if none has), 0 on the leader itself; negative
	// when not reported (a halted member).
	LastContact time.Duration
	DBSize      int64 // the data file's size, bytes
	DBInUse     int64 // DBSize less its free pages
	Quota       int64 // the space quota, bytes; 0 for none
	DataBytes   int64 // the logical size of the data the quota counts, bytes
	// Members by gossip status.
	Alive, Suspect, Dead, Left int
}

// Metrics are the collectors of one Store. The counters and histograms
// are safe for concurrent use and allocate nothing when updated.
type Metrics struct {
	WritesOK, WritesConflict, WritesError prometheus.Counter
	ReadsLinearizable, ReadsStale         prometheus.Counter
	LeaderChanges                         prometheus.Counter

	hists [nHist]prometheus.Histogram
	cs    []prometheus.Collector

	reg prometheus.Registerer // set by Register
}

// New makes the collectors of the Store named node. read returns the
// gauges' values at each scrape, or false to report none (the Store is
// closed); it must not block and must be safe to call at any time.
func New(node string, read func() (State, bool)) *Metrics {
	labels := prometheus.Labels{"node": node}
	m := &Metrics{}
	writes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "writes_total", ConstLabels: labels,
		Help: "Write calls on this member (Set, Delete, CompareAndSet, Txn with writes, the async forms, lease calls) by outcome: ok, conflict (ErrConflict) or error.",
	}, []string{"result"})
	m.WritesOK = writes.WithLabelValues("ok")
	m.WritesConflict = writes.WithLabelValues("conflict")
	m.WritesError = writes.WithLabelValues("error")
	reads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "reads_total", ConstLabels: labels,
		Help: "Read calls on this member (Get, GetEntry, List, ListEntries, Txn without writes) by consistency: linearizable or stale.",
	}, []string{"consistency"})
	m.ReadsLinearizable = reads.WithLabelValues("linearizable")
	m.ReadsStale = reads.WithLabelValues("stale")
	m.LeaderChanges = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "leader_changes_seen_total", ConstLabels: labels,
		Help: "Changes of leader this member has seen (to a known leader other than the last one it knew).",
	})
	m.cs = append(m.cs, writes, reads, m.LeaderChanges)
	for i, h := range hists {
		b := h.buckets
		if b == nil {
			b = LatencyBuckets
		}
		m.hists[i] = prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: h.name, Help: h.help, ConstLabels: labels, Buckets: b,
		})
		m.cs = append(m.cs, m.hists[i])
	}
	m.cs = append(m.cs, newStateCollector(labels, read))
	return m
}

// Register registers every collector with reg, or none: on an error (a
// Store of the same node already registered there) those registered are
// unregistered again.
func (m *Metrics) Register(reg prometheus.Registerer) error {
	for i, c := range m.cs {
		if err := reg.Register(c); err != nil {
			for _, done := range m.cs[:i] {
				reg.Unregister(done)
			}
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return errors.New("metrics of a member with this NodeID are already registered")
			}
			return err
		}
	}
	m.reg = reg
	return nil
}

// Unregister removes the collectors from the registry Register used, so
// that a Store of the same node may register again. It is idempotent.
func (m *Metrics) Unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.cs {
		m.reg.Unregister(c)
	}
	m.reg = nil
}

// Observe records d in histogram h.
func (m *Metrics) Observe(h Hist, d time.Duration) { m.hists[h].Observe(d.Seconds()) }

// Observer returns a function that records a duration in histogram h.
func (m *Metrics) Observer(h Hist) func(time.Duration) {
	o := m.hists[h]
	return func(d time.Duration) { o.Observe(d.Seconds()) }
}
