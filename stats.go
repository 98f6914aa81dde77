package kv

import (
	"sort"
	"strconv"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/discovery"
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
//
// The indexes are Raft log indexes: they count log entries, not writes.
// Group commit packs many concurrent writes into one entry, and the log
// also holds entries of Raft's own (a new leader's marker, configuration
// changes), so AppliedIndex grows by one for a batch of writes.
type Stats struct {
	NodeID            string // this instance's Config.NodeID
	State             State  // its Raft role
	Leader            string // NodeID of the leader; empty when none is known
	LeaderAddr        string // its transport address
	Term              uint64 // the current Raft term
	CommitIndex       uint64 // the last log index this instance knows to be committed
	AppliedIndex      uint64 // the last index the data reflects
	LastLogIndex      uint64 // the last index in this instance's log
	LastSnapshotIndex uint64 // the index of its newest snapshot
	Members           int    // servers in the Raft configuration
	ClusterID         string // empty until bootstrapped or added to a cluster
	// NotPromoted says, on the leader, why each non-voter is not a voter yet
	// (nil on other members).
	NotPromoted map[string]string
	// QuotaBytes is the cluster's space quota as this member applied it
	// (Config.QuotaBytes of the leader that set it); 0: none.
	QuotaBytes int64
	// DataBytes is the logical size of the data as this member applied it:
	// the bytes of every key plus its stored record, which QuotaBytes
	// bounds. Every member that applied the same log has the same value;
	// the files on disk are larger (pages, free space, the store's own
	// state).
	DataBytes int64
	// Halted is why this member stopped taking part (State is then
	// shutdown): the text of the error every call on it returns. Empty
	// while it runs.
	Halted string
	// DBSize is the size of the data file in bytes, as of its last
	// background commit (every 4 s, or sooner at 24 MiB of writes, while
	// writes arrive); 0 in memory. It includes free pages that bbolt
	// reuses but never returns to the file system.
	DBSize int64
	// DBInUse is DBSize less the data file's free pages: the bytes the
	// data, its indexes and the pages held for open readers occupy.
	DBInUse int64
}

// Stats returns this instance's current view. It does not block on the
// network.
func (s *Store) Stats() Stats {
	st := Stats{NodeID: s.cfg.NodeID, State: StateShutdown}
	if s.isClosed() {
		return st
	}
	st.DBSize, st.DBInUse = s.eng.FileSize()
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
	st.QuotaBytes, st.DataBytes = s.spaceUsage()
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
	// StatusAlive: gossip hears from the member.
	StatusAlive = discovery.StatusAlive
	// StatusSuspect is never reported by this version: memberlist does not
	// expose its suspicion state, so a member that stops answering stays
	// StatusAlive until gossip declares it dead (a few seconds later). The
	// value exists so that code written against it keeps compiling if a
	// later version reports suspicion.
	StatusSuspect = discovery.StatusSuspect
	// StatusDead: gossip declared the member dead (it stopped answering
	// probes), or the member is in the Raft configuration but gossip has
	// never seen it.
	StatusDead = discovery.StatusDead
	// StatusLeft: the member left for good (Leave, or Rebuild).
	StatusLeft = discovery.StatusLeft
)

// Member is one member of the cluster as this instance sees it: everyone in
// the Raft configuration and everyone in the gossip pool.
type Member struct {
	ID         string       // its NodeID
	Addr       string       // transport address
	GossipAddr string       // gossip address; empty if gossip has not seen it
	Status     MemberStatus // as gossip sees it
	Suffrage   Suffrage     // its place in the Raft configuration
	Voter      bool         // Suffrage == SuffrageVoter
	Leader     bool         // the leader, as this instance knows it
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
