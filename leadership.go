package kv

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/transport"
)

// maxTransferTarget bounds the NodeID a transfer request names.
const maxTransferTarget = 1024

// TransferLeadership hands the leadership of the cluster over to the voter
// whose NodeID is to or, when to is empty, to the voter that is most caught
// up, and returns once this instance knows the new leader. It works on any
// instance: a follower asks the leader to hand over (as Close does on the
// leader before it stops). Use it before maintenance on the leader's
// machine, or to move the leader next to its clients. Writes and
// linearizable reads wait for the moment of the election (about one
// ElectionTimeout) and go on with the new leader; none fails for it.
//
// Naming the member that already leads does nothing and returns nil. A
// NodeID that is not a voter in the Raft configuration (no such member, or
// a non-voter), or an empty to when the leader is the only voter, gives an
// error wrapping ErrNotVoter, and nothing changes. A hand-over that does not
// take (the target is behind or unreachable, another member wins the
// election, no leader is known) is tried again, from whoever leads, until
// ctx ends; the error then wraps ctx's error and names the last reason.
func (s *Store) TransferLeadership(ctx context.Context, to string) error {
	if err := s.usable(); err != nil {
		return err
	}
	if len(to) > maxTransferTarget {
		return fmt.Errorf("%w: NodeID of %d bytes", ErrNotVoter, len(to))
	}
	var from string // with to empty: the leader to move away from
	var last error
	for b := newBackoff(); ; {
		if err := s.usable(); err != nil {
			return err
		}
		_, id := s.raft.LeaderWithID()
		lead := string(id)
		if lead == "" {
			last = ErrNoLeader
		} else {
			switch {
			case to != "" && lead == to:
				return nil
			case to == "" && from == "":
				from = lead
			case to == "" && lead != from:
				return nil
			}
			err := s.transferFrom(ctx, lead, to)
			if errors.Is(err, ErrNotVoter) {
				return err
			}
			if err == nil {
				// The leader stepped down: learn who leads now, then
				// check it is the one asked for.
				if err = s.awaitLeaderOtherThan(ctx, lead); err == nil {
					continue
				}
			}
			last = err
		}
		if err := b.wait(ctx, s.ctx.Done()); err != nil {
			if errors.Is(err, ErrClosed) {
				return err
			}
			return fmt.Errorf("kv: leadership transfer: %w (last attempt: %v)", err, last)
		}
	}
}

// transferAttempt bounds one hand-over: raft gives the target an election
// timeout to catch up and another to win.
func (s *Store) transferAttempt() time.Duration {
	return 3*s.cfg.ElectionTimeout + s.cfg.HeartbeatTimeout
}

// transferFrom has lead, the leader as this member knows it, hand over to
// to; nil means the leader stepped down.
func (s *Store) transferFrom(ctx context.Context, lead, to string) error {
	if lead == s.cfg.NodeID {
		return s.transferLocal(ctx, to)
	}
	addr, ok := s.leaderAddr()
	if !ok {
		return ErrNoLeader
	}
	actx, cancel := context.WithTimeout(ctx, s.transferAttempt())
	defer cancel()
	_, err := s.pool.Call(actx, addr, methodTransfer, []byte(to))
	var re *transport.Error
	if errors.As(err, &re) && re.Code == codeBadRequest {
		return fmt.Errorf("%w (the leader says: %s)", ErrNotVoter, re.Msg)
	}
	if err != nil {
		err, _ = fromWire(err)
		return err
	}
	return nil
}

// transferLocal hands this leader's leadership over to to (empty: any
// voter) and returns once it has stepped down. Without leadership it
// returns errNotLeader.
func (s *Store) transferLocal(ctx context.Context, to string) error {
	if s.raft.State() != raft.Leader {
		return errNotLeader
	}
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return translateRaftErr(err)
	}
	var fut raft.Future
	if to == "" {
		if !s.hasOtherVoter() {
			return fmt.Errorf("%w: %s is the only voter", ErrNotVoter, s.cfg.NodeID)
		}
		s.logger.Info("handing leadership over to the voter most caught up")
		fut = s.raft.LeadershipTransfer()
	} else {
		var target *raft.Server
		for _, srv := range f.Configuration().Servers {
			if string(srv.ID) == to {
				target = &srv
				break
			}
		}
		switch {
		case target == nil:
			return fmt.Errorf("%w: no member %q in the Raft configuration", ErrNotVoter, to)
		case target.Suffrage != raft.Voter:
			return fmt.Errorf("%w: %s is a non-voter", ErrNotVoter, to)
		case to == s.cfg.NodeID:
			return nil
		}
		addr := target.Address
		if a, err := (addressBook{s}).ServerAddr(target.ID); err == nil {
			addr = a
		}
		s.logger.Info("handing leadership over", "to", to)
		fut = s.raft.LeadershipTransferToServer(target.ID, addr)
	}
	done := make(chan error, 1)
	if !s.goRaft(func() { done <- fut.Error() }) {
		return ErrClosed
	}
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("kv: leadership transfer: %w", translateRaftErr(err))
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.ctx.Done():
		return ErrClosed
	}
}

// handleTransfer serves methodTransfer on the leader.
func (s *Store) handleTransfer(ctx context.Context, body []byte) error {
	if len(body) > maxTransferTarget {
		return &transport.Error{Code: codeBadRequest, Msg: "bad member ID"}
	}
	err := s.transferLocal(ctx, string(body))
	if errors.Is(err, ErrNotVoter) {
		return &transport.Error{Code: codeBadRequest, Msg: err.Error()}
	}
	return toWire(err)
}

// awaitLeaderOtherThan waits until this member knows a leader other than
// old, for at most one hand-over's time.
func (s *Store) awaitLeaderOtherThan(ctx context.Context, old string) error {
	deadline := time.NewTimer(s.transferAttempt())
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, id := s.raft.LeaderWithID(); id != "" && string(id) != old {
			return nil
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			return fmt.Errorf("%w: %s stepped down and no other leader is known yet", ErrNoLeader, old)
		case <-ctx.Done():
			return ctx.Err()
		case <-s.ctx.Done():
			return ErrClosed
		}
	}
}

// electAloneAtOnce starts the election of a member that is the only voter of
// its configuration (at a restart, or once it bootstraps alone) at once,
// instead of after raft's heartbeat timeout (1–2 × HeartbeatTimeout): there
// is no leader to hear from, and the member elects itself whenever it asks. Lowering the timeout through
// ReloadConfig makes raft's follower loop check for a leader right away;
// the configured timeout is put back at once, which does not delay that
// check.
func (s *Store) electAloneAtOnce() {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	voters := 0
	self := false
	for _, srv := range f.Configuration().Servers {
		if srv.Suffrage == raft.Voter {
			voters++
			self = self || srv.ID == raft.ServerID(s.cfg.NodeID)
		}
	}
	if voters != 1 || !self {
		return
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	rc := s.raft.ReloadableConfig()
	short := rc
	short.HeartbeatTimeout = s.cfg.LeaderLeaseTimeout // the least raft accepts
	if short.HeartbeatTimeout >= rc.HeartbeatTimeout {
		return
	}
	if s.raft.ReloadConfig(short) == nil {
		_ = s.raft.ReloadConfig(rc)
	}
}
