package kv_test

// The linearizability suite: many clients run concurrent Get, Set
// and Delete on every member of a kvtest cluster while faults happen (leader
// crash and restart, partitions, message loss and latency, a whole-cluster
// restart); every operation is recorded with its invocation and response
// times, and porcupine checks that the history is linearizable against a
// per-key register model. A negative control proves the checker bites: stale
// reads from an isolated old leader must be reported as not linearizable.
//
// By default the suite runs one round of each fault (about a minute in all,
// under -race too). KV_CHAOS=<duration> (e.g. KV_CHAOS=10m) keeps injecting
// random faults until the duration is spent, split between the 3- and the
// 5-member tests, capped by the test binary's -timeout.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

const (
	linOpTimeout = 1500 * time.Millisecond // each client call
	linKeys      = 6                       // keys per round: small, so operations conflict
)

// ---------------------------------------------------------------------------
// The model: one register per key. State is the key's value, "" for absent
// (every value written is non-empty and unique).

type linKind uint8

const (
	linGet linKind = iota
	linSet
	linDelete
)

func (k linKind) String() string { return [...]string{"get", "set", "delete"}[k] }

type linInput struct {
	Kind  linKind
	Key   string
	Value string // set
}

type linOutput struct {
	Value   string // get: "" when not found
	Found   bool   // get
	Unknown bool   // write whose outcome is unknown (returned an error that does not exclude its effect)
}

// linMeta is shown in the visualization only.
type linMeta struct {
	Node  int    // member that served the call; -1 for the checker's own calls
	Stale bool   // a kv.Stale() read (negative control only)
	Err   string // the error of an unknown write
}

var linModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string]int{}
		var out [][]porcupine.Operation
		for _, op := range h {
			k := op.Input.(linInput).Key
			i, ok := byKey[k]
			if !ok {
				i = len(out)
				byKey[k] = i
				out = append(out, nil)
			}
			out[i] = append(out[i], op)
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		st, in, out := state.(string), input.(linInput), output.(linOutput)
		switch in.Kind {
		case linGet:
			if out.Found {
				return st != "" && st == out.Value, st
			}
			return st == "", st
		case linSet:
			// An unknown write returns "after the end of the history"
			// (see linHistory.ops): it may be linearized anywhere after
			// its call, including after every read, i.e. never seen.
			return true, in.Value
		default:
			return true, ""
		}
	},
	Equal: func(a, b any) bool { return a.(string) == b.(string) },
	DescribeOperation: func(input, output any) string {
		in, out := input.(linInput), output.(linOutput)
		switch in.Kind {
		case linGet:
			if !out.Found {
				return fmt.Sprintf("get(%s) -> none", in.Key)
			}
			return fmt.Sprintf("get(%s) -> %s", in.Key, out.Value)
		case linSet:
			s := fmt.Sprintf("set(%s, %s)", in.Key, in.Value)
			if out.Unknown {
				s += " ?"
			}
			return s
		default:
			s := fmt.Sprintf("delete(%s)", in.Key)
			if out.Unknown {
				s += " ?"
			}
			return s
		}
	},
	DescribeState: func(state any) string {
		if state.(string) == "" {
			return "(absent)"
		}
		return state.(string)
	},
	DescribeOperationMetadata: func(info any) string {
		m, ok := info.(linMeta)
		if !ok {
			return ""
		}
		s := fmt.Sprintf("node%d", m.Node)
		if m.Node < 0 {
			s = "checker"
		}
		if m.Stale {
			s += " stale"
		}
		if m.Err != "" {
			s += ": " + m.Err
		}
		return s
	},
}

// ---------------------------------------------------------------------------
// Recording.

// linErrClass names the kind of a call's error.
func linErrClass(err error) string {
	switch {
	case errors.Is(err, kv.ErrOutcomeUnknown):
		// First: an error that leaves the outcome unknown is unknown,
		// whatever else it names.
		return "unknown"
	case errors.Is(err, kv.ErrNoLeader):
		return "no-leader"
	case errors.Is(err, kv.ErrEmptyKey), errors.Is(err, kv.ErrKeyTooLarge), errors.Is(err, kv.ErrValueTooLarge):
		return "bad-input"
	case errors.Is(err, kv.ErrClosed):
		return "closed"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return "other"
}

// linHistory is what one client (one goroutine) recorded; merged at the end.
type linHistory struct {
	ops    []porcupine.Operation
	counts map[string]int // "set/ok", "get/failed:deadline", "delete/unknown:closed", ...
	others []string       // messages of errors of class "other"
}

func newLinHistory() *linHistory { return &linHistory{counts: map[string]int{}} }

// record adds one call's outcome. A failed Get is dropped (a read has no
// effect); a write that failed with ErrNoLeader or a bad-input error
// certainly had no effect and is dropped; any other failed write is kept as
// unknown.
func (h *linHistory) record(client, node int, in linInput, call, ret int64, val []byte, err error) {
	out := linOutput{}
	meta := linMeta{Node: node}
	outcome := "ok"
	switch {
	case err == nil:
		if in.Kind == linGet {
			out.Value, out.Found = string(val), true
		}
	case in.Kind == linGet && errors.Is(err, kv.ErrNotFound):
		outcome = "not-found"
	default:
		class := linErrClass(err)
		if class == "other" && len(h.others) < 5 {
			h.others = append(h.others, fmt.Sprintf("%s: %v", in.Kind, err))
		}
		if in.Kind == linGet || class == "no-leader" || class == "bad-input" {
			h.counts[in.Kind.String()+"/failed:"+class]++
			return
		}
		outcome = "unknown:" + class
		out.Unknown = true
		meta.Err = err.Error()
		ret = -1 // set past the end of the history by ops
	}
	h.counts[in.Kind.String()+"/"+outcome]++
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret, Metadata: meta})
}

// linMerge returns every recorded operation, unknown writes returning after
// everything else, and the merged counts.
func linMerge(hs ...*linHistory) ([]porcupine.Operation, map[string]int, []string) {
	var ops []porcupine.Operation
	counts := map[string]int{}
	var others []string
	var end int64
	for _, h := range hs {
		for _, op := range h.ops {
			end = max(end, op.Call, op.Return)
		}
	}
	for _, h := range hs {
		for _, op := range h.ops {
			if op.Return < 0 {
				op.Return = end + 1
			}
			ops = append(ops, op)
		}
		for k, v := range h.counts {
			counts[k] += v
		}
		others = append(others, h.others...)
	}
	return ops, counts, others
}

func linFormatCounts(counts map[string]int) string {
	keys := make([]string, 0, len(counts))
	total := 0
	for k, v := range counts {
		keys = append(keys, k)
		total += v
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "%d calls:", total)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%d", k, counts[k])
	}
	return b.String()
}

// linCheck checks ops with porcupine. When they are not linearizable it
// writes the visualization (and a text dump of the offending keys) to a
// directory that outlives the test, and logs where.
func linCheck(t *testing.T, name string, ops []porcupine.Operation, notes []porcupine.Annotation, keepVis bool) porcupine.CheckResult {
	t.Helper()
	start := time.Now()
	res := porcupine.CheckOperationsTimeout(linModel, ops, 2*time.Minute)
	t.Logf("%s: porcupine checked %d operations in %v: %s", name, len(ops), time.Since(start).Round(time.Millisecond), res)
	if res == porcupine.Ok {
		return res
	}
	dir := t.TempDir()
	if keepVis {
		var err error
		if dir, err = os.MkdirTemp("", "kv-linearizability-"); err != nil {
			t.Errorf("visualization: %v", err)
			return res
		}
	}
	// The keys whose own history is not linearizable.
	var dump strings.Builder
	bad := 0
	for _, part := range linModel.Partition(ops) {
		if porcupine.CheckOperationsTimeout(linModel, part, time.Minute) == porcupine.Ok {
			continue
		}
		bad++
		slices.SortFunc(part, func(a, b porcupine.Operation) int { return int(a.Call - b.Call) })
		fmt.Fprintf(&dump, "key %s: %d operations, not linearizable\n", part[0].Input.(linInput).Key, len(part))
		for _, op := range part {
			fmt.Fprintf(&dump, "  [%12d, %12d] client %2d %-40s %s\n", op.Call, op.Return, op.ClientId,
				linModel.DescribeOperation(op.Input, op.Output), linModel.DescribeOperationMetadata(op.Metadata))
		}
	}
	for _, a := range notes {
		fmt.Fprintf(&dump, "fault [%12d, %12d] %s\n", a.Start, a.End, a.Description)
	}
	txt := filepath.Join(dir, name+".txt")
	if err := os.WriteFile(txt, []byte(dump.String()), 0o644); err != nil {
		t.Errorf("history dump: %v", err)
	}
	_, info := porcupine.CheckOperationsVerbose(linModel, ops, 2*time.Minute)
	info.AddAnnotations(notes)
	html := filepath.Join(dir, name+".html")
	if err := porcupine.VisualizePath(linModel, info, html); err != nil {
		t.Errorf("visualization: %v", err)
	}
	t.Logf("%s: %s; %d key(s) not linearizable; visualization %s, history of those keys %s", name, res, bad, html, txt)
	return res
}

// ---------------------------------------------------------------------------
// Clusters and checks shared by the tests.

func linCluster(t *testing.T, n int) *kvtest.Cluster {
	t.Helper()
	c := kvtest.NewCluster(t, n, kvtest.Logger(testLogger(t)), kvtest.Configure(func(i int, cfg *kv.Config) {
		// Faster failure detection, so that a round of faults takes
		// seconds; no member is removed while it is down or cut off.
		cfg.HeartbeatTimeout = 500 * time.Millisecond
		cfg.ElectionTimeout = 500 * time.Millisecond
		cfg.LeaderLeaseTimeout = 250 * time.Millisecond
		cfg.DeadMemberTimeout = time.Hour
	}))
	linLeader(t, c, -1, 30*time.Second)
	return c
}

// linLeader waits (at most d) for a leader that a majority recognises, other
// than not (-1: any).
func linLeader(t *testing.T, c *kvtest.Cluster, not int, d time.Duration) int {
	t.Helper()
	l, err := linWaitLeader(c, not, d)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func linWaitLeader(c *kvtest.Cluster, not int, d time.Duration) (int, error) {
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		l, err := c.WaitLeader(ctx)
		cancel()
		if err != nil {
			return -1, fmt.Errorf("no leader (other than node%d) within %v: %v\n%s", not, d, err, linViews(c))
		}
		if l != not {
			return l, nil
		}
		if time.Now().After(deadline) {
			return -1, fmt.Errorf("node%d still the leader after %v\n%s", not, d, linViews(c))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// linViews describes what each running member sees: its Raft state and
// the gossip status of every member (Raft reaches peers at the address
// gossip gives, see kv's addressBook).
func linViews(c *kvtest.Cluster) string {
	var b strings.Builder
	running := map[string]bool{}
	for i := 0; i < c.N(); i++ {
		if c.Node(i) != nil {
			running[c.Config(i).NodeID] = true
		}
	}
	deadButRunning := 0
	for i := 0; i < c.N(); i++ {
		s := c.Node(i)
		if s == nil {
			fmt.Fprintf(&b, "node%d: not running\n", i)
			continue
		}
		st := s.Stats()
		fmt.Fprintf(&b, "node%d: %v term %d leader %q applied %d; gossip:", i, st.State, st.Term, st.Leader, st.AppliedIndex)
		for _, m := range s.Members() {
			fmt.Fprintf(&b, " %s=%v", m.ID, m.Status)
			if m.Status == kv.StatusDead && running[m.ID] {
				deadButRunning++
			}
		}
		b.WriteString("\n")
	}
	if deadButRunning > 0 {
		b.WriteString("running members are marked dead in gossip while the network is healed: Raft resolves peers only through gossip members that are alive or suspect, so it cannot reach them\n")
	}
	return b.String()
}

// linConverge checks that every member holds the same data once healed: a
// linearizable write through the leader (a barrier), every member applied
// at least as far, then List("") with Stale() on each, taken while its
// applied index stood still, must be identical. A difference that lasts is
// a divergence. It returns the number of keys.
func linConverge(t *testing.T, c *kvtest.Cluster, barrier string) int {
	t.Helper()
	l := linLeader(t, c, -1, 30*time.Second)
	var err error
	for try := 0; try < 5; try++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = c.Node(l).Set(ctx, "zz-barrier", []byte(barrier))
		cancel()
		if err == nil {
			break
		}
		l = linLeader(t, c, -1, 30*time.Second)
	}
	if err != nil {
		t.Fatalf("barrier write: %v", err)
	}
	target := c.Node(l).Stats().AppliedIndex
	var diff string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		lists := make([][]kv.Pair, c.N())
		stable := true
		for i := 0; i < c.N(); i++ {
			s := c.Node(i)
			if s == nil {
				t.Fatalf("node%d is not running", i)
			}
			before := s.Stats().AppliedIndex
			if before < target {
				stable = false
				break
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			lists[i], err = s.List(ctx, "", kv.Stale())
			cancel()
			if err != nil {
				t.Fatalf("List on node%d: %v", i, err)
			}
			if s.Stats().AppliedIndex != before {
				stable = false
				break
			}
		}
		if !stable {
			continue
		}
		diff = ""
		for i := 1; i < c.N() && diff == ""; i++ {
			diff = linDiff(lists[0], lists[i], i)
		}
		if diff == "" {
			return len(lists[0])
		}
	}
	if diff == "" {
		t.Fatalf("members did not apply the barrier (index %d) within 20 s", target)
	}
	t.Fatalf("members hold different data after healing: %s", diff)
	return 0
}

func linDiff(a, b []kv.Pair, i int) string {
	for j := 0; j < max(len(a), len(b)); j++ {
		switch {
		case j >= len(a):
			return fmt.Sprintf("node%d has %q=%q that node0 lacks", i, b[j].Key, b[j].Value)
		case j >= len(b):
			return fmt.Sprintf("node0 has %q=%q that node%d lacks", a[j].Key, a[j].Value, i)
		case a[j].Key != b[j].Key || string(a[j].Value) != string(b[j].Value):
			return fmt.Sprintf("node0 has %q=%q where node%d has %q=%q", a[j].Key, a[j].Value, i, b[j].Key, b[j].Value)
		}
	}
	return ""
}

// linFinalReads reads every key with a linearizable Get, spread over the
// members, and records the reads in h: the check then covers the final
// state (no acknowledged write lost, none resurrected).
func linFinalReads(t *testing.T, c *kvtest.Cluster, h *linHistory, client int, keys []string, now func() int64) {
	t.Helper()
	for i, k := range keys {
		node := i % c.N()
		var err error
		for try := 0; try < 5; try++ {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			call := now()
			var v []byte
			v, err = c.Node(node).Get(ctx, k)
			ret := now()
			cancel()
			if err == nil || errors.Is(err, kv.ErrNotFound) {
				h.record(client, node, linInput{Kind: linGet, Key: k}, call, ret, v, err)
				break
			}
		}
		if err != nil && !errors.Is(err, kv.ErrNotFound) {
			t.Fatalf("final read of %q on node%d: %v", k, node, err)
		}
	}
}

// ---------------------------------------------------------------------------
// The chaos tests.

type linRun struct {
	t    *testing.T
	c    *kvtest.Cluster
	n    int
	t0   time.Time
	seed uint64
	rng  *rand.Rand // the test goroutine's

	round   atomic.Int64 // keys of the current round
	stop    chan struct{}
	stopped sync.Once
	wg      sync.WaitGroup
	hs      []*linHistory

	faults    map[string]int
	notes     []porcupine.Annotation
	failovers []time.Duration // from losing the leader to a new one
}

func (r *linRun) now() int64 { return time.Since(r.t0).Nanoseconds() }

func (r *linRun) halt() { r.stopped.Do(func() { close(r.stop) }) }

// sleep waits d unless the run is stopped; false when stopped.
func (r *linRun) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.stop:
		return false
	}
}

func linKey(round int64, i int) string { return fmt.Sprintf("r%03d/k%d", round, i) }

// client runs calls on member node until the run stops. Most calls go to
// the current round's keys, some to the previous round's, so that every key
// lives across a fault and the recovery after it.
func (r *linRun) client(id, node int, h *linHistory) {
	defer r.wg.Done()
	rng := rand.New(rand.NewPCG(r.seed, uint64(id)))
	for seq := 0; ; seq++ {
		select {
		case <-r.stop:
			return
		default:
		}
		s := r.c.Node(node)
		if s == nil { // killed; back after Restart
			if !r.sleep(20 * time.Millisecond) {
				return
			}
			continue
		}
		round := r.round.Load()
		if round > 0 && rng.IntN(5) == 0 {
			round--
		}
		in := linInput{Key: linKey(round, rng.IntN(linKeys))}
		switch p := rng.IntN(100); {
		case p < 50:
			in.Kind = linGet
		case p < 85:
			in.Kind, in.Value = linSet, fmt.Sprintf("c%d.%d", id, seq)
		default:
			in.Kind = linDelete
		}
		ctx, cancel := context.WithTimeout(context.Background(), linOpTimeout)
		var v []byte
		var err error
		call := r.now()
		switch in.Kind {
		case linGet:
			v, err = s.Get(ctx, in.Key)
		case linSet:
			err = s.Set(ctx, in.Key, []byte(in.Value))
		default:
			err = s.Delete(ctx, in.Key)
		}
		ret := r.now()
		cancel()
		h.record(id, node, in, call, ret, v, err)
		if !r.sleep(time.Duration(rng.IntN(4000)) * time.Microsecond) {
			return
		}
	}
}

// fault counts a fault of a kind and returns a function that ends its
// annotation.
func (r *linRun) fault(kind, detail string) func() {
	r.faults[kind]++
	start := r.now()
	r.t.Logf("%6.2fs fault: %s", time.Since(r.t0).Seconds(), detail)
	return func() {
		r.notes = append(r.notes, porcupine.Annotation{Tag: "faults", Start: start, End: r.now(), Description: detail})
	}
}

// hold keeps a fault for d (scaled up at random in chaos mode).
func (r *linRun) hold(d time.Duration, chaos bool) {
	if chaos {
		d += time.Duration(r.rng.Int64N(int64(2 * d)))
	}
	time.Sleep(d)
}

func (r *linRun) others(not ...int) []int {
	var out []int
	for i := 0; i < r.n; i++ {
		if !slices.Contains(not, i) {
			out = append(out, i)
		}
	}
	return out
}

// linStuck is how r.leader abandons a scenario when the cluster has no
// leader: the run stops, the history so far is still checked, then the test
// fails.
type linStuck struct{ err error }

// leader waits up to 30 s for a leader other than not (-1: any).
func (r *linRun) leader(not int) int {
	l, err := linWaitLeader(r.c, not, 30*time.Second)
	if err != nil {
		panic(linStuck{fmt.Errorf("%.2fs: %w", time.Since(r.t0).Seconds(), err)})
	}
	return l
}

// play runs one scenario; it returns the error that stopped it, if the
// cluster lost its leader for good.
func (r *linRun) play(sc linScenario, chaos bool) (stuck error) {
	defer func() {
		if p := recover(); p != nil {
			s, ok := p.(linStuck)
			if !ok {
				panic(p)
			}
			stuck = s.err
		}
	}()
	sc.run(r, chaos)
	return nil
}

// newLeader waits for a leader other than old and notes how long it took.
func (r *linRun) newLeader(old int) int {
	start := time.Now()
	l := r.leader(old)
	d := time.Since(start)
	r.failovers = append(r.failovers, d)
	r.t.Logf("%6.2fs new leader node%d after %v", time.Since(r.t0).Seconds(), l, d.Round(time.Millisecond))
	return l
}

// cutOff holds a partition for d and checks that it holds: the members on
// the minority side apply nothing meanwhile (no commit can reach them).
func (r *linRun) cutOff(minority []int, d time.Duration, chaos bool) {
	time.Sleep(500 * time.Millisecond) // what was on its way before the cut
	applied := func() []uint64 {
		var out []uint64
		for _, i := range minority {
			out = append(out, r.c.Node(i).Stats().AppliedIndex)
		}
		return out
	}
	before := applied()
	r.hold(d, chaos)
	if after := applied(); !slices.Equal(before, after) {
		r.t.Errorf("members %v applied entries while cut off from the majority (applied index %v -> %v): the partition leaks", minority, before, after)
	}
}

type linScenario struct {
	name string
	min  int // members needed
	run  func(r *linRun, chaos bool)
}

var linScenarios = []linScenario{
	{"kill and restart the leader", 3, func(r *linRun, chaos bool) {
		l := r.leader(-1)
		end := r.fault("leader kill", fmt.Sprintf("kill leader node%d", l))
		r.c.Kill(l)
		r.newLeader(l)
		r.hold(500*time.Millisecond, chaos)
		end()
		end = r.fault("restart", fmt.Sprintf("restart node%d", l))
		r.c.Restart(l)
		end()
		r.hold(500*time.Millisecond, chaos)
	}},
	{"isolate the leader", 3, func(r *linRun, chaos bool) {
		l := r.leader(-1)
		end := r.fault("leader isolated", fmt.Sprintf("isolate leader node%d", l))
		r.c.Isolate(l)
		r.newLeader(l)
		r.cutOff([]int{l}, 500*time.Millisecond, chaos)
		r.c.Heal()
		end()
		r.hold(500*time.Millisecond, chaos)
	}},
	{"isolate a follower", 3, func(r *linRun, chaos bool) {
		l := r.leader(-1)
		f := r.others(l)[r.rng.IntN(r.n-1)]
		end := r.fault("follower isolated", fmt.Sprintf("isolate follower node%d", f))
		r.c.Isolate(f)
		r.cutOff([]int{f}, time.Second, chaos)
		r.c.Heal()
		end()
		r.hold(300*time.Millisecond, chaos)
	}},
	{"split 2|3, the leader in the minority", 5, func(r *linRun, chaos bool) {
		l := r.leader(-1)
		rest := r.others(l)
		r.rng.Shuffle(len(rest), func(i, j int) { rest[i], rest[j] = rest[j], rest[i] })
		minority := []int{l, rest[0]}
		end := r.fault("split 2|3, leader in minority", fmt.Sprintf("split %v|%v (leader node%d in the minority)", minority, rest[1:], l))
		r.c.Partition(minority, rest[1:])
		r.newLeader(l)
		r.cutOff(minority, 500*time.Millisecond, chaos)
		r.c.Heal()
		end()
		r.hold(500*time.Millisecond, chaos)
	}},
	{"split 3|2, the leader in the majority", 5, func(r *linRun, chaos bool) {
		l := r.leader(-1)
		rest := r.others(l)
		r.rng.Shuffle(len(rest), func(i, j int) { rest[i], rest[j] = rest[j], rest[i] })
		majority := []int{l, rest[0], rest[1]}
		end := r.fault("split 3|2, leader in majority", fmt.Sprintf("split %v|%v (leader node%d in the majority)", majority, rest[2:], l))
		r.c.Partition(majority, rest[2:])
		r.cutOff(rest[2:], time.Second, chaos)
		r.c.Heal()
		end()
		r.hold(300*time.Millisecond, chaos)
	}},
	{"message loss and latency", 3, func(r *linRun, chaos bool) {
		lat := time.Duration(5+r.rng.IntN(16)) * time.Millisecond
		end := r.fault("loss+latency", fmt.Sprintf("loss 5%% + latency %v", lat))
		r.c.SetLatency(lat)
		r.c.SetLoss(0.05)
		r.hold(1500*time.Millisecond, chaos)
		r.c.Heal()
		end()
		r.hold(300*time.Millisecond, chaos)
	}},
	{"restart the whole cluster", 3, func(r *linRun, chaos bool) {
		end := r.fault("whole-cluster restart", "kill every member, restart them all")
		for i := 0; i < r.n; i++ {
			r.c.Kill(i)
		}
		r.hold(200*time.Millisecond, chaos)
		for i := 0; i < r.n; i++ {
			r.c.Restart(i)
		}
		r.leader(-1)
		end()
		r.hold(500*time.Millisecond, chaos)
	}},
}

// linChaosBudget is how long a chaos test injects faults: 0 by default (one
// round of each scenario), else its share of KV_CHAOS, capped by -timeout.
func linChaosBudget(t *testing.T, share float64) time.Duration {
	env := os.Getenv("KV_CHAOS")
	if env == "" {
		return 0
	}
	d, err := time.ParseDuration(env)
	if err != nil || d <= 0 {
		t.Fatalf("KV_CHAOS=%q: want a positive duration such as 10m", env)
	}
	d = time.Duration(float64(d) * share)
	if dl, ok := t.Deadline(); ok {
		// Leave room for the checks, the other tests and the cleanups.
		if room := time.Until(dl)*6/10 - time.Minute; d > room {
			t.Logf("KV_CHAOS: %v capped to %v by -timeout", d, max(room, 0))
			d = max(room, 0)
		}
	}
	return d
}

func testLinearizability(t *testing.T, n, clientsPerMember int, budget time.Duration) {
	r := &linRun{t: t, n: n, seed: rand.Uint64(), stop: make(chan struct{}), faults: map[string]int{}}
	r.rng = rand.New(rand.NewPCG(r.seed, 0))
	t.Logf("seed %d", r.seed)
	start := time.Now()
	// Cleanups run last first: on a failure, stop the clients, then close
	// the cluster (which ends their calls), then wait for them.
	t.Cleanup(r.wg.Wait)
	r.c = linCluster(t, n)
	t.Cleanup(r.halt)
	r.t0 = time.Now()
	t.Logf("%d members up in %v", n, r.t0.Sub(start).Round(time.Millisecond))

	nClients := n * clientsPerMember
	for id := 0; id < nClients; id++ {
		h := newLinHistory()
		r.hs = append(r.hs, h)
		r.wg.Add(1)
		go r.client(id, id%n, h)
	}

	chaos := budget > 0
	var plan []linScenario
	for _, sc := range linScenarios {
		if n >= sc.min {
			plan = append(plan, sc)
		}
	}
	rounds := 0
	var stuck error
	for deadline := time.Now().Add(budget); ; rounds++ {
		var sc linScenario
		if !chaos {
			if rounds == len(plan) {
				break
			}
			sc = plan[rounds]
		} else {
			if rounds > 0 && time.Now().After(deadline) || rounds >= 100000 {
				break
			}
			sc = plan[r.rng.IntN(len(plan))]
		}
		r.round.Store(int64(rounds))
		time.Sleep(300 * time.Millisecond) // healthy traffic on the new keys first
		if chaos && r.rng.IntN(3) == 0 {
			// Some latency under the fault too (until it heals).
			lat := time.Duration(5+r.rng.IntN(16)) * time.Millisecond
			r.fault("latency under another fault", fmt.Sprintf("latency %v", lat))()
			r.c.SetLatency(lat)
		}
		if stuck = r.play(sc, chaos); stuck != nil {
			break
		}
		r.c.Heal()
	}
	if stuck == nil {
		// One more healthy round, so that the last fault's keys are used again.
		r.round.Store(int64(rounds))
		time.Sleep(500 * time.Millisecond)
	}

	r.halt()
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		pprof.Lookup("goroutine").WriteTo(os.Stderr, 1)
		t.Fatalf("clients still in a call 30 s after the run stopped (every call has a %v context)", linOpTimeout)
	}
	r.c.Heal()
	chaosEnd := time.Since(r.t0)

	nkeys := 0
	var keys []string
	final := newLinHistory()
	if stuck == nil {
		nkeys = linConverge(t, r.c, "end")
		for round := 0; round <= rounds; round++ {
			for i := 0; i < linKeys; i++ {
				keys = append(keys, linKey(int64(round), i))
			}
		}
		linFinalReads(t, r.c, final, nClients, keys, r.now)
		t.Logf("converged and read back in %v", time.Since(r.t0)-chaosEnd)
	}
	ops, counts, others := linMerge(append(r.hs, final)...)
	name := fmt.Sprintf("linearizability-%d-members", n)
	if res := linCheck(t, name, ops, r.notes, true); res != porcupine.Ok {
		t.Errorf("the history of %d operations is %s (not linearizable)", len(ops), res)
	}
	for _, o := range others {
		t.Logf("unexpected error: %s", o)
	}
	var fs []string
	total := 0
	for k, v := range r.faults {
		fs = append(fs, fmt.Sprintf("%s x%d", k, v))
		total += v
	}
	sort.Strings(fs)
	t.Logf("%d members, %d clients, %d rounds of faults in %v (%d faults: %s)", n, nClients, rounds, chaosEnd.Round(time.Millisecond), total, strings.Join(fs, ", "))
	if len(r.failovers) > 0 {
		slices.Sort(r.failovers)
		t.Logf("%d failovers: median %v, max %v", len(r.failovers), r.failovers[len(r.failovers)/2].Round(time.Millisecond), r.failovers[len(r.failovers)-1].Round(time.Millisecond))
	}
	t.Logf("operations: %s; %d checked (incl. %d final reads); %d keys converged on every member", linFormatCounts(counts), len(ops), len(keys), nkeys)
	if stuck != nil {
		// The history up to here was checked above (without final reads).
		t.Fatalf("the cluster stopped electing a leader: %v", stuck)
	}
	linStopAll(t, r.c)
}

// linStopAll closes the members one by one (gracefully) and says how long
// each took. (A Close of several seconds is kv's joinLoop waiting in
// discovery.Pool.SetMeta, i.e. memberlist.UpdateNode(5 s), after gossip was
// shut down.)
func linStopAll(t *testing.T, c *kvtest.Cluster) {
	var took []string
	for i := 0; i < c.N(); i++ {
		start := time.Now()
		leader := c.Node(i) != nil && c.Node(i).Stats().State == kv.StateLeader
		c.Stop(i)
		d := time.Since(start).Round(time.Millisecond)
		if leader {
			took = append(took, fmt.Sprintf("node%d (leader) %v", i, d))
		} else {
			took = append(took, fmt.Sprintf("node%d %v", i, d))
		}
	}
	t.Logf("closed: %s", strings.Join(took, ", "))
}

func TestLinearizability3Members(t *testing.T) {
	testLinearizability(t, 3, 3, linChaosBudget(t, 0.5))
}

func TestLinearizability5Members(t *testing.T) {
	testLinearizability(t, 5, 2, linChaosBudget(t, 0.5))
}

// TestLinearizabilityNegativeControl proves the checker bites: an isolated
// old leader still holds the values from before the majority moved on, and
// stale reads of it, started after the majority's writes returned, must make
// the history not linearizable. The same history with linearizable reads
// instead is linearizable.
func TestLinearizabilityNegativeControl(t *testing.T) {
	c := linCluster(t, 3)
	t0 := time.Now()
	now := func() int64 { return time.Since(t0).Nanoseconds() }
	ctx := ctxT(t, 2*time.Minute)
	writes, stale, fresh := newLinHistory(), newLinHistory(), newLinHistory()
	keys := []string{"ctl/a", "ctl/b", "ctl/c"}

	do := func(h *linHistory, client, node int, in linInput, opts ...kv.ReadOption) error {
		call := now()
		var v []byte
		var err error
		if in.Kind == linGet {
			v, err = c.Node(node).Get(ctx, in.Key, opts...)
		} else {
			err = c.Node(node).Set(ctx, in.Key, []byte(in.Value))
		}
		ret := now()
		h.record(client, node, in, call, ret, v, err)
		return err
	}
	for i, k := range keys {
		if err := do(writes, 0, i%3, linInput{Kind: linSet, Key: k, Value: "old:" + k}); err != nil {
			t.Fatalf("write on node%d: %v", i%3, err)
		}
	}
	// Every member, the leader to be isolated included, has applied them.
	for i := 0; i < c.N(); i++ {
		for _, k := range keys {
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				v, err := c.Node(i).Get(ctx, k, kv.Stale())
				if err == nil && string(v) == "old:"+k {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("node%d did not apply %s=old:%s within 10 s (%q, %v)", i, k, k, v, err)
				}
			}
		}
	}
	old := linLeader(t, c, -1, 30*time.Second)
	c.Isolate(old)
	l := linLeader(t, c, old, 30*time.Second)
	for _, k := range keys {
		if err := do(writes, 1, l, linInput{Kind: linSet, Key: k, Value: "new:" + k}); err != nil {
			t.Fatalf("write through new leader node%d: %v", l, err)
		}
	}
	// Every read starts after every write above returned.
	for _, k := range keys {
		if err := do(stale, 2, old, linInput{Kind: linGet, Key: k}, kv.Stale()); err != nil {
			t.Fatalf("stale read on the isolated node%d: %v", old, err)
		}
		if err := do(fresh, 3, l, linInput{Kind: linGet, Key: k}); err != nil {
			t.Fatalf("linearizable read on node%d: %v", l, err)
		}
		// A linearizable read on the isolated member must fail (and is
		// dropped from the history).
		short, cancel := context.WithTimeout(ctx, time.Second)
		call := now()
		v, err := c.Node(old).Get(short, k)
		cancel()
		if err == nil {
			t.Errorf("linearizable Get(%q) on the isolated old leader returned %q", k, v)
			fresh.record(4, old, linInput{Kind: linGet, Key: k}, call, now(), v, nil)
		}
	}
	for i := range stale.ops {
		stale.ops[i].Metadata = linMeta{Node: old, Stale: true}
		if got := stale.ops[i].Output.(linOutput).Value; !strings.HasPrefix(got, "old:") {
			t.Fatalf("the isolated old leader served %q: the control needs it to be behind", got)
		}
	}

	opsStale, _, _ := linMerge(writes, stale)
	if res := linCheck(t, "control-stale", opsStale, nil, false); res != porcupine.Illegal {
		t.Errorf("stale reads from an isolated old leader after the majority's writes: porcupine says %s, want %s", res, porcupine.Illegal)
	}
	opsFresh, _, _ := linMerge(writes, fresh)
	if res := linCheck(t, "control-fresh", opsFresh, nil, true); res != porcupine.Ok {
		t.Errorf("the same history with linearizable reads: porcupine says %s, want %s", res, porcupine.Ok)
	}

	// Healed, the old leader catches up.
	c.Heal()
	nkeys := linConverge(t, c, "control")
	final := newLinHistory()
	linFinalReads(t, c, final, 5, keys, now)
	ops, counts, _ := linMerge(writes, fresh, final)
	if res := linCheck(t, "control-final", ops, nil, true); res != porcupine.Ok {
		t.Errorf("after healing: porcupine says %s, want %s", res, porcupine.Ok)
	}
	for _, op := range final.ops {
		if v := op.Output.(linOutput).Value; !strings.HasPrefix(v, "new:") {
			t.Errorf("after healing, %s = %q", op.Input.(linInput).Key, v)
		}
	}
	_, staleCounts, _ := linMerge(stale)
	t.Logf("control: %d stale reads found not linearizable; fault: isolate leader node%d (node%d elected); "+
		"linearizable history: %s; %d keys converged", staleCounts["get/ok"], old, l, linFormatCounts(counts), nkeys)
}
