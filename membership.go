package kv

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/discovery"
)

// maxPromotionLag is how far behind the leader's commit index a non-voter
// may be and still count as caught up.
const maxPromotionLag = 1024

// health is the leader's view of its members over time. Only the leader
// loop writes it; Stats reads it.
type health struct {
	mu        sync.Mutex
	deadSince map[string]time.Time // in the configuration, not alive in gossip
	goodSince map[string]time.Time // non-voters alive and caught up
	why       map[string]string    // non-voters: why not promoted yet
	warned    map[string]time.Time // rate limit of repeated warnings
}

func newHealth() *health {
	return &health{deadSince: map[string]time.Time{}, goodSince: map[string]time.Time{}, why: map[string]string{}, warned: map[string]time.Time{}}
}

// warnOnce says whether a warning under key may be logged now: at most once
// per every.
func (h *health) warnOnce(key string, every time.Duration) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if t, ok := h.warned[key]; ok && time.Since(t) < every {
		return false
	}
	if len(h.warned) > 1024 {
		h.warned = map[string]time.Time{}
	}
	h.warned[key] = time.Now()
	return true
}

func (h *health) reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.deadSince = map[string]time.Time{}
	h.goodSince = map[string]time.Time{}
	h.why = map[string]string{}
}

func (h *health) reasons() map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]string, len(h.why))
	for k, v := range h.why {
		out[k] = v
	}
	return out
}

// clusterIDFor derives the cluster ID from the bootstrap set: every member
// that bootstraps computes the same one, and the members' random nonces make
// it differ between clusters.
func clusterIDFor(set []discovery.Member) string {
	h := sha256.New()
	for _, m := range set {
		fmt.Fprintf(h, "%s\x00%s\x00%s\x00", m.ID, m.Addr, m.Nonce)
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// reconcile makes the Raft configuration follow the gossip pool. It runs on
// the leader and makes at most a few changes per pass, one at a time:
//
//   - an alive member missing from the configuration is added as a
//     non-voter, so that it catches up before it counts (a member back on a
//     new address needs nothing: peers are dialled by NodeID via gossip);
//   - a member that left, or that gossip has reported dead for longer than
//     DeadMemberTimeout, is removed, but only while the voters alive in
//     gossip hold a majority both before and after the change (a leader cut
//     off on a minority side sees no such majority and removes nothing), and
//     never below 3 voters while 3 members are alive;
//   - a non-voter alive and caught up for StabilizationTime is promoted while
//     fewer than MaxVoters voters are in service, in a way that keeps the
//     number of voters odd (see promotion).
func (s *Store) reconcile() {
	for i := 0; i < 8; i++ {
		if s.isClosed() || s.raft.State() != raft.Leader {
			return
		}
		changed, err := s.reconcileOnce()
		if err != nil {
			s.logger.Warn("membership change failed", "error", err)
			return
		}
		if !changed {
			return
		}
	}
}

func (s *Store) reconcileOnce() (bool, error) {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return false, err
	}
	servers := f.Configuration().Servers
	inConf := map[string]raft.Server{}
	for _, srv := range servers {
		inConf[string(srv.ID)] = srv
	}
	gossip := map[string]discovery.Member{}
	for _, m := range s.gossip.Members() {
		gossip[m.ID] = m
	}
	self := s.cfg.NodeID
	cluster := s.cluster()
	now := time.Now()

	// Additions and address changes.
	for _, m := range s.gossip.Members() {
		if m.Status != discovery.StatusAlive || m.Addr == "" || m.Leaving || m.ID == self {
			continue
		}
		if m.ClusterID != "" && cluster != "" && m.ClusterID != cluster {
			s.logger.Warn("refusing member of another cluster", "peer", m.ID, "its_cluster", m.ClusterID, "cluster", cluster)
			continue
		}
		if _, known := inConf[m.ID]; known {
			// A member back on a new address needs no change: peers are
			// dialled by NodeID through gossip (addressBook). Rewriting the
			// address in the configuration would also hit a data race in
			// hashicorp/raft (startStopReplication vs. replicateTo,
			// https://github.com/hashicorp/raft/issues/681).
			continue
		}
		// Only a member this one can talk to over the transport is added:
		// one that fails the TLS handshake (another CA, no certificate)
		// never enters the configuration.
		if err := s.reachable(m.Addr); err != nil {
			if s.health.warnOnce("unreachable/"+m.ID, time.Minute) {
				s.logger.Warn("not adding member: its transport does not answer or is not trusted", "peer", m.ID, "addr", m.Addr, "error", err)
			}
			continue
		}
		s.logger.Info("member joined; adding it as a non-voter until it has caught up", "peer", m.ID, "addr", m.Addr)
		return true, s.confChanged("peer added as a non-voter", raft.ServerID(m.ID), s.raft.AddNonvoter(raft.ServerID(m.ID), raft.ServerAddress(m.Addr), f.Index(), 10*time.Second))
	}

	// Health of the configured members, as gossip sees them.
	s.health.mu.Lock()
	voters, aliveVoters, alive := 0, 0, 0
	for _, srv := range servers {
		id := string(srv.ID)
		g, seen := gossip[id]
		isAlive := id == self || seen && g.Status == discovery.StatusAlive && !g.Leaving
		if srv.Suffrage == raft.Voter {
			voters++
			if isAlive {
				aliveVoters++
			}
		}
		if isAlive {
			alive++
			delete(s.health.deadSince, id)
		} else if _, ok := s.health.deadSince[id]; !ok {
			s.health.deadSince[id] = now
		}
	}
	for id := range s.health.deadSince {
		if _, ok := inConf[id]; !ok {
			delete(s.health.deadSince, id)
		}
	}
	deadSince := make(map[string]time.Time, len(s.health.deadSince))
	for k, v := range s.health.deadSince {
		deadSince[k] = v
	}
	s.health.mu.Unlock()

	// Removals: members that left at once, dead ones after the timeout.
	var removable []raft.Server
	for _, srv := range servers {
		id := string(srv.ID)
		since, dead := deadSince[id]
		if !dead || id == self {
			continue
		}
		if g, ok := gossip[id]; ok && (g.Status == discovery.StatusLeft || g.Leaving) || now.Sub(since) >= s.cfg.DeadMemberTimeout {
			removable = append(removable, srv)
		}
	}
	sort.Slice(removable, func(i, j int) bool { return removable[i].ID < removable[j].ID })
	for _, srv := range removable {
		if why := s.removalBlocked(srv, voters, aliveVoters, aliveVoters, alive); why != "" {
			s.logger.Debug("not removing dead member yet", "peer", srv.ID, "reason", why)
			continue
		}
		if err := s.raft.VerifyLeader().Error(); err != nil {
			return false, fmt.Errorf("verify leadership before removing %s: %w", srv.ID, err)
		}
		s.logger.Warn("removing member from the configuration", "peer", srv.ID, "suffrage", srv.Suffrage.String(), "down_for", now.Sub(deadSince[string(srv.ID)]).Round(time.Second))
		return true, s.confChanged("peer removed", srv.ID, s.raft.RemoveServer(srv.ID, f.Index(), 10*time.Second))
	}

	// Promotions. A voter that leaves is out of service at once, like one
	// dead for DeadMemberTimeout: its removal may wait for a promotion
	// (removalBlocked), which must not wait for the timeout.
	inService := voters
	for _, srv := range servers {
		if srv.Suffrage != raft.Voter {
			continue
		}
		id := string(srv.ID)
		g := gossip[id]
		leaving := id == self && s.leaving.Load() || id != self && (g.Leaving || g.Status == discovery.StatusLeft)
		if since, dead := deadSince[id]; leaving || dead && now.Sub(since) >= s.cfg.DeadMemberTimeout {
			inService--
		}
	}
	commit := s.raft.CommitIndex()
	term := s.raft.CurrentTerm()
	why := map[string]string{}
	var ready []int // indexes in servers of non-voters ready for promotion
	for i, srv := range servers {
		if srv.Suffrage == raft.Voter {
			continue
		}
		id := string(srv.ID)
		reason := s.caughtUp(id, gossip[id], term, commit)
		s.health.mu.Lock()
		if reason != "" {
			delete(s.health.goodSince, id)
		} else if _, ok := s.health.goodSince[id]; !ok {
			s.health.goodSince[id] = now
		}
		good := s.health.goodSince[id]
		s.health.mu.Unlock()
		switch {
		case reason != "":
			s.logger.Debug("non-voter not healthy", "peer", id, "reason", reason)
			why[id] = reason
		case now.Sub(good) < s.cfg.StabilizationTime:
			why[id] = fmt.Sprintf("stabilizing: healthy for %v of %v", now.Sub(good).Round(time.Millisecond), s.cfg.StabilizationTime)
		case inService >= oddVoters(s.cfg.MaxVoters):
			why[id] = fmt.Sprintf("voters at MaxVoters (%d voting, MaxVoters %d)", inService, s.cfg.MaxVoters)
		default:
			ready = append(ready, i)
		}
	}
	promote, waiting := promotion(inService, s.cfg.MaxVoters, len(ready))
	for _, i := range ready[promote:] {
		why[string(servers[i].ID)] = waiting
	}
	s.health.mu.Lock()
	s.health.why = why
	s.health.mu.Unlock()
	if promote > 0 {
		srv := servers[ready[0]]
		s.logger.Info("promoting member to voter", "peer", srv.ID, "voters", inService+1)
		return true, s.confChanged("peer promoted to voter", srv.ID, s.raft.AddVoter(srv.ID, srv.Address, f.Index(), 10*time.Second))
	}
	return false, nil
}

// oddVoters is the most voters the leader promotes to: MaxVoters, or one
// fewer when MaxVoters is even. An even number of voters tolerates no more
// failures than one fewer, and needs a larger majority for every commit.
func oddVoters(maxVoters int) int {
	if maxVoters%2 == 0 {
		return maxVoters - 1
	}
	return maxVoters
}

// promotion decides how many of the ready non-voters to promote now (0 or
// 1: one change at a time) with inService voters in service, and why the
// others wait. Voters are added so that their number stays odd: from an
// even count one promotion makes it odd; from an odd count a promotion is
// made only when a second ready member can follow it at once, so the even
// count lasts one configuration change.
func promotion(inService, maxVoters, ready int) (int, string) {
	limit := oddVoters(maxVoters)
	switch {
	case ready == 0 || inService >= limit:
		return 0, fmt.Sprintf("voters at MaxVoters (%d voting, MaxVoters %d)", inService, maxVoters)
	case inService%2 == 0:
		return 1, "waiting for another promotion"
	case ready >= 2 && inService+2 <= limit:
		return 1, "waiting for another promotion"
	default:
		return 0, fmt.Sprintf("keeping an odd number of voters (%d voting): promoted together with a second healthy non-voter", inService)
	}
}

// removalBlocked says why removing srv would be unsafe now ("" if it is
// not): the alive voters must be a majority now (aliveNow) and, without srv,
// of the smaller configuration (aliveAfter), and a voter is not removed below
// 3 voters while 3 members would remain alive (aliveMembers).
func (s *Store) removalBlocked(srv raft.Server, voters, aliveNow, aliveAfter, aliveMembers int) string {
	if aliveNow <= voters/2 {
		return fmt.Sprintf("only %d of %d voters alive: no healthy quorum on the leader's side", aliveNow, voters)
	}
	if srv.Suffrage != raft.Voter {
		return ""
	}
	after := voters - 1
	if aliveAfter <= after/2 {
		return fmt.Sprintf("%d alive voters would not be a majority of %d", aliveAfter, after)
	}
	if after < 3 && aliveMembers >= 3 {
		return fmt.Sprintf("would leave %d voters while %d members are alive; promoting first", after, aliveMembers)
	}
	return ""
}

// reachable checks that addr answers a status RPC over the transport.
func (s *Store) reachable(addr string) error {
	ctx, cancel := context.WithTimeout(s.ctx, 2*time.Second)
	defer cancel()
	_, err := s.pool.Call(ctx, addr, methodStatus, nil)
	return err
}

// caughtUp asks a non-voter how far it has applied; "" means it is alive in
// gossip and within maxPromotionLag of commit in the current term.
func (s *Store) caughtUp(id string, g discovery.Member, term, commit uint64) string {
	if g.ID == "" || g.Status != discovery.StatusAlive || g.Leaving {
		return "not alive in gossip"
	}
	ctx, cancel := context.WithTimeout(s.ctx, time.Second)
	defer cancel()
	body, err := s.pool.Call(ctx, g.Addr, methodStatus, nil)
	if err != nil || len(body) != 16 {
		return fmt.Sprintf("status unavailable: %v", err)
	}
	theirTerm, applied := binary.BigEndian.Uint64(body), binary.BigEndian.Uint64(body[8:])
	if theirTerm != term {
		return fmt.Sprintf("in term %d, leader in %d", theirTerm, term)
	}
	if applied+maxPromotionLag < commit {
		return fmt.Sprintf("catching up: applied %d of %d", applied, commit)
	}
	return ""
}

// statusReply is this member's term and applied index, for the leader's
// promotion decisions.
func (s *Store) statusReply() []byte {
	b := binary.BigEndian.AppendUint64(nil, s.raft.CurrentTerm())
	return binary.BigEndian.AppendUint64(b, s.eng.AppliedIndex())
}

// removeMember runs on the leader for a member's Leave. The member must say
// it is leaving (in gossip, or be this leader leaving), and the removal must
// keep the rules reconcile keeps, counting the leaver as gone; otherwise the
// caller retries.
func (s *Store) removeMember(ctx context.Context, id string) error {
	if s.raft.State() != raft.Leader {
		return errNotLeader
	}
	if id == s.cfg.NodeID {
		if !s.leaving.Load() {
			return fmt.Errorf("kv: refusing to remove %s: it is not leaving", id)
		}
	} else if m, ok := s.gossip.Lookup(id); ok && !m.Leaving && m.Status != discovery.StatusLeft {
		return fmt.Errorf("kv: refusing to remove %s: it is not leaving", id)
	}
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return translateRaftErr(err)
	}
	var target *raft.Server
	voters, aliveNow, aliveAfter, aliveMembers := 0, 0, 0, 0
	servers := f.Configuration().Servers
	for i, srv := range servers {
		sid := string(srv.ID)
		if sid == id {
			target = &servers[i]
		}
		g, seen := s.gossip.Lookup(sid)
		isAlive := sid == s.cfg.NodeID || seen && g.Status == discovery.StatusAlive
		if srv.Suffrage == raft.Voter {
			voters++
			if isAlive {
				aliveNow++
				if sid != id {
					aliveAfter++
				}
			}
		}
		if isAlive && sid != id {
			aliveMembers++
		}
	}
	if target == nil {
		return nil
	}
	if why := s.removalBlocked(*target, voters, aliveNow, aliveAfter, aliveMembers); why != "" {
		return fmt.Errorf("kv: not removing %s yet: %s", id, why)
	}
	s.logger.Info("removing member that leaves", "peer", id)
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	return translateRaftErr(s.confChanged("peer removed", raft.ServerID(id), s.raft.RemoveServer(raft.ServerID(id), f.Index(), timeout)))
}

// Leave removes this instance from the cluster for good and closes it: it
// stops being added back, hands leadership over if it leads, has the leader
// remove it from the Raft configuration, leaves the gossip pool, and
// closes. A member that left can come back only with a fresh DataDir or by
// joining again (the leader adds it anew). If ctx ends before the removal is
// committed, Leave returns the error and the instance stays open.
func (s *Store) Leave(ctx context.Context) error {
	if s.isClosed() {
		return ErrClosed
	}
	s.leaving.Store(true)
	if err := s.gossip.SetMeta(s.meta(true)); err != nil {
		s.logger.Warn("gossip metadata update failed", "error", err)
	}
	announced := time.Now()
	s.logger.Info("leaving the cluster")
	if s.raft.State() == raft.Leader && s.hasOtherVoter() {
		if err := s.raft.LeadershipTransfer().Error(); err != nil {
			s.logger.Warn("leadership transfer before leave failed", "error", err)
		}
	}
	var last error
	for b := newBackoff(); ; {
		done, err := s.removeSelf(ctx)
		if done {
			break
		}
		last = err
		if err := b.wait(ctx, s.ctx.Done()); err != nil {
			s.leaving.Store(false)
			s.gossip.SetMeta(s.meta(true))
			return s.giveUp(err, last)
		}
	}
	// Gossip is unordered: give the "leaving" metadata a moment to reach
	// everyone before the leave itself, so that they report "left", not
	// "dead".
	if wait := time.Second - time.Since(announced); wait > 0 {
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
	}
	if err := s.gossip.Leave(s.meta(true), 5*time.Second); err != nil {
		s.logger.Warn("gossip leave failed", "error", err)
	}
	s.logger.Info("left the cluster")
	return s.Close()
}

// removeSelf asks the leader (possibly itself) to remove this member; done
// is true once this member is out of the configuration.
func (s *Store) removeSelf(ctx context.Context) (done bool, err error) {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return false, translateRaftErr(err)
	}
	others := false
	in := false
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) == s.cfg.NodeID {
			in = true
		} else {
			others = true
		}
	}
	if !in || !others {
		return true, nil // out already, or the last member: nobody to tell
	}
	if s.raft.State() == raft.Leader {
		err = s.removeMember(ctx, s.cfg.NodeID)
		return err == nil, err
	}
	addr, ok := s.leaderAddr()
	if !ok {
		return false, ErrNoLeader
	}
	if _, err := s.pool.Call(ctx, addr, methodRemove, []byte(s.cfg.NodeID)); err != nil {
		err, _ = fromWire(err)
		return false, err
	}
	return true, nil
}

// adoptCluster records the cluster ID of the cluster that added this
// instance, as its leader gossips it.
func (s *Store) adoptCluster() {
	if s.cluster() != "" {
		return
	}
	_, leader := s.raft.LeaderWithID()
	if leader == "" {
		return
	}
	m, ok := s.gossip.Lookup(string(leader))
	if !ok || m.ClusterID == "" {
		return
	}
	if err := s.setCluster(m.ClusterID); err != nil {
		s.logger.Error("recording cluster ID failed", "error", err)
		return
	}
	if err := s.gossip.SetMeta(s.meta(true)); err != nil {
		s.logger.Warn("gossip metadata update failed", "error", err)
	}
}

// confChanged waits for a configuration change and, once it is committed,
// logs it with the peer, the term and the index of its entry.
func (s *Store) confChanged(msg string, peer raft.ServerID, f raft.IndexFuture) error {
	if err := f.Error(); err != nil {
		return err
	}
	s.logger.Info(msg, "peer", string(peer), "term", s.raft.CurrentTerm(), "index", f.Index())
	return nil
}
