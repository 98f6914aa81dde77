package kv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/discovery"
	"github.com/cohortkv/kv/internal/storage"
	"github.com/cohortkv/kv/internal/transport"
)

// Bootstrap promises. Gossip views can be partial while instances start:
// with BootstrapExpect 3, A may see {A,B,C} while D sees {B,C,D}. Each
// set is computed correctly from its view, and B and C, without a Raft
// configuration yet, would vote for either: two clusters, two leaders.
//
// So a set bootstraps only once every member of it has promised it. The
// proposer of a set is its lowest NodeID; it asks each member (over the
// member RPC) to promise the set, and bootstraps Raft only with all N
// promises. A member promises at most one set, ever: the promise is written
// to its Raft stable store before it answers, so a restart cannot promise
// another; it refuses once it holds Raft state or a promise of another set.
// It may promise the same set again, to the same proposer, under a new
// cluster ID (a member of the set restarted with a new nonce before the
// bootstrap). Two sets of N members out of fewer than 2N intersect, and the
// member in both promises only one: at most one of them bootstraps.
//
// Until it holds Raft state, a member grants votes only to candidates of
// the set it promised (voteGate): a member without state and without a
// promise (a new member, or one whose DataDir was emptied) never votes.

// promise is a member's promise of a bootstrap set.
type promise struct {
	Proposer string   `codec:"p"`
	IDs      []string `codec:"i"` // the set's NodeIDs, sorted
	Cluster  string   `codec:"c"` // the cluster ID the proposer derived
}

// keyPromise is where the stable store keeps this member's promise.
var keyPromise = []byte("cohort_bootstrap_promise")

// errPromiseRefused is wrapped by a member's refusal to promise a set.
var errPromiseRefused = errors.New("kv: bootstrap set refused")

var promiseHandle = &codec.MsgpackHandle{}

func encodePromise(p promise) ([]byte, error) {
	var b []byte
	err := codec.NewEncoderBytes(&b, promiseHandle).Encode(p)
	return b, err
}

// decodePromise decodes a promise. It never panics.
func decodePromise(b []byte) (p promise, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("kv: malformed promise: %v", r)
		}
	}()
	if err := codec.NewDecoderBytes(b, promiseHandle).Decode(&p); err != nil {
		return p, fmt.Errorf("kv: malformed promise: %w", err)
	}
	if p.Proposer == "" || len(p.IDs) == 0 || len(p.IDs) > 1024 || !slices.IsSorted(p.IDs) {
		return p, errors.New("kv: malformed promise")
	}
	return p, nil
}

// promises is this member's promise, in memory and in the stable store.
type promises struct {
	mu  sync.Mutex
	cur *promise // nil until this member promised a set
}

// loadPromise reads the promise the stable store holds, if any.
func (s *Store) loadPromise() error {
	if s.logs == nil {
		return nil // InMemory: a new, empty stable store
	}
	b, err := s.stable.Get(keyPromise)
	switch {
	case errors.Is(err, storage.ErrStableKeyNotFound):
		return nil // never promised
	case err != nil:
		return fmt.Errorf("kv: read bootstrap promise: %w", err)
	case len(b) == 0:
		return nil
	}
	p, err := decodePromise(b)
	if err != nil {
		return fmt.Errorf("kv: read bootstrap promise: %w", err)
	}
	s.promise.cur = &p
	return nil
}

// promiseSet promises p if this member may: it holds no Raft state, is in
// the set, and has promised no other set (or this one, to the same
// proposer). The promise is durable before it returns nil.
func (s *Store) promiseSet(p promise) error {
	s.promise.mu.Lock()
	defer s.promise.mu.Unlock()
	if c := s.cluster(); s.raft.LastIndex() > 0 || c != "" && c != p.Cluster {
		return fmt.Errorf("%w: %s holds Raft state", errPromiseRefused, s.cfg.NodeID)
	}
	if !slices.Contains(p.IDs, s.cfg.NodeID) {
		return fmt.Errorf("%w: %s is not in the set %v", errPromiseRefused, s.cfg.NodeID, p.IDs)
	}
	if cur := s.promise.cur; cur != nil {
		if cur.Proposer != p.Proposer || !slices.Equal(cur.IDs, p.IDs) {
			return fmt.Errorf("%w: %s promised the set %v of %s", errPromiseRefused, s.cfg.NodeID, cur.IDs, cur.Proposer)
		}
		if cur.Cluster == p.Cluster {
			return nil
		}
	}
	b, err := encodePromise(p)
	if err != nil {
		return err
	}
	if err := s.stable.Set(keyPromise, b); err != nil {
		return fmt.Errorf("kv: record bootstrap promise: %w", err)
	}
	s.promise.cur = &p
	s.logger.Info("promised a bootstrap set", "set", p.IDs, "proposer", p.Proposer)
	return nil
}

// mayVoteFor says whether this member may grant its vote to candidate: once
// it holds Raft state always (Raft decides), before only to a member of the
// set it promised.
func (s *Store) mayVoteFor(candidate string) bool {
	if s.raft.LastIndex() > 0 {
		return true
	}
	s.promise.mu.Lock()
	defer s.promise.mu.Unlock()
	return s.promise.cur != nil && slices.Contains(s.promise.cur.IDs, candidate)
}

// gatherPromises asks every member of set (this one included) to promise
// p, concurrently, and returns nil only if all did.
func (s *Store) gatherPromises(p promise, set []discovery.Member) error {
	body, err := encodePromise(p)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	errs := make([]error, len(set))
	var wg sync.WaitGroup
	for i, m := range set {
		if m.ID == s.cfg.NodeID {
			errs[i] = s.promiseSet(p)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.pool.Call(ctx, m.Addr, methodPromise, body)
			var re *transport.Error
			if errors.As(err, &re) && re.Code == codeRefused {
				err = fmt.Errorf("%w: %s", errPromiseRefused, re.Msg)
			}
			if err != nil {
				errs[i] = fmt.Errorf("%s: %w", m.ID, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// handlePromise answers methodPromise.
func (s *Store) handlePromise(body []byte) ([]byte, error) {
	p, err := decodePromise(body)
	if err != nil {
		return nil, &transport.Error{Code: codeBadRequest, Msg: err.Error()}
	}
	if err := s.promiseSet(p); err != nil {
		if errors.Is(err, errPromiseRefused) {
			return nil, &transport.Error{Code: codeRefused, Msg: err.Error()}
		}
		return nil, err
	}
	return nil, nil
}

// voterReply answers methodVoter: the index of this member's latest Raft
// configuration, then 1 if id is a voter in it.
func (s *Store) voterReply(id string) []byte {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	voter := byte(0)
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) == id && srv.Suffrage == raft.Voter {
			voter = 1
		}
	}
	return append(binary.BigEndian.AppendUint64(nil, f.Index()), voter)
}

// checkNotLostVoter refuses to start an instance without Raft state whose
// NodeID is a voter of the cluster it joins: it would vote without the log
// it acknowledged. It asks the members gossip shows with Raft state, and
// trusts the answer with the newest configuration. Members that cannot be
// asked within a few seconds are skipped; voteGate still keeps such an
// instance from voting until it holds Raft state.
func (s *Store) checkNotLostVoter() error {
	var asked []discovery.Member
	for _, m := range s.gossip.Members() {
		if m.ID != s.cfg.NodeID && m.Bootstrapped && m.Status == discovery.StatusAlive && m.Addr != "" {
			asked = append(asked, m)
		}
	}
	if len(asked) == 0 {
		return nil
	}
	slices.SortFunc(asked, func(a, b discovery.Member) int { return cmpString(a.ID, b.ID) })
	asked = asked[:min(len(asked), 5)]
	ctx, cancel := context.WithTimeout(s.ctx, 3*time.Second)
	defer cancel()
	type answer struct {
		index uint64
		voter bool
		from  string
	}
	answers := make(chan answer, len(asked))
	var wg sync.WaitGroup
	for _, m := range asked {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := s.pool.Call(ctx, m.Addr, methodVoter, []byte(s.cfg.NodeID))
			if err != nil || len(b) != 9 {
				return
			}
			answers <- answer{binary.BigEndian.Uint64(b), b[8] == 1, m.ID}
		}()
	}
	wg.Wait()
	close(answers)
	var best answer
	for a := range answers {
		if a.index > best.index || a.index == best.index && a.voter { // a tie counts as a voter: the safe side
			best = a
		}
	}
	if best.voter {
		return fmt.Errorf("%w: %s is a voter of the cluster (configuration %d, from %s), but DataDir %s holds no Raft state: it would vote without the log it acknowledged; run Rebuild with this Config, which removes it from the configuration, then Open again",
			ErrLostState, s.cfg.NodeID, best.index, best.from, s.cfg.DataDir)
	}
	return nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// voteGate is the Raft transport with the vote requests of candidates this
// member may not vote for (mayVoteFor) answered with a refusal before Raft
// sees them, and so are snapshots whose configuration raft could not decode
// (it would panic). Its pipelines are drained (raftpipe.go).
type voteGate struct {
	*raft.NetworkTransport
	ch chan raft.RPC
}

// errNoVote refuses a vote request through the gate.
var errNoVote = errors.New("kv: no vote: this member holds no Raft state and promised no set with the candidate")

func (g *voteGate) Consumer() <-chan raft.RPC { return g.ch }

// run passes RPCs on to Raft until stop is closed. Owned by the Store.
func (g *voteGate) run(s *Store, stop <-chan struct{}) {
	in := g.NetworkTransport.Consumer()
	for {
		select {
		case <-stop:
			return
		case rpc := <-in:
			var cand []byte
			vote := false
			switch req := rpc.Command.(type) {
			case *raft.RequestVoteRequest:
				cand, vote = req.ID, true
			case *raft.RequestPreVoteRequest:
				cand, vote = req.ID, true
			case *raft.AppendEntriesRequest:
				// Entries raft could not apply are refused before raft
				// sees them: raft truncates its log before it stores
				// the entries, and a refusal by the log store after
				// the truncation leaves raft's idea of its last entry
				// wrong (a member that then leads cannot replicate).
				bad := error(nil)
				for _, e := range req.Entries {
					if bad = checkEntry(e); bad != nil {
						break
					}
				}
				if bad != nil {
					rpc.Respond(nil, bad)
					continue
				}
			case *raft.InstallSnapshotRequest:
				// raft decodes the configuration with a function that
				// panics on bad bytes: a peer's must not reach it.
				if req.SnapshotVersion > 0 {
					if err := decodeConfiguration(req.Configuration); err != nil {
						rpc.Respond(nil, fmt.Errorf("kv: refusing a snapshot: %w", err))
						continue
					}
				}
			}
			if vote && !s.mayVoteFor(string(cand)) {
				rpc.Respond(nil, errNoVote)
				continue
			}
			select {
			case g.ch <- rpc:
			case <-stop:
				rpc.Respond(nil, raft.ErrRaftShutdown)
				return
			}
		}
	}
}
