package kv_test

// The transaction workloads of the linearizability suite, under the same
// faults (one round of each scenario for 3 members, or KV_CHAOS):
//
//   - a compare-and-set register per key: reads, and compare-and-sets on
//     the value (Txn with ValueIs or Absent), checked by porcupine;
//   - a bank: transfers between accounts by Txn on their ModRevs; every
//     read of all the accounts (ListEntries, linearizable or stale, on any
//     member) must find the same total;
//   - a counter incremented by read and CompareAndSet loops: its final
//     value lies between the acknowledged increments and those plus the
//     ones whose outcome is unknown.
//
// Negative controls: a compare-and-set that is not atomic makes a history
// porcupine refuses, and with the session table off, lost answers make
// the counter count more than could have been applied.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

// The compare-and-set register: state is the value, "" for absent.
type casInput struct {
	Key      string
	Read     bool
	Expect   string // cas: the value it expects ("" for absent)
	New      string // cas
	Unknown  bool
	Observed string // read: what it saw ("" for absent)
	OK       bool   // cas: succeeded
}

var casModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string]int{}
		var out [][]porcupine.Operation
		for _, op := range h {
			k := op.Input.(casInput).Key
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
	Step: func(state, input, _ any) (bool, any) {
		st, in := state.(string), input.(casInput)
		switch {
		case in.Read:
			return st == in.Observed, st
		case in.Unknown:
			// It may have been applied, wherever it is placed after its
			// call; placed where its condition fails, it did nothing.
			if st == in.Expect {
				return true, in.New
			}
			return true, st
		case in.OK:
			return st == in.Expect, in.New
		default:
			return st != in.Expect, st
		}
	},
	Equal: func(a, b any) bool { return a.(string) == b.(string) },
	DescribeOperation: func(input, _ any) string {
		in := input.(casInput)
		if in.Read {
			return fmt.Sprintf("get(%s) -> %q", in.Key, in.Observed)
		}
		res := map[bool]string{true: "ok", false: "conflict"}[in.OK]
		if in.Unknown {
			res = "?"
		}
		return fmt.Sprintf("cas(%s, %q -> %q) %s", in.Key, in.Expect, in.New, res)
	},
}

// casOp is one compare-and-set of the register on s: Absent or ValueIs
// decides, in one Txn.
func casOp(ctx context.Context, s *kv.Store, key, expect, value string) (bool, error) {
	cond := kv.ValueIs(key, []byte(expect))
	if expect == "" {
		cond = kv.Absent(key)
	}
	res, err := s.Txn(ctx, kv.Txn{If: []kv.Cond{cond}, Then: []kv.Op{kv.OpSet(key, []byte(value))}})
	return res.Succeeded, err
}

// txnWorkload runs the three workloads on c until stop is closed.
type txnWorkload struct {
	c  *kvtest.Cluster
	t0 time.Time

	mu        sync.Mutex
	casOps    []porcupine.Operation
	bankReads int
	transfers int
	bankBad   []string
	acked     int // counter increments
	unknown   int
	others    []string
}

const (
	bankAccounts = 5
	bankStart    = 100
)

func (w *txnWorkload) now() int64 { return time.Since(w.t0).Nanoseconds() }

func (w *txnWorkload) other(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.others) < 10 {
		w.others = append(w.others, err.Error())
	}
}

// definite says whether a failed write certainly had no effect.
func definite(err error) bool {
	return !errors.Is(err, kv.ErrOutcomeUnknown)
}

func (w *txnWorkload) casClient(id, node int, stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	rng := rand.New(rand.NewPCG(uint64(id), 99))
	last := map[string]string{}
	for seq := 0; ; seq++ {
		select {
		case <-stop:
			return
		default:
		}
		s := w.c.Node(node)
		if s == nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		key := fmt.Sprint("casreg/", rng.IntN(3))
		ctx, cancel := context.WithTimeout(context.Background(), linOpTimeout)
		call := w.now()
		var in casInput
		if rng.IntN(2) == 0 {
			v, err := s.Get(ctx, key)
			ret := w.now()
			cancel()
			if err != nil && !errors.Is(err, kv.ErrNotFound) {
				continue // a failed read has no effect
			}
			in = casInput{Key: key, Read: true, Observed: string(v)}
			last[key] = string(v)
			w.mu.Lock()
			w.casOps = append(w.casOps, porcupine.Operation{ClientId: id, Input: in, Call: call, Return: ret})
			w.mu.Unlock()
		} else {
			in = casInput{Key: key, Expect: last[key], New: fmt.Sprintf("c%d.%d", id, seq)}
			ok, err := casOp(ctx, s, key, in.Expect, in.New)
			ret := w.now()
			cancel()
			switch {
			case err == nil:
				in.OK = ok
			case definite(err):
				continue
			default:
				in.Unknown, ret = true, -1
			}
			w.mu.Lock()
			w.casOps = append(w.casOps, porcupine.Operation{ClientId: id, Input: in, Call: call, Return: ret})
			w.mu.Unlock()
		}
		time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
	}
}

func bankKey(i int) string { return fmt.Sprintf("bank/%d", i) }

func (w *txnWorkload) bankClient(id, node int, stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	rng := rand.New(rand.NewPCG(uint64(id), 7))
	for {
		select {
		case <-stop:
			return
		default:
		}
		s := w.c.Node(node)
		if s == nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), linOpTimeout)
		if rng.IntN(2) == 0 {
			var opts []kv.ReadOption
			if rng.IntN(2) == 0 {
				opts = append(opts, kv.Stale())
			}
			ents, rev, err := s.ListEntries(ctx, "bank/", opts...)
			cancel()
			if err != nil {
				continue
			}
			sum := 0
			for _, e := range ents {
				n, _ := strconv.Atoi(string(e.Value))
				sum += n
			}
			w.mu.Lock()
			w.bankReads++
			if len(ents) != bankAccounts || sum != bankAccounts*bankStart {
				w.bankBad = append(w.bankBad, fmt.Sprintf("node%d (stale %v) at revision %d: %d accounts, total %d", node, len(opts) > 0, rev, len(ents), sum))
			}
			w.mu.Unlock()
			continue
		}
		from, to := rng.IntN(bankAccounts), rng.IntN(bankAccounts-1)
		if to >= from {
			to++
		}
		a, errA := s.GetEntry(ctx, bankKey(from))
		b, errB := s.GetEntry(ctx, bankKey(to))
		if errA != nil || errB != nil {
			cancel()
			continue
		}
		va, _ := strconv.Atoi(string(a.Value))
		vb, _ := strconv.Atoi(string(b.Value))
		amount := rng.IntN(va + 1)
		res, err := s.Txn(ctx, kv.Txn{
			If:   []kv.Cond{kv.ModRevIs(a.Key, a.ModRev), kv.ModRevIs(b.Key, b.ModRev)},
			Then: []kv.Op{kv.OpSet(a.Key, []byte(strconv.Itoa(va-amount))), kv.OpSet(b.Key, []byte(strconv.Itoa(vb+amount)))},
		})
		cancel()
		if err == nil && res.Succeeded {
			w.mu.Lock()
			w.transfers++
			w.mu.Unlock()
		}
		if err != nil && definite(err) && !errors.Is(err, kv.ErrNoLeader) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, kv.ErrClosed) {
			w.other(err)
		}
	}
}

func (w *txnWorkload) counterClient(node int, stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		select {
		case <-stop:
			return
		default:
		}
		s := w.c.Node(node)
		if s == nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), linOpTimeout)
		e, err := s.GetEntry(ctx, "counter")
		if err != nil {
			cancel()
			continue
		}
		n, _ := strconv.Atoi(string(e.Value))
		_, err = s.CompareAndSet(ctx, "counter", []byte(strconv.Itoa(n+1)), e.ModRev)
		cancel()
		w.mu.Lock()
		switch {
		case err == nil:
			w.acked++
		case !definite(err):
			w.unknown++
		}
		w.mu.Unlock()
	}
}

// setup writes the bank's accounts and the counter.
func (w *txnWorkload) setup(t *testing.T) {
	t.Helper()
	ctx := ctxT(t, time.Minute)
	l := linLeader(t, w.c, -1, 30*time.Second)
	ops := []kv.Op{kv.OpSet("counter", []byte("0"))}
	for i := range bankAccounts {
		ops = append(ops, kv.OpSet(bankKey(i), []byte(strconv.Itoa(bankStart))))
	}
	res, err := w.c.Node(l).Txn(ctx, kv.Txn{Then: ops})
	if err != nil {
		t.Fatal(err)
	}
	// Every member has the accounts before a stale read may look.
	for i := range w.c.N() {
		for w.c.Node(i).Stats().AppliedIndex < res.Revision {
			if ctx.Err() != nil {
				t.Fatalf("node%d did not apply the setup: %v", i, ctx.Err())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// start runs clients of each workload on every member.
func (w *txnWorkload) start(stop <-chan struct{}, wg *sync.WaitGroup) {
	for i := range w.c.N() {
		wg.Add(4)
		go w.casClient(2*i, i, stop, wg)
		go w.casClient(2*i+1, i, stop, wg)
		go w.bankClient(i, i, stop, wg)
		go w.counterClient(i, stop, wg)
	}
}

// check checks what the workloads recorded, once the cluster is healed.
func (w *txnWorkload) check(t *testing.T) {
	t.Helper()
	ctx := ctxT(t, time.Minute)
	l := linLeader(t, w.c, -1, 30*time.Second)
	// Final reads of the registers, after everything.
	for k := range 3 {
		key := fmt.Sprint("casreg/", k)
		call := w.now()
		v, err := w.c.Node(l).Get(ctx, key)
		if err != nil && !errors.Is(err, kv.ErrNotFound) {
			t.Fatal(err)
		}
		w.casOps = append(w.casOps, porcupine.Operation{ClientId: 1000, Input: casInput{Key: key, Read: true, Observed: string(v)}, Call: call, Return: w.now()})
	}
	var end int64
	for _, op := range w.casOps {
		end = max(end, op.Call, op.Return)
	}
	unknownCAS := 0
	for i := range w.casOps {
		if w.casOps[i].Return < 0 {
			w.casOps[i].Return = end + 1
			unknownCAS++
		}
	}
	res := porcupine.CheckOperationsTimeout(casModel, w.casOps, 2*time.Minute)
	t.Logf("compare-and-set registers: %d operations (%d unknown): %s", len(w.casOps), unknownCAS, res)
	if res != porcupine.Ok {
		t.Errorf("the compare-and-set register history is %s (not linearizable)", res)
	}
	t.Logf("bank: %d transfers, %d reads of every account", w.transfers, w.bankReads)
	if w.transfers == 0 || w.bankReads == 0 {
		t.Errorf("the bank workload did not run")
	}
	for _, b := range w.bankBad {
		t.Errorf("bank read with another total: %s", b)
	}
	v, err := w.c.Node(l).Get(ctx, "counter")
	if err != nil {
		t.Fatal(err)
	}
	final, _ := strconv.Atoi(string(v))
	t.Logf("counter: %d, after %d acknowledged increments and %d of unknown outcome", final, w.acked, w.unknown)
	if final < w.acked || final > w.acked+w.unknown {
		t.Errorf("counter %d outside [%d, %d]: an increment was lost or applied twice", final, w.acked, w.acked+w.unknown)
	}
	for _, o := range w.others {
		t.Errorf("unexpected error: %s", o)
	}
}

// The three workloads under one round of each fault of the suite.
func TestLinearizabilityTxnWorkloads(t *testing.T) {
	r := &linRun{t: t, n: 3, seed: rand.Uint64(), stop: make(chan struct{}), faults: map[string]int{}}
	r.rng = rand.New(rand.NewPCG(r.seed, 0))
	t.Logf("seed %d", r.seed)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	r.c = linCluster(t, 3)
	t.Cleanup(r.halt)
	r.t0 = time.Now()
	w := &txnWorkload{c: r.c, t0: r.t0}
	w.setup(t)
	w.start(r.stop, &wg)
	chaos := linChaosBudget(t, 0.5)
	rounds := 0
	for deadline := time.Now().Add(chaos); ; rounds++ {
		var sc linScenario
		if chaos == 0 {
			if rounds == len(linScenarios) {
				break
			}
			sc = linScenarios[rounds]
		} else {
			if rounds > 0 && time.Now().After(deadline) {
				break
			}
			sc = linScenarios[r.rng.IntN(len(linScenarios))]
		}
		if sc.min > r.n {
			continue
		}
		time.Sleep(300 * time.Millisecond)
		if stuck := r.play(sc, chaos > 0); stuck != nil {
			r.halt()
			t.Fatalf("the cluster stopped electing a leader: %v", stuck)
		}
		r.c.Heal()
	}
	time.Sleep(500 * time.Millisecond)
	r.halt()
	wg.Wait()
	r.c.Heal()
	linConverge(t, r.c, "txn")
	w.check(t)
	linStopAll(t, r.c)
}

// Negative control for the register check: a compare-and-set made of a
// read and a write lets two succeed from one value; porcupine refuses the
// history, and accepts the same steps done with Txn.
func TestLinearizabilityTxn_NegativeControl_NotAtomicCAS(t *testing.T) {
	c := linCluster(t, 3)
	ctx := ctxT(t, time.Minute)
	t0 := time.Now()
	now := func() int64 { return time.Since(t0).Nanoseconds() }
	for _, atomic := range []bool{false, true} {
		key := fmt.Sprint("ctl/", atomic)
		var ops []porcupine.Operation
		s0, s1 := c.Node(0), c.Node(1)
		// The racing steps, in this order: client 1 starts its
		// compare-and-set of "" (absent) -> b and, when it is not atomic,
		// reads ""; client 0 compare-and-sets "" -> a; client 1 goes on.
		var c1OK bool
		var c1Err error
		c1Call := now()
		if !atomic {
			if _, err := s1.Get(ctx, key); !errors.Is(err, kv.ErrNotFound) {
				t.Fatal(err)
			}
		}
		call := now()
		ok, err := casOp(ctx, s0, key, "", "a")
		if err != nil || !ok {
			t.Fatalf("client 0: %v, %v", ok, err)
		}
		ops = append(ops, porcupine.Operation{ClientId: 0, Input: casInput{Key: key, Expect: "", New: "a", OK: true}, Call: call, Return: now()})
		if atomic {
			c1OK, c1Err = casOp(ctx, s1, key, "", "b")
		} else {
			c1Err = s1.Set(ctx, key, []byte("b")) // its write, after its read
			c1OK = c1Err == nil
		}
		if c1Err != nil {
			t.Fatal(c1Err)
		}
		ops = append(ops, porcupine.Operation{ClientId: 1, Input: casInput{Key: key, Expect: "", New: "b", OK: c1OK}, Call: c1Call, Return: now()})
		call = now()
		v, err := s0.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		ops = append(ops, porcupine.Operation{ClientId: 2, Input: casInput{Key: key, Read: true, Observed: string(v)}, Call: call, Return: now()})
		res := porcupine.CheckOperations(casModel, ops)
		t.Logf("atomic %v: client 1's compare-and-set %v, final value %q: %v", atomic, c1OK, v, res)
		if atomic && !res {
			t.Errorf("the history with Txn is not linearizable")
		}
		if !atomic && res {
			t.Errorf("porcupine accepted two compare-and-sets from one value: the check would not catch a CAS that is not atomic")
		}
	}
}

// Negative control for the counter bound: with the session table off,
// answers lost after the apply make increments count twice, beyond what
// the bound allows.
func TestLinearizabilityTxn_NegativeControl_CounterWithoutSessions(t *testing.T) {
	t.Cleanup(kv.SetSessionsOff())
	c := linCluster(t, 3)
	w := &txnWorkload{c: c, t0: time.Now()}
	w.setup(t)
	l := linLeader(t, c, -1, 30*time.Second)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var lose atomic.Bool
	lose.Store(true)
	wg.Add(1)
	go func() { // lost answers, all along
		defer wg.Done()
		for lose.Load() {
			for i := range c.N() {
				if i == l {
					kv.LoseApplied(c.Node(i), 1)
				} else {
					kv.LoseReplies(c.Node(i), 1)
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	for i := range c.N() {
		wg.Add(1)
		go w.counterClient(i, stop, &wg)
	}
	time.Sleep(3 * time.Second)
	close(stop)
	lose.Store(false)
	wg.Wait()
	ctx := ctxT(t, time.Minute)
	v, err := c.Node(l).Get(ctx, "counter")
	if err != nil {
		t.Fatal(err)
	}
	final, _ := strconv.Atoi(string(v))
	t.Logf("without sessions: counter %d after %d acknowledged increments and %d unknown", final, w.acked, w.unknown)
	if final <= w.acked+w.unknown {
		t.Fatalf("the counter bound did not catch increments applied twice (counter %d, bound %d)", final, w.acked+w.unknown)
	}
}
