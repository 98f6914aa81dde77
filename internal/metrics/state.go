package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// stateCollector reports the gauges, read from the Store at each scrape.
type stateCollector struct {
	read func() (State, bool)

	hasLeader, isLeader, halted, term, commit, applied, lastContact,
	dbSize, dbInUse, quota, data, members *prometheus.Desc
}

func newStateCollector(labels prometheus.Labels, read func() (State, bool)) *stateCollector {
	d := func(name, help string, varLabels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, varLabels, labels)
	}
	return &stateCollector{
		read:        read,
		hasLeader:   d("has_leader", "1 when this member knows a leader, else 0."),
		isLeader:    d("is_leader", "1 when this member is the leader, else 0."),
		halted:      d("halted", "1 when this member halted (its storage failed; see the logs), else 0."),
		term:        d("raft_term", "The current Raft term as this member knows it."),
		commit:      d("commit_index", "The last Raft log index this member knows to be committed."),
		applied:     d("applied_index", "The last Raft log index the data on this member reflects."),
		lastContact: d("raft_last_contact_seconds", "Time since a leader last contacted this member (since it started, if none has); 0 on the leader. Absent on a halted member."),
		dbSize:      d("db_size_bytes", "Size of the data file (bbolt), in bytes; 0 in memory."),
		dbInUse:     d("db_size_in_use_bytes", "Bytes of the data file in use: its size less its free pages."),
		quota:       d("quota_bytes", "The space quota of the data, in bytes; 0 when there is none."),
		data:        d("data_bytes", "The logical size of the data, which the space quota bounds: keys and their stored records, in bytes."),
		members:     d("members", "Members this member sees, by gossip status (alive, suspect, dead, left).", "status"),
	}
}

// Describe implements prometheus.Collector.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.hasLeader, c.isLeader, c.halted, c.term, c.commit, c.applied,
		c.lastContact, c.dbSize, c.dbInUse, c.quota, c.data, c.members} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. A scrape runs it on a goroutine
// of the registry's: it must not panic the host, whatever state the Store
// is in.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	defer func() { _ = recover() }()
	st, ok := c.read()
	if !ok {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, lv ...string) {
		if m, err := prometheus.NewConstMetric(d, prometheus.GaugeValue, v, lv...); err == nil {
			ch <- m
		}
	}
	gauge(c.hasLeader, b2f(st.HasLeader))
	gauge(c.isLeader, b2f(st.IsLeader))
	gauge(c.halted, b2f(st.Halted))
	gauge(c.term, float64(st.Term))
	gauge(c.commit, float64(st.CommitIndex))
	gauge(c.applied, float64(st.AppliedIndex))
	if st.LastContact >= 0 {
		gauge(c.lastContact, st.LastContact.Seconds())
	}
	gauge(c.dbSize, float64(st.DBSize))
	gauge(c.dbInUse, float64(st.DBInUse))
	gauge(c.quota, float64(st.Quota))
	gauge(c.data, float64(st.DataBytes))
	gauge(c.members, float64(st.Alive), "alive")
	gauge(c.members, float64(st.Suspect), "suspect")
	gauge(c.members, float64(st.Dead), "dead")
	gauge(c.members, float64(st.Left), "left")
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
