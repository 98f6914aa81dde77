package kv

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/discovery"
)

// bootstrapLoop runs on an instance without Raft state until the cluster
// exists. It waits until BootstrapExpect alive members that all expect the
// same number are in the gossip pool; the set of them is proposed by its
// lowest NodeID, which bootstraps Raft with it once every member of the set
// has promised it (promise.go): partial gossip views can make members
// compute different sets, and at most one set gets all its promises. If any
// member already holds Raft state, a cluster exists: this instance does not
// bootstrap and waits for the leader to add it.
func (s *Store) bootstrapLoop() {
	expect := s.cfg.BootstrapExpect
	if expect <= 0 {
		return
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var progress bootstrapProgress
	for {
		changed := s.gossip.Changed()
		done, backoff := s.tryBootstrap(expect, &progress)
		if done {
			return
		}
		if backoff > 0 {
			// Refused: let the views and the other proposers settle.
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(backoff):
			}
			continue
		}
		select {
		case <-s.ctx.Done():
			return
		case <-changed:
		case <-tick.C:
		}
	}
}

// bootstrapView, when set (tests only, see export_test.go), replaces this
// instance's gossip view in tryBootstrap: the way to give members partial
// views on demand.
var bootstrapView func(self string, members []discovery.Member) []discovery.Member

// bootstrapProgress is what a member waiting to bootstrap last said about
// it, so that it speaks when its view changes and now and then otherwise.
type bootstrapProgress struct {
	said map[string]time.Time
}

// say reports whether the message under key may be logged now: the first
// time, and again after bootstrapProgressEvery.
func (p *bootstrapProgress) say(key string) bool {
	if t, ok := p.said[key]; ok && time.Since(t) < bootstrapProgressEvery {
		return false
	}
	if p.said == nil || len(p.said) > 64 {
		p.said = map[string]time.Time{}
	}
	p.said[key] = time.Now()
	return true
}

// bootstrapProgressEvery is how often a member waiting to bootstrap repeats
// what it waits for while its view does not change.
const bootstrapProgressEvery = 15 * time.Second

// waiting logs, at Info, how many of the expected members this one sees.
func (s *Store) waiting(p *bootstrapProgress, expect int, cands []discovery.Member) {
	ids := make([]string, 0, len(cands))
	for _, m := range cands {
		ids = append(ids, m.ID)
	}
	sort.Strings(ids)
	seen := strings.Join(ids, ", ")
	if !p.say("waiting:" + seen) {
		return
	}
	msg := fmt.Sprintf("waiting for %d expected members to bootstrap, %d seen: %s", expect, len(ids), seen)
	args := []any{"expect", expect, "seen", len(ids)}
	if len(s.cfg.Join) == 0 {
		args = append(args, "hint", "Join is empty: this member waits for the others to join it")
	} else if len(s.gossip.Members()) <= 1 {
		args = append(args, "join", s.cfg.Join, "hint", "no seed in Join answered yet")
	}
	s.logger.Info(msg, args...)
}

func (s *Store) tryBootstrap(expect int, progress *bootstrapProgress) (done bool, backoff time.Duration) {
	if _, id := s.raft.LeaderWithID(); id != "" {
		return true, 0 // added to an existing cluster
	}
	if idx := s.raft.LastIndex(); idx > 0 {
		return true, 0 // received a log from a leader
	}
	members := s.gossip.Members()
	if bootstrapView != nil {
		members = bootstrapView(s.cfg.NodeID, members)
	}
	var cands []discovery.Member
	for _, m := range members {
		if m.Status != discovery.StatusAlive || m.Leaving {
			continue
		}
		if m.Bootstrapped {
			s.logger.Info("a cluster exists already; waiting to be added by its leader", "peer", m.ID)
			return true, 0
		}
		if m.Expect != expect {
			if m.Expect > 0 && progress.say(fmt.Sprintf("expect:%s:%d", m.ID, m.Expect)) {
				s.logger.Warn("member expects a different cluster size; ignored for bootstrap", "peer", m.ID, "its_expect", m.Expect, "expect", expect)
			}
			continue
		}
		cands = append(cands, m)
	}
	if len(cands) < expect {
		s.waiting(progress, expect, cands)
		return false, 0
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].ID < cands[j].ID })
	if len(cands) > expect {
		// Members that see different subsets could propose different
		// sets: refuse, as Consul does, and wait for one to exist.
		if progress.say(fmt.Sprintf("toomany:%d", len(cands))) {
			s.logger.Error("more members expect to bootstrap than BootstrapExpect; not bootstrapping", "seen", len(cands), "expect", expect)
		}
		return false, 0
	}
	var conf raft.Configuration
	self := false
	ids := make([]string, 0, len(cands))
	for _, m := range cands {
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.ID), Address: raft.ServerAddress(m.Addr)})
		ids = append(ids, m.ID)
		self = self || m.ID == s.cfg.NodeID
	}
	if !self {
		s.logger.Info("not among the bootstrap set; waiting to be added", "set", ids)
		return true, 0
	}
	if cands[0].ID != s.cfg.NodeID {
		// The set's lowest NodeID proposes it; this member answers its
		// promise request, and gets the log once it leads.
		s.logger.Debug("waiting for the bootstrap set's proposer", "set", ids, "proposer", cands[0].ID)
		return false, 0
	}
	cluster := clusterIDFor(cands)
	if err := s.gatherPromises(promise{Proposer: s.cfg.NodeID, IDs: ids, Cluster: cluster}, cands); err != nil {
		wait := time.Second + time.Duration(rand.Int64N(int64(2*time.Second)))
		s.logger.Warn("bootstrap set not promised by every member; retrying with a fresh view", "set", ids, "error", err, "retry_in", wait)
		return false, wait
	}
	// The cluster ID is recorded before the Raft state exists, so that an
	// instance with Raft state always knows its cluster.
	if err := s.setCluster(cluster); err != nil {
		s.logger.Error("bootstrap failed", "error", err)
		return false, time.Second
	}
	if err := s.raft.BootstrapCluster(conf).Error(); err != nil && err != raft.ErrCantBootstrap {
		s.logger.Error("bootstrap failed", "error", err)
		return false, time.Second
	}
	s.logger.Info("bootstrapped raft", "servers", len(conf.Servers), "cluster", cluster)
	s.electAloneAtOnce()
	if err := s.gossip.SetMeta(s.meta(true)); err != nil {
		s.logger.Warn("gossip metadata update failed", "error", err)
	}
	return true, 0
}

// joinLoop keeps this instance in the gossip pool: while it sees no other
// member it retries Join, so that a member started before its seeds finds
// them. It also marks the instance as bootstrapped in gossip once it holds
// Raft state.
func (s *Store) joinLoop() {
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	marked := false
	for n := 0; ; n++ {
		select {
		case <-s.ctx.Done():
			return
		case <-tick.C:
		}
		if len(s.cfg.Join) > 0 && (len(s.gossip.Members()) <= 1 || (n%2 == 1 && s.peerUnheard())) {
			// Push/pull with the seeds: after a whole-cluster restart
			// on new ports, the gossip of a member's new incarnation can
			// miss an instance (it spreads to random members, some of
			// them the dead old incarnations) until the next periodic
			// push/pull, 30 s away; a seed that saw it join knows it.
			// Every other tick: a seed that is down costs a timeout.
			s.gossip.Join(s.cfg.Join)
		}
		if n%5 == 4 {
			s.reconnect(n / 5)
		}
		if s.isClosed() {
			return
		}
		if !marked && s.raft.LastIndex() > 0 {
			if err := s.gossip.SetMeta(s.meta(true)); err == nil {
				marked = true
			} else {
				s.logger.Debug("gossip metadata update failed", "error", err)
			}
		}
		s.adoptCluster()
	}
}

// peerUnheard says whether a member of the Raft configuration other than
// this one has no incarnation gossip holds alive.
func (s *Store) peerUnheard() bool {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) == s.cfg.NodeID {
			continue
		}
		if m, ok := s.gossip.Lookup(string(srv.ID)); !ok || m.Status != discovery.StatusAlive {
			return true
		}
	}
	return false
}

// reconnect tries to join again the members gossip holds dead that are
// still in the Raft configuration, as serf's reconnect does for Consul:
// after a partition heals, memberlist never probes a member it declared
// dead, and both sides could hold each other dead for good.
//
// One member per call (round robin by turn), so that a member that is
// really gone costs at most one join timeout per round.
func (s *Store) reconnect(turn int) {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	inConf := map[string]bool{}
	for _, srv := range f.Configuration().Servers {
		inConf[string(srv.ID)] = true
	}
	var addrs []string
	for _, m := range s.gossip.Members() {
		if m.Status == discovery.StatusDead && inConf[m.ID] && m.GossipAddr != "" {
			addrs = append(addrs, m.GossipAddr)
		}
	}
	if len(addrs) == 0 || s.isClosed() {
		return
	}
	sort.Strings(addrs)
	addr := addrs[turn%len(addrs)]
	if s.gossip.Join([]string{addr}) > 0 {
		s.logger.Info("reconnected to a member gossip held dead", "gossip_addr", addr)
	}
}

// leaderLoop follows leadership changes. On gaining leadership it commits a
// marker entry of its own term (so reads may use its commit index) and then
// reconciles the Raft configuration with the gossip pool whenever either
// changes.
func (s *Store) leaderLoop() {
	leaderCh := s.raft.LeaderCh()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		changed := s.gossip.Changed()
		select {
		case <-s.ctx.Done():
			return
		case isLeader := <-leaderCh:
			if isLeader {
				s.health.reset()
				s.logger.Info("became leader", "term", s.raft.CurrentTerm(), "index", s.raft.LastIndex())
			} else {
				s.logger.Info("lost leadership", "term", s.raft.CurrentTerm())
			}
		case <-changed:
		case <-tick.C:
		}
		if s.isClosed() {
			return
		}
		if s.raft.State() == raft.Leader {
			s.markTerm()
			s.syncQuota()
			s.abortStaleRestore()
			s.reconcile()
		}
	}
}

// markTerm commits a marker entry of the current term on this leader, after
// which its commit index is safe to serve reads from (readIndexLocal).
func (s *Store) markTerm() {
	term := s.raft.CurrentTerm()
	if s.readyTerm.Load() == term || s.raft.State() != raft.Leader {
		return
	}
	if err := s.raft.Apply(encodeEntry(leaderTime()), 5*time.Second).Error(); err != nil {
		s.logger.Warn("leader could not commit its term marker", "term", term, "error", err)
		return
	}
	if s.raft.CurrentTerm() == term {
		s.readyTerm.Store(term)
	}
}
