package kv

import (
	"errors"
	"testing"
)

func TestClientSession_Floor(t *testing.T) {
	s := newClientSession(newSessionID(3, 4))
	for want := uint64(1); want <= 5; want++ {
		if got := s.assign(); got != want {
			t.Fatalf("assign = %d, want %d", got, want)
		}
	}
	for _, step := range []struct {
		answered, floor uint64
	}{{2, 1}, {3, 1}, {1, 4}, {1, 4}, {5, 4}, {4, 6}, {0, 6}} {
		s.answered(step.answered)
		if got := s.floorNow(); got != step.floor {
			t.Fatalf("after %d answered: floor %d, want %d", step.answered, got, step.floor)
		}
	}
	if len(s.done) != 0 {
		t.Fatalf("answered sequences kept above the floor: %v", s.done)
	}
}

// settle's answers to the statuses that say a write was not applied
// because of its session.
func TestPipeline_SettleSessionStatuses(t *testing.T) {
	p := &pipeline{}
	newW := func(maybe bool) *pendingWrite {
		w := newOpWrite(OpSet("k", nil))
		w.done = make(chan error, 1)
		w.sess = newClientSession(newSessionID(1, 1))
		w.one[0].seq = w.sess.assign()
		w.maybe.Store(maybe)
		w.state.Store(wSent)
		return w
	}
	// Never applied: sent again under a new session.
	w := newW(false)
	if !p.settle(w, []cmdResult{{status: resNoSession}}) {
		t.Fatal("a write whose attempts had no effect was not sent again")
	}
	if !w.sess.lost.Load() || w.state.Load() != wQueued || !errors.Is(w.lastErr(), errSessionLost) {
		t.Fatalf("session lost %v, state %d, last %v", w.sess.lost.Load(), w.state.Load(), w.lastErr())
	}
	// May have been applied under the lost session: its outcome is
	// unknown, and it is not sent again.
	w = newW(true)
	if p.settle(w, []cmdResult{{status: resNoSession}}) {
		t.Fatal("a write that may have been applied was sent again under a new session")
	}
	if err := <-w.done; !errors.Is(err, ErrSessionExpired) || !errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("answer %v, want ErrSessionExpired and ErrOutcomeUnknown", err)
	}
	w = newW(false)
	if p.settle(w, []cmdResult{{status: resStale}}) {
		t.Fatal("a stale write was sent again")
	}
	if err := <-w.done; !errors.Is(err, ErrSessionExpired) {
		t.Fatalf("answer %v, want ErrSessionExpired", err)
	}
	if got := w.sess.floorNow(); got != 2 {
		t.Fatalf("an answered write left the floor at %d", got)
	}
}
