package kv

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cohortkv/kv/internal/metrics"
)

// Counting a call costs no allocation, with metrics or without.
func TestMetrics_HotPathAllocatesNothing(t *testing.T) {
	conflict := fmt.Errorf("kv: %w", ErrConflict)
	other := fmt.Errorf("kv: %w", ErrNoLeader)
	s := &Store{cfg: Config{NodeID: "n1", Metrics: prometheus.NewRegistry()}}
	for _, m := range []*storeMetrics{newMetrics(s), nil} {
		n := testing.AllocsPerRun(1000, func() {
			m.wrote(nil)
			m.wrote(conflict)
			m.wrote(other)
			m.read(true)
			m.read(false)
			m.since(metrics.ReadIndex, m.now())
			m.leaderSeen("a", "b")
		})
		if n != 0 {
			t.Errorf("metrics %v: %v allocations per call", m != nil, n)
		}
	}
}
