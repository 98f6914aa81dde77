package kv

import "testing"

// keep counts the newest entries within the byte bound, follows a log
// truncated by a new leader, and starts over after a gap.
func TestLogSizes_Keep(t *testing.T) {
	r := newLogSizes(100)
	if got := r.keep(100, 10); got != 100 {
		t.Fatalf("nothing tracked: keep %d, want TrailingLogs", got)
	}
	for i := uint64(1); i <= 10; i++ {
		r.add(i, 10)
	}
	for _, c := range []struct {
		logs  uint64
		bytes int64
		want  uint64
	}{{100, 35, 3}, {100, 5, 1}, {2, 1000, 2}, {100, 1000, 10}} {
		if got := r.keep(c.logs, c.bytes); got != c.want {
			t.Errorf("keep(%d, %d) = %d, want %d", c.logs, c.bytes, got, c.want)
		}
	}
	r.add(9, 100) // entries 9 and 10 replaced by a new leader's
	if got := r.keep(100, 125); got != 3 || r.last != 9 {
		t.Errorf("after a truncation: keep %d (last %d), want 3 (9)", got, r.last)
	}
	r.add(50, 7) // a snapshot installed: the log starts after it
	if got := r.keep(100, 1000); got != 1 {
		t.Errorf("after a gap: keep %d, want 1", got)
	}
	small := newLogSizes(4) // full ring: older entries unknown
	for i := uint64(1); i <= 6; i++ {
		small.add(i, 1)
	}
	if got := small.keep(4, 1000); got != 4 {
		t.Errorf("full ring within the bound: keep %d, want 4", got)
	}
}
