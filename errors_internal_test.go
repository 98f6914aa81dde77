package kv

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/storage"
	"github.com/cohortkv/kv/internal/transport"
)

// Errors keep their meaning across the wire: the follower learns whether
// the leader certainly did nothing (retry, elsewhere if need be), may have
// applied the batch (send it again under the same sequences: errUnsure),
// or refused it (nothing applied: the writers hear why).
func TestErrors_RoundTripOverTheWire(t *testing.T) {
	cases := []struct {
		name      string
		local     error
		wantIs    error
		wantRetry bool
	}{
		{"not leader", fmt.Errorf("%w: x", errNotLeader), errNotLeader, true},
		{"closing", ErrClosed, errNotLeader, true},
		{"deadline before sending", context.DeadlineExceeded, ErrNoLeader, true},
		{"cancelled before sending", context.Canceled, ErrNoLeader, true},
		{"disk full refusal", errDiskFullRefused, ErrDiskFull, false},
		{"leadership lost", ErrLeadershipLost, errUnsure, false},
		{"raft not leader", translateRaftErr(raft.ErrNotLeader), errNotLeader, true},
		{"raft transfer", translateRaftErr(raft.ErrLeadershipTransferInProgress), errNotLeader, true},
		{"raft enqueue timeout", translateRaftErr(raft.ErrEnqueueTimeout), errNotLeader, true},
		{"raft lost", translateRaftErr(raft.ErrLeadershipLost), errUnsure, false},
		{"attempt unsure", fmt.Errorf("%w: x", errUnsure), errUnsure, false},
		{"closed in flight", errClosedUnknown, errUnsure, false},
		{"log append disk full", outcomeOf(fmt.Errorf("append: %w", storage.ErrDiskFull)), errUnsure, false},
		{"log append damaged", outcomeOf(fmt.Errorf("append: %w", storage.ErrCorrupt)), errUnsure, false},
		{"log append other", outcomeOf(errors.New("eio")), errUnsure, false},
		{"ctx after send", fmt.Errorf("kv: write: %w (%w)", context.DeadlineExceeded, ErrOutcomeUnknown), errUnsure, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wire := toWire(tc.local)
			var te *transport.Error
			if !errors.As(wire, &te) {
				t.Fatalf("toWire(%v) = %v, not a *transport.Error", tc.local, wire)
			}
			got, retry := fromWire(wire)
			if !errors.Is(got, tc.wantIs) || retry != tc.wantRetry {
				t.Fatalf("fromWire(toWire(%v)) = %v, retry %v; want Is %v, retry %v", tc.local, got, retry, tc.wantIs, tc.wantRetry)
			}
			if errors.Is(got, ErrLeadershipLost) {
				t.Fatalf("fromWire(toWire(%v)) = %v: a write must not see ErrLeadershipLost", tc.local, got)
			}
		})
	}
	if toWire(nil) != nil {
		t.Fatal("toWire(nil) != nil")
	}
	if err, retry := fromWire(&transport.Error{Code: codeBadRequest, Msg: "bad"}); retry || !errors.Is(err, errRefused) {
		t.Fatalf("bad request: %v, retry %v", err, retry)
	}
	if err, retry := fromWire(&transport.Error{Code: codeReplyTooLarge, Msg: "big"}); retry || !errors.Is(err, errReplyTooLarge) {
		t.Fatalf("reply too large: %v, retry %v", err, retry)
	}
	if err, retry := fromWire(&transport.Error{Code: transport.CodeInternal, Msg: "boom"}); retry || !errors.Is(err, errUnsure) {
		t.Fatalf("internal: %v, retry %v", err, retry)
	}
	if err, retry := fromWire(fmt.Errorf("%w: dial", transport.ErrNotSent)); !retry || !errors.Is(err, ErrNoLeader) {
		t.Fatalf("not sent: %v, retry %v", err, retry)
	}
	if err, retry := fromWire(fmt.Errorf("%w: eof", transport.ErrConnLost)); retry || !errors.Is(err, errUnsure) {
		t.Fatalf("conn lost: %v, retry %v", err, retry)
	}
	if err, retry := fromWire(context.DeadlineExceeded); retry || !errors.Is(err, errUnsure) {
		t.Fatalf("call timed out: %v, retry %v", err, retry)
	}
	if err := translateRaftErr(raft.ErrRaftShutdown); !errors.Is(err, ErrClosed) {
		t.Fatalf("raft shutdown: %v", err)
	}
	other := errors.New("disk on fire")
	if err := translateRaftErr(other); err != other {
		t.Fatalf("other: %v", err)
	}
	if err := toWire(other); err != other {
		t.Fatalf("toWire(other) = %v", err)
	}
}

func TestState_String(t *testing.T) {
	for s, want := range map[State]string{StateFollower: "follower", StateCandidate: "candidate", StateLeader: "leader", StateShutdown: "shutdown", State(9): "State(9)"} {
		if got := s.String(); got != want {
			t.Errorf("%d: %q, want %q", int(s), got, want)
		}
	}
}

// The three outcomes of a write, as its error tells them: errors of writes
// handed to Raft that do not say "not applied" wrap ErrOutcomeUnknown, and
// keep their cause; errors of writes never sent do not.
func TestErrors_WriteOutcomes(t *testing.T) {
	unknown := []error{
		ErrLeadershipLost,
		errClosedUnknown,
		outcomeOf(translateRaftErr(raft.ErrRaftShutdown)),
		outcomeOf(ErrClosed), // the state machine stopped with the entry committed
		outcomeOf(fmt.Errorf("write log: %w", storage.ErrDiskFull)),
		outcomeOf(fmt.Errorf("write log: %w", storage.ErrCorrupt)),
		outcomeOf(errors.New("eio")),
		outcomeOf(translateRaftErr(raft.ErrLeadershipLost)),
		ErrSessionExpired,
	}
	for _, err := range unknown {
		if !errors.Is(err, ErrOutcomeUnknown) {
			t.Errorf("%v: does not wrap ErrOutcomeUnknown", err)
		}
	}
	if err := outcomeOf(fmt.Errorf("x: %w", storage.ErrDiskFull)); !errors.Is(err, storage.ErrDiskFull) {
		t.Errorf("%v: lost its cause", err)
	}
	if err := outcomeOf(fmt.Errorf("x: %w", storage.ErrCorrupt)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("%v: lost its cause", err)
	}
	if !errors.Is(errClosedUnknown, ErrClosed) {
		t.Errorf("%v: does not wrap ErrClosed", errClosedUnknown)
	}
	if outcomeOf(nil) != nil {
		t.Errorf("outcomeOf(nil) != nil")
	}
	for _, err := range []error{ErrClosed, ErrNoLeader, ErrEmptyKey, ErrKeyTooLarge, ErrValueTooLarge, errNotLeader, ErrConflict, &ConflictError{}, ErrInvalidTxn, ErrTxnTooLarge, ErrReservedKey, errUnsure, errSessionLost} {
		if errors.Is(err, ErrOutcomeUnknown) {
			t.Errorf("%v wraps ErrOutcomeUnknown", err)
		}
	}
}

// A read that found no leader says so in words that fit a read, whether
// its last attempt was refused by a leader that lost its majority or lost
// its connection to the leader: nothing about a write, nothing unknown.
func TestReadErrors_SpeakOfReads(t *testing.T) {
	for name, last := range map[string]error{
		"leadership not confirmed": verifyErr(raft.ErrLeadershipLost),
		"connection lost":          readRPCErr("127.0.0.1:1", fmt.Errorf("%w: reset", transport.ErrConnLost)),
		"leader gave up":           readRPCErr("127.0.0.1:1", &transport.Error{Code: codeUnknown, Msg: "leadership lost"}),
	} {
		s := &Store{ctx: context.Background(), halter: newHalter()}
		err := s.readGiveUp(context.DeadlineExceeded, last)
		if !errors.Is(err, ErrNoLeader) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: %v; want ErrNoLeader and DeadlineExceeded", name, err)
		}
		if errors.Is(err, ErrOutcomeUnknown) || errors.Is(err, errUnsure) || strings.Contains(err.Error(), "write") ||
			strings.Contains(err.Error(), "unknown") || !strings.Contains(err.Error(), "read") {
			t.Errorf("%s: %v: not the words of a read", name, err)
		}
	}
	if err := verifyErr(raft.ErrRaftShutdown); !errors.Is(err, ErrClosed) {
		t.Errorf("verifyErr(shutdown) = %v, want ErrClosed", err)
	}
}

// An unknown outcome keeps what the last attempt met as text, and wraps a
// full disk or damage, but never an error that says "not applied".
func TestErrors_UnknownOutcomeWrapsNoRefusal(t *testing.T) {
	for _, last := range []error{nil, ErrNoLeader, fmt.Errorf("%w: x", errNotLeader), errDiskFullRefused, fmt.Errorf("%w: bad", errRefused), fmt.Errorf("%w: leader: eio", storage.ErrCorrupt), errSessionLost} {
		err := unknownOutcome(context.DeadlineExceeded, last)
		if !errors.Is(err, ErrOutcomeUnknown) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("last %v: %v does not wrap ErrOutcomeUnknown and the ctx's error", last, err)
		}
		for _, notApplied := range []error{ErrNoLeader, errNotLeader, errDiskFullRefused, errRefused, errSessionLost} {
			if errors.Is(err, notApplied) {
				t.Errorf("last %v: %v wraps %v", last, err, notApplied)
			}
		}
		if last != nil && !strings.Contains(err.Error(), last.Error()) {
			t.Errorf("%v does not say what the last attempt met (%v)", err, last)
		}
	}
	if err := unknownOutcome(context.Canceled, errDiskFullRefused); !errors.Is(err, ErrDiskFull) {
		t.Errorf("%v: lost the full disk", err)
	}
	if err := unknownOutcome(context.Canceled, fmt.Errorf("%w: leader: eio", storage.ErrCorrupt)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("%v: lost the damage", err)
	}
}
