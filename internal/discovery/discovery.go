// Package discovery is the gossip layer of a cohort/kv instance, on
// hashicorp/memberlist. Every member gossips a small Meta (its NodeID, the
// address of its transport port, what it expects at bootstrap); the Store
// reads the pool to bootstrap Raft, to add joining members and to find a
// member's current address by its NodeID.
//
// Each start of an instance joins under a fresh gossip name (NodeID plus a
// random suffix), so that an instance restarted with a new address is a new
// gossip member at once instead of a name conflict with its dead former self;
// the pool reports one entry per NodeID, the best known incarnation.
package discovery

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/memberlist"

	"github.com/cohortkv/kv/internal/logging"
)

// Meta is what every member gossips about itself.
type Meta struct {
	ID           string `codec:"id"`          // the NodeID
	Addr         string `codec:"a"`           // transport (Raft and RPC) address
	Expect       int    `codec:"e,omitempty"` // BootstrapExpect
	Bootstrapped bool   `codec:"b,omitempty"` // holds Raft state (is or was part of a cluster)
	Leaving      bool   `codec:"l,omitempty"` // set by Leave just before leaving the pool
	ClusterID    string `codec:"c,omitempty"` // the cluster this member belongs to, once known
	Nonce        string `codec:"n,omitempty"` // random per start; seeds the cluster ID at bootstrap
	Started      int64  `codec:"t,omitempty"` // start time (Unix ns): orders incarnations of one ID
}

// ErrWrongCluster is returned by Join when every seed that answered belongs
// to another cluster than this member.
var ErrWrongCluster = errors.New("discovery: member of another cluster")

// Status is a member's gossip status.
type Status int

// Gossip statuses.
const (
	StatusAlive Status = iota
	StatusSuspect
	StatusDead
	StatusLeft
)

func (s Status) String() string {
	switch s {
	case StatusAlive:
		return "alive"
	case StatusSuspect:
		return "suspect"
	case StatusDead:
		return "dead"
	case StatusLeft:
		return "left"
	}
	return "Status(" + strconv.Itoa(int(s)) + ")"
}

// Member is one NodeID as gossip knows it.
type Member struct {
	Meta
	Name       string // gossip name of this incarnation
	GossipAddr string
	Status     Status
}

// Config configures a Pool.
type Config struct {
	Meta          Meta
	BindAddr      string // host:port; port 0 picks a free one
	AdvertiseAddr string // optional host:port
	Join          []string
	Logger        *slog.Logger
	// Transport, when set, replaces memberlist's own network transport (the
	// hook for fault injection in tests). It must be bound already.
	Transport memberlist.Transport
	// Keyring, when set, encrypts and authenticates all gossip with its
	// primary key and accepts any of its keys.
	Keyring *memberlist.Keyring
}

// Pool is this instance's membership in the gossip pool. Safe for concurrent
// use.
type Pool struct {
	ml     *memberlist.Memberlist
	logger *slog.Logger
	addr   string // advertised gossip address, fixed at Start
	name   string

	mu       sync.Mutex
	meta     []byte
	cluster  string            // our ClusterID, from meta
	refusal  error             // the last merge refused for a cluster mismatch
	joinWarn time.Time         // when a failed join was last logged at Warn
	members  map[string]*entry // by gossip name
	seq      uint64
	changed  chan struct{} // closed and replaced on every change
}

type entry struct {
	Member
	seq uint64 // order of the latest join event
}

var mh = &codec.MsgpackHandle{}

// EncodeMeta encodes m for gossip.
func EncodeMeta(m Meta) ([]byte, error) {
	var b []byte
	err := codec.NewEncoderBytes(&b, mh).Encode(m)
	return b, err
}

// DecodeMeta decodes gossiped metadata. It never panics.
func DecodeMeta(b []byte) (m Meta, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("discovery: malformed metadata: %v", r)
		}
	}()
	err = codec.NewDecoderBytes(b, mh).Decode(&m)
	if err == nil && m.ID == "" {
		err = errors.New("discovery: metadata without a node ID")
	}
	return m, err
}

// Start creates the pool member and joins cfg.Join. A failed join is not an
// error: the Store retries it.
func Start(cfg Config) (*Pool, error) {
	meta, err := EncodeMeta(cfg.Meta)
	if err != nil {
		return nil, err
	}
	if len(meta) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("discovery: metadata of %d bytes is over memberlist's %d", len(meta), memberlist.MetaMaxSize)
	}
	if cfg.Logger == nil {
		cfg.Logger = logging.Discard()
	}
	p := &Pool{logger: cfg.Logger, meta: meta, cluster: cfg.Meta.ClusterID, members: map[string]*entry{}, changed: make(chan struct{})}

	mc := memberlist.DefaultLANConfig()
	var suffix [4]byte
	rand.Read(suffix[:])
	mc.Name = cfg.Meta.ID + "-" + hex.EncodeToString(suffix[:])
	host, port, err := splitHostPort(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("discovery: gossip bind address: %w", err)
	}
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertisePort = port
	if cfg.AdvertiseAddr != "" {
		if mc.AdvertiseAddr, mc.AdvertisePort, err = splitHostPort(cfg.AdvertiseAddr); err != nil {
			return nil, fmt.Errorf("discovery: gossip advertise address: %w", err)
		}
	}
	mc.Transport = cfg.Transport
	if cfg.Keyring != nil {
		mc.Keyring = cfg.Keyring
		mc.GossipVerifyIncoming = true
		mc.GossipVerifyOutgoing = true
	}
	mc.Delegate = (*delegate)(p)
	mc.Events = (*events)(p)
	mc.Merge = (*guard)(p)
	mc.Alive = (*guard)(p)
	mc.Logger = logging.StdLog(cfg.Logger, "memberlist")
	// Bounds a join or push/pull to an unreachable address (LAN default
	// 10 s), so that reconnect attempts and Close stay prompt.
	mc.TCPTimeout = 3 * time.Second
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("discovery: start gossip on %s: %w", cfg.BindAddr, err)
	}
	p.ml = ml
	// Read once: memberlist's LocalNode points at state that UpdateNode
	// rewrites without a lock readers could take.
	n := ml.LocalNode()
	p.addr = net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
	p.name = n.Name
	if _, err := p.JoinErr(cfg.Join); errors.Is(err, ErrWrongCluster) {
		ml.Shutdown()
		return nil, err
	}
	return p, nil
}

func splitHostPort(hp string) (string, int, error) {
	host, ps, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", hp)
	}
	return host, port, nil
}

// joinWarnEvery is how often a failed join is logged at Warn; the failures
// in between are logged at Debug.
const joinWarnEvery = 30 * time.Second

// Join contacts seeds; it returns how many answered. Errors are logged.
func (p *Pool) Join(seeds []string) int {
	n, _ := p.JoinErr(seeds)
	return n
}

// JoinErr is Join that also reports why no seed could be joined; the error
// wraps ErrWrongCluster when seeds answered but belong to another cluster.
func (p *Pool) JoinErr(seeds []string) (int, error) {
	if len(seeds) == 0 {
		return 0, nil
	}
	p.mu.Lock()
	p.refusal = nil
	p.mu.Unlock()
	n, err := p.ml.Join(seeds)
	if err != nil {
		// Callers retry every few seconds while the seeds are down: warn
		// now and then, not at every attempt.
		level := slog.LevelDebug
		p.mu.Lock()
		if time.Since(p.joinWarn) >= joinWarnEvery {
			p.joinWarn, level = time.Now(), slog.LevelWarn
		}
		p.mu.Unlock()
		p.logger.Log(context.Background(), level, "gossip join failed", "seeds", seeds, "contacted", n, "error", err)
	}
	if n == 0 {
		p.mu.Lock()
		refusal := p.refusal
		p.mu.Unlock()
		if refusal != nil {
			return 0, refusal
		}
	}
	return n, err
}

// Addr returns the gossip address this member advertises.
func (p *Pool) Addr() string { return p.addr }

// Name returns this incarnation's gossip name.
func (p *Pool) Name() string { return p.name }

// SetMeta gossips new metadata for this member.
func (p *Pool) SetMeta(m Meta) error {
	b, err := EncodeMeta(m)
	if err != nil {
		return err
	}
	if len(b) > memberlist.MetaMaxSize {
		return fmt.Errorf("discovery: metadata of %d bytes is over memberlist's %d", len(b), memberlist.MetaMaxSize)
	}
	p.mu.Lock()
	p.meta = b
	p.cluster = m.ClusterID
	p.mu.Unlock()
	// Bounded: after Shutdown memberlist waits the whole timeout.
	return p.ml.UpdateNode(time.Second)
}

// Changed returns a channel that is closed at the next membership change.
func (p *Pool) Changed() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.changed
}

// Members returns one Member per NodeID, the best known incarnation (alive
// before left before dead, then the latest to join), sorted by ID. The slice
// is the caller's. memberlist does not expose its suspicion state, so
// StatusSuspect is not reported: a member is alive until declared dead.
func (p *Pool) Members() []Member {
	p.mu.Lock()
	best := map[string]entry{}
	for _, e := range p.members {
		if b, ok := best[e.ID]; !ok || e.better(&b) {
			best[e.ID] = *e
		}
	}
	p.mu.Unlock()
	out := make([]Member, 0, len(best))
	for _, e := range best {
		out = append(out, e.Member)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Lookup returns the best known incarnation of id.
// It is on Raft's dialling path (every RPC resolves its peer through it), so
// it scans without building the whole list.
func (p *Pool) Lookup(id string) (Member, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var best *entry
	for _, e := range p.members {
		if e.ID == id && e.Name == p.name {
			return e.Member, true // this member knows itself best
		}
		if e.ID == id && (best == nil || e.better(best)) {
			best = e
		}
	}
	if best == nil {
		return Member{}, false
	}
	return best.Member, true
}

// better says whether e is a better incarnation to report than b: alive
// before left before dead, then the latest started (a member restarted
// quickly may be learned together with its dead predecessor, in any
// order), then the latest to join here.
func (e *entry) better(b *entry) bool {
	if e.Status != b.Status {
		return e.Status < b.Status
	}
	if e.Started != b.Started {
		return e.Started > b.Started
	}
	return e.seq > b.seq
}

// Leave tells the pool this member leaves for good, waiting up to timeout for
// the message to spread. meta is gossiped first with Leaving set, so that the
// others report the member as left rather than dead.
func (p *Pool) Leave(meta Meta, timeout time.Duration) error {
	meta.Leaving = true
	if err := p.SetMeta(meta); err != nil {
		return err
	}
	return p.ml.Leave(timeout)
}

// Shutdown stops gossip without leaving: the others will see this member
// fail. Idempotent.
func (p *Pool) Shutdown() error { return p.ml.Shutdown() }

func (p *Pool) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *Pool) upsert(n *memberlist.Node, st Status, join bool) {
	m, err := DecodeMeta(n.Meta)
	if err != nil {
		p.logger.Warn("gossip member with unreadable metadata ignored", "name", n.Name, "addr", n.Address(), "error", err)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.members[n.Name]
	if e == nil {
		e = &entry{}
		p.members[n.Name] = e
	}
	if join {
		p.seq++
		e.seq = p.seq
	}
	e.Member = Member{Meta: m, Name: n.Name, GossipAddr: n.Address(), Status: st}
	if st == StatusAlive {
		// A newer incarnation is alive: forget the departed older ones.
		for name, o := range p.members {
			if o.ID == m.ID && name != n.Name && o.Status >= StatusDead {
				delete(p.members, name)
			}
		}
	}
	p.notifyLocked()
}

type delegate Pool

func (d *delegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.meta) > limit {
		return nil
	}
	return d.meta
}
func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

type events Pool

func (e *events) NotifyJoin(n *memberlist.Node)   { (*Pool)(e).upsert(n, StatusAlive, true) }
func (e *events) NotifyUpdate(n *memberlist.Node) { (*Pool)(e).upsert(n, StatusAlive, false) }
func (e *events) NotifyLeave(n *memberlist.Node) {
	// memberlist does not fill in n.State for event delegates; a member that
	// leaves on purpose says so in its metadata first.
	st := StatusDead
	if m, err := DecodeMeta(n.Meta); err == nil && m.Leaving {
		st = StatusLeft
	}
	(*Pool)(e).upsert(n, st, false)
}

// guard refuses gossip from members of another cluster: a merge (join or
// push/pull) that brings one, and alive messages of one. A member without a
// cluster ID yet (a new instance) is accepted anywhere.
type guard Pool

func (g *guard) ours() string {
	p := (*Pool)(g)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cluster != "" {
		return p.cluster
	}
	// Not bootstrapped ourselves: we belong to the cluster of the pool we are in.
	for _, e := range p.members {
		if e.ClusterID != "" && e.Status == StatusAlive {
			return e.ClusterID
		}
	}
	return ""
}

func (g *guard) check(n *memberlist.Node) error {
	if len(n.Meta) == 0 {
		return nil
	}
	m, err := DecodeMeta(n.Meta)
	if err != nil {
		return nil // logged by the event delegate; such members are ignored
	}
	ours := g.ours()
	if m.ClusterID == "" || ours == "" || m.ClusterID == ours {
		return nil
	}
	err = fmt.Errorf("%w: %s (at %s) is in cluster %s, this member in %s", ErrWrongCluster, m.ID, n.Address(), m.ClusterID, ours)
	p := (*Pool)(g)
	p.mu.Lock()
	p.refusal = err
	p.mu.Unlock()
	p.logger.Warn("refused gossip from a member of another cluster", "member", m.ID, "addr", n.Address(), "its_cluster", m.ClusterID, "cluster", ours)
	return err
}

func (g *guard) NotifyMerge(peers []*memberlist.Node) error {
	for _, n := range peers {
		if err := g.check(n); err != nil {
			return err
		}
	}
	return nil
}

func (g *guard) NotifyAlive(n *memberlist.Node) error { return g.check(n) }
