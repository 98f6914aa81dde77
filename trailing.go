package kv

import (
	"math"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// The byte bound on the log (Config.TrailingBytes). After a snapshot raft
// keeps TrailingLogs entries behind the newest, whatever their size; with
// group commit an entry holds up to 1 MiB, so the count alone could keep
// GiB. logSizes tracks the sizes of the newest entries as they are stored;
// just before each snapshot (when the state machine is asked for one, and
// raft compacts the log right after it is written) the Store sets raft's
// TrailingLogs, through ReloadConfig, to the number of newest entries that
// fit in TrailingBytes, at most Config.TrailingLogs, at least one.

// noTrailingBound turns the bound off, for tests that show what it does.
var noTrailingBound atomic.Bool

// maxTrackedEntries bounds the sizes kept in memory (4 bytes each).
const maxTrackedEntries = 1 << 18

// logSizes is a ring of the sizes of the newest log entries, in index
// order. Safe for concurrent use.
type logSizes struct {
	mu   sync.Mutex
	ring []uint32
	head int    // where the next size goes
	n    int    // sizes held
	last uint64 // index of the newest (valid when n > 0)
}

func newLogSizes(trailingLogs uint64) *logSizes {
	return &logSizes{ring: make([]uint32, max(1, min(trailingLogs, maxTrackedEntries)))}
}

// entrySize is about what an entry takes in the log.
func entrySize(l *raft.Log) int { return len(l.Data) + len(l.Extensions) + 32 }

// add records the size of the entry at index, which follows the last one
// added, or replaces it and those after it (a follower's log truncated by
// a new leader); after a gap (a snapshot installed) it starts over.
func (r *logSizes) add(index uint64, size int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n > 0 && index != r.last+1 {
		if index <= r.last && r.last-index < uint64(r.n) {
			drop := int(r.last - index + 1)
			r.n -= drop
			r.head = (r.head - drop + len(r.ring)) % len(r.ring)
		} else {
			r.n = 0
		}
	}
	r.ring[r.head] = uint32(min(size, math.MaxUint32))
	r.head = (r.head + 1) % len(r.ring)
	r.n = min(r.n+1, len(r.ring))
	r.last = index
}

// stored records the entries of one append.
func (r *logSizes) stored(logs []*raft.Log) {
	for _, l := range logs {
		r.add(l.Index, entrySize(l))
	}
}

// keep is how many of the newest entries to keep behind a snapshot: at
// most maxLogs, the newest always, and the others while their sizes add
// up to at most maxBytes. Entries it does not know (older than it tracks)
// are kept only when the ring is full and within maxBytes, as raft would.
func (r *logSizes) keep(maxLogs uint64, maxBytes int64) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == 0 || maxBytes < 0 {
		return maxLogs
	}
	var count uint64
	var sum int64
	for i := 0; i < r.n && count < maxLogs; i++ {
		size := int64(r.ring[(r.head-1-i+2*len(r.ring))%len(r.ring)])
		if count > 0 && sum+size > maxBytes {
			return count
		}
		sum += size
		count++
	}
	if count < maxLogs && r.n == len(r.ring) {
		return maxLogs
	}
	return max(count, 1)
}

// boundTrailing sets raft's TrailingLogs for the compaction that follows
// the snapshot being taken. It runs as the state machine is asked for a
// snapshot.
func (s *Store) boundTrailing() {
	r := s.bounded.Load()
	if s.cfg.TrailingBytes < 0 || r == nil || noTrailingBound.Load() {
		return
	}
	n := s.sizes.keep(s.cfg.TrailingLogs, s.cfg.TrailingBytes)
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	rc := r.ReloadableConfig()
	if rc.TrailingLogs == n {
		return
	}
	rc.TrailingLogs = n
	if err := r.ReloadConfig(rc); err != nil {
		s.logger.Warn("cannot bound the log behind snapshots", "trailing_logs", n, "error", err)
		return
	}
	s.logger.Debug("log behind the next snapshot bounded", "trailing_logs", n, "trailing_bytes", s.cfg.TrailingBytes)
}

// primeSizes fills s.sizes from the log as stored (at Open), newest first,
// as far back as keep may look.
func (s *Store) primeSizes() error {
	if s.logs == nil {
		return nil
	}
	type rec struct {
		index uint64
		size  int
	}
	var recs []rec
	var sum int64
	err := s.logs.RecordSizes(func(index uint64, size int) bool {
		recs = append(recs, rec{index, size})
		sum += int64(size)
		return uint64(len(recs)) < min(s.cfg.TrailingLogs, maxTrackedEntries) && sum <= s.cfg.TrailingBytes
	})
	if err != nil {
		return err
	}
	for i := len(recs) - 1; i >= 0; i-- {
		s.sizes.add(recs[i].index, recs[i].size)
	}
	return nil
}
