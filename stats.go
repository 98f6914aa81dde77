package kv

import (
	"sort"
	"strconv"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/discovery"
)

// State is an instance's Raft role. fmt.Sprint gives leader, follower,
// candidate or shutdown.
type State int

// Raft roles.
const (
	StateFollower State = iota
	StateCandidate
	StateLeader
	StateShutdown
)

func (s State) String() string {
	switch s {
	case StateFollower:
		return "follower"
	case StateCandidate:
		return "candidate"
	case StateLeader:
		return "leader"
	case StateShutdown:
		return "shutdown"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// Stats is a snapshot of an instance's view of the cluster.
type Stats struct {
	NodeID            string
	State             State
	Leader            string // NodeID of the leader; empty when none is known
	LeaderAddr        string // its transport address
	Term              uint64
	CommitIndex       uint64
	AppliedIndex      uint64 // the last index the data reflects
	LastLogIndex      uint64
	LastSnapshotIndex uint64
	Members           int    // servers in the Raft configuration
	ClusterID         string // empty until bootstrapped or added to a cluster
	// NotPromoted says, on the leader, why each non-voter is not a voter yet
	// (nil on other members).
	NotPromoted map[string]string
	// Halted is why this member stopped taking part (State is then
	// shutdown): the text of the error every call on it returns. Empty
	// while it runs.
	Halted string
}

// Stats returns this instance's current view. It does not block on the
// network.
func (s *Store) Stats() Stats {
	st := Stats{NodeID: s.cfg.NodeID, State: StateShutdown}
	if s.isClosed() {
		return st
	}
	if err := s.halter.halted(); err != nil {
		st.Halted = err.Error()
		st.AppliedIndex = s.eng.AppliedIndex()
		return st
	}
	switch s.raft.State() {
	case raft.Leader:
		st.State = StateLeader
	case raft.Candidate:
		st.State = StateCandidate
	case raft.Follower:
		st.State = StateFollower
	}
	addr, id := s.raft.LeaderWithID()
	st.Leader, st.LeaderAddr = string(id), string(addr)
	st.Term = s.raft.CurrentTerm()
	st.CommitIndex = s.raft.CommitIndex()
	st.AppliedIndex = s.eng.AppliedIndex()
	st.LastLogIndex = s.raft.LastIndex()
	st.LastSnapshotIndex, _ = strconv.ParseUint(s.raft.Stats()["last_snapshot_index"], 10, 64)
	if f := s.raft.GetConfiguration(); f.Error() == nil {
		st.Members = len(f.Configuration().Servers)
	}
	st.ClusterID = s.cluster()
	if st.State == StateLeader {
		st.NotPromoted = s.health.reasons()
	}
	return st
}

// MemberStatus is a member's gossip status. fmt.Sprint gives alive, suspect,
// dead or left.
type MemberStatus = discovery.Status

// Gossip statuses of a Member.
const (
	StatusAlive   = discovery.StatusAlive
	StatusSuspect = discovery.StatusSuspect
	StatusDead    = discovery.StatusDead
	StatusLeft    = discovery.StatusLeft
)

// Member is one member of the cluster as this instance sees it: everyone in
// the Raft configuration and everyone in the gossip pool.
type Member struct {
	ID         string
	Addr       string // transport address
	GossipAddr string
	Status     MemberStatus
	Suffrage   Suffrage
	Voter      bool // Suffrage == Voter
	Leader     bool
}

// Suffrage is a member's place in the Raft configuration. fmt.Sprint gives
// voter, non-voter or none.
type Suffrage int

// Suffrages.
const (
	SuffrageNone Suffrage = iota
	SuffrageVoter
	SuffrageNonVoter
)

func (s Suffrage) String() string {
	switch s {
	case SuffrageVoter:
		return "voter"
	case SuffrageNonVoter:
		return "non-voter"
	}
	return "none"
}

// Members returns the members sorted by ID. The slice is the caller's.
// Members in the Raft configuration that gossip has not seen are reported
// as dead.
func (s *Store) Members() []Member {
	if s.isClosed() {
		return nil
	}
	_, leader := s.raft.LeaderWithID()
	byID := map[string]*Member{}
	for _, g := range s.gossip.Members() {
		byID[g.ID] = &Member{ID: g.ID, Addr: g.Addr, GossipAddr: g.GossipAddr, Status: g.Status}
	}
	if f := s.raft.GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			m := byID[string(srv.ID)]
			if m == nil {
				m = &Member{ID: string(srv.ID), Addr: string(srv.Address), Status: StatusDead}
				byID[m.ID] = m
			}
			m.Voter = srv.Suffrage == raft.Voter
			m.Suffrage = SuffrageNonVoter
			if m.Voter {
				m.Suffrage = SuffrageVoter
			}
		}
	}
	out := make([]Member, 0, len(byID))
	for _, m := range byID {
		m.Leader = m.ID == string(leader)
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
