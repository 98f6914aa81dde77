// Command bench runs cohort/kv, embedded etcd and raw hashicorp/raft side
// by side on the same machine, in one process, with the same workloads, and
// writes a markdown report: the side-by-side section of docs/benchmarks.md.
//
//	cd bench && go run .            # the full matrix, about 10 minutes
//	cd bench && go run . -quick     # a reduced matrix, under 2 minutes
//
// Each system runs 3 members on 127.0.0.1 with real files in temporary
// directories and fsync on. The three clusters are started once; then every
// cell (workload x concurrency) is measured on each system in turn, and the
// whole sequence is repeated (-rounds), so the order is A B C A B C and a
// drift of the machine shows as a difference between rounds.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// workload is one kind of operation.
type workload struct {
	ID    string
	Title string
}

var workloads = []workload{
	{"write-leader", "write, on the leader"},
	{"write-all", "write, spread over all 3 members"},
	{"read-lin-leader", "linearizable read, leader"},
	{"read-lin-follower", "linearizable read, follower"},
	{"read-stale", "stale read, follower"},
	{"list100", "list 100 keys, linearizable, leader"},
}

// system is one of the three contenders.
type system interface {
	Name() string
	// Start starts 3 members under dir and loads the data set.
	Start(dir string, d *dataset) error
	// Prepare is called before each cell: it finds the current leader.
	Prepare() error
	// Op returns the operation of caller i of c for w, or nil if the system
	// has no such operation.
	Op(w workload, c, i int) opFunc
	Close() error
}

// dataset is the key space, the value and the List prefixes.
type dataset struct {
	keys     []string
	value    []byte
	valueStr string
	prefixes []string
}

func newDataset(n, valueSize int) *dataset {
	rng := rand.New(rand.NewPCG(6, 6))
	d := &dataset{value: make([]byte, valueSize)}
	for i := range d.value {
		d.value[i] = 'a' + byte(rng.IntN(26))
	}
	d.valueStr = string(d.value)
	seen := make(map[string]bool, n)
	for len(d.keys) < n {
		k := fmt.Sprintf("k%015x", rng.Uint64()>>4)
		if !seen[k] {
			seen[k] = true
			d.keys = append(d.keys, k)
		}
	}
	// Prefixes "k" + p hex digits, p as long as each prefix still covers
	// about 200 keys or more: List(prefix, Limit(100)) returns a full page.
	p := 0
	for n/pow16(p+1) >= 200 {
		p++
	}
	count := map[string]int{}
	for _, k := range d.keys {
		count[k[:1+p]]++
	}
	for pre, c := range count {
		if c >= 100 {
			d.prefixes = append(d.prefixes, pre)
		}
	}
	sort.Strings(d.prefixes)
	return d
}

func pow16(p int) int {
	r := 1
	for range p {
		r *= 16
	}
	return r
}

// prefix is the List prefix for key index k.
func (d *dataset) prefix(k int) string { return d.prefixes[k%len(d.prefixes)] }

type options struct {
	quick      bool
	out        string
	rounds     int
	dur, warm  time.Duration
	settle     time.Duration
	keys       int
	conc       []int
	maxOps     int64
	systems    *regexp.Regexp
	workloads  *regexp.Regexp
	cpuprofile string
	profile    *regexp.Regexp
	wait       time.Duration
	quietLoad  float64
	tmp        string
	args       []string

	etcdClient        string
	etcdConns         int
	etcdBatchInterval time.Duration
	etcdBatchLimit    int
}

func parseFlags() (*options, error) {
	var (
		o                           options
		conc, systems, wls, profile string
		dur, warm, settle           time.Duration
		rounds, keys                int
	)
	flag.BoolVar(&o.quick, "quick", false, "reduced matrix (C in {1,128}, 10k keys, 0.6 s cells), under 2 minutes")
	flag.StringVar(&o.out, "out", "../docs/benchmarks.md", "markdown file whose side-by-side section is replaced (\"\": print only; -quick prints only unless -out is given)")
	flag.IntVar(&rounds, "rounds", 0, "repetitions of the whole A B C sequence (default 2)")
	flag.DurationVar(&dur, "dur", 0, "measured time per cell (default 3s, quick 0.6s)")
	flag.DurationVar(&warm, "warm", 0, "warm-up per cell, not measured (default 500ms, quick 150ms)")
	flag.DurationVar(&settle, "settle", 0, "pause between cells (default 300ms, quick 50ms)")
	flag.IntVar(&keys, "keys", 0, "number of keys, loaded before the cells (default 100000, quick 10000)")
	flag.StringVar(&conc, "c", "", "comma-separated concurrencies (default 1,16,128,512; quick 1,128)")
	flag.Int64Var(&o.maxOps, "maxops", 3_000_000, "most operations measured per cell")
	flag.StringVar(&systems, "systems", "", "regexp: which systems run (cohort, etcd, raft, raft-wal)")
	flag.StringVar(&wls, "workloads", "", "regexp: which workloads run ("+workloadIDs()+")")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "directory: write a CPU profile of the measured window of each cell matching -profile")
	flag.StringVar(&profile, "profile", "^cohort/", "regexp on system/workload/C of the cells -cpuprofile profiles, e.g. '^cohort/write-leader/128$'")
	flag.DurationVar(&o.wait, "wait", 0, "wait up to this long for the 1-minute load average to fall below -quiet before starting")
	flag.Float64Var(&o.quietLoad, "quiet", 0.7, "the load average -wait waits for")
	flag.StringVar(&o.etcdClient, "etcd-client", etcdInProc, "how callers reach etcd: "+etcdInProc+" (etcd's in-process client, v3client, no socket) or "+etcdGRPC+" (clientv3 over gRPC on loopback)")
	flag.IntVar(&o.etcdConns, "etcd-conns", 0, "with -etcd-client "+etcdGRPC+": gRPC connections per member shared by the callers (0: one per 32 callers, at most 16)")
	flag.DurationVar(&o.etcdBatchInterval, "etcd-batch-interval", 0, "etcd's backend batch interval, embed.Config.BackendBatchInterval (0: etcd's default, 100ms)")
	flag.IntVar(&o.etcdBatchLimit, "etcd-batch-limit", 0, "etcd's backend batch limit, embed.Config.BackendBatchLimit (0: etcd's default, 10000)")
	flag.StringVar(&o.tmp, "tmpdir", "", "parent of the data directories (default: the system's temp dir)")
	flag.Parse()
	o.args = os.Args[1:]
	outSet := false
	flag.Visit(func(f *flag.Flag) { outSet = outSet || f.Name == "out" })
	if o.quick && !outSet {
		o.out = "" // a quick run does not replace the full run's numbers
	}

	o.rounds, o.dur, o.warm, o.settle, o.keys = 2, 3*time.Second, 500*time.Millisecond, 300*time.Millisecond, 100_000
	o.conc = []int{1, 16, 128, 512}
	if o.quick {
		o.dur, o.warm, o.settle, o.keys = 600*time.Millisecond, 150*time.Millisecond, 50*time.Millisecond, 10_000
		o.conc = []int{1, 128}
	}
	if rounds > 0 {
		o.rounds = rounds
	}
	if dur > 0 {
		o.dur = dur
	}
	if warm > 0 {
		o.warm = warm
	}
	if settle > 0 {
		o.settle = settle
	}
	if keys > 0 {
		o.keys = keys
	}
	if conc != "" {
		o.conc = nil
		for _, s := range strings.Split(conc, ",") {
			c, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || c < 1 {
				return nil, fmt.Errorf("-c: bad concurrency %q", s)
			}
			o.conc = append(o.conc, c)
		}
	}
	if o.etcdClient != etcdInProc && o.etcdClient != etcdGRPC {
		return nil, fmt.Errorf("-etcd-client: %q, want %s or %s", o.etcdClient, etcdInProc, etcdGRPC)
	}
	if o.keys < 1000 {
		return nil, errors.New("-keys: at least 1000")
	}
	var err error
	if o.systems, err = regexp.Compile(systems); err != nil {
		return nil, fmt.Errorf("-systems: %w", err)
	}
	if o.workloads, err = regexp.Compile(wls); err != nil {
		return nil, fmt.Errorf("-workloads: %w", err)
	}
	if o.profile, err = regexp.Compile(profile); err != nil {
		return nil, fmt.Errorf("-profile: %w", err)
	}
	return &o, nil
}

func workloadIDs() string {
	var ids []string
	for _, w := range workloads {
		ids = append(ids, w.ID)
	}
	return strings.Join(ids, ", ")
}

func main() {
	o, err := parseFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func run(o *options) error {
	quiet := waitQuiet(o.wait, o.quietLoad)
	started := time.Now()
	logf("load average at start %.2f (%s)", quiet.load, quiet.note)
	m := describeMachine()
	m.load = quiet

	if o.cpuprofile != "" {
		if err := os.MkdirAll(o.cpuprofile, 0o755); err != nil {
			return err
		}
	}
	dir, err := os.MkdirTemp(o.tmp, "cohort-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	d := newDataset(o.keys, 100)
	var systems []system
	for _, s := range []system{&cohortSystem{}, &etcdSystem{
		mode: o.etcdClient, conns: o.etcdConns,
		batchInterval: o.etcdBatchInterval, batchLimit: o.etcdBatchLimit,
	}, &raftSystem{}, &raftSystem{wal: true}} {
		if o.systems.MatchString(s.Name()) {
			systems = append(systems, s)
		}
	}
	defer func() {
		for _, s := range systems {
			if err := s.Close(); err != nil {
				logf("%s: close: %v", s.Name(), err)
			}
		}
	}()
	loadTimes := map[string]time.Duration{}
	for _, s := range systems {
		t0 := time.Now()
		if err := s.Start(dir, d); err != nil {
			return fmt.Errorf("%s: start: %w", s.Name(), err)
		}
		loadTimes[s.Name()] = time.Since(t0)
		logf("%s: 3 members up, %d keys loaded in %v", s.Name(), len(d.keys), loadTimes[s.Name()].Round(time.Millisecond))
	}

	// The CPU the process burns with all clusters up and no load: heartbeats,
	// gossip, timers. It is part of every cell's CPU µs/op.
	idleFor := 2 * time.Second
	if o.quick {
		idleFor = time.Second
	}
	runtime.GC()
	cpu0, t0 := processCPU(), time.Now()
	time.Sleep(idleFor)
	idle := float64(processCPU()-cpu0) / float64(time.Since(t0))
	logf("idle: the process uses %.1f%% of a core with every cluster up and no load", 100*idle)

	res := newResults()
	for _, w := range workloads {
		if !o.workloads.MatchString(w.ID) {
			continue
		}
		for _, c := range o.conc {
			for round := 1; round <= o.rounds; round++ {
				for _, s := range systems {
					if s.Op(w, c, 0) == nil {
						continue
					}
					if err := s.Prepare(); err != nil {
						return fmt.Errorf("%s: %w", s.Name(), err)
					}
					runtime.GC()
					spec := cellSpec{
						System: s.Name(), Workload: w, C: c, Round: round,
						Warm: o.warm, Dur: o.dur, MaxOps: o.maxOps, Keys: len(d.keys),
						NewOp: func(i int) opFunc { return s.Op(w, c, i) },
					}
					id := fmt.Sprintf("%s/%s/%d", s.Name(), w.ID, c)
					if o.cpuprofile != "" && o.profile.MatchString(id) {
						spec.Profile = profilePath(o.cpuprofile, s.Name(), w, c, round)
					}
					r, err := runCell(spec)
					if err != nil {
						return fmt.Errorf("%s: %w", id, err)
					}
					res.add(s.Name(), w.ID, c, r)
					line := fmt.Sprintf("round %d %-38s %10.0f ops/s  p50 %8s  p99 %8s  cpu %7.1f µs/op  allocs %6.1f/op",
						round, id, r.opsPerSec(), fmtDur(r.Hist.quantile(0.5)), fmtDur(r.Hist.quantile(0.99)),
						us(r.cpuPerOp()), r.allocsPerOp())
					if r.Errors > 0 {
						line += fmt.Sprintf("  ERRORS %d (first: %v)", r.Errors, r.FirstErr)
					}
					if spec.Profile != "" {
						line += "  profile " + spec.Profile
					}
					logf("%s", line)
					time.Sleep(o.settle)
				}
			}
		}
	}
	var names []string
	for _, s := range systems {
		names = append(names, s.Name())
	}
	rep := &report{
		opts: o, machine: m, results: res, systems: names, data: d,
		loadTimes: loadTimes, started: started, took: time.Since(started), idle: idle,
	}
	md := rep.markdown()
	fmt.Println(md)
	if o.out != "" {
		if err := spliceSection(o.out, md); err != nil {
			return err
		}
		logf("wrote the side-by-side section of %s", o.out)
	}
	return nil
}

// checkValue is what the read operations check a returned value with.
func checkValue(got []byte, d *dataset) error {
	if len(got) != len(d.value) {
		return fmt.Errorf("value of %d bytes, want %d", len(got), len(d.value))
	}
	return nil
}

func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", us(d))
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	}
}

func us(d time.Duration) float64 { return float64(d) / 1e3 }

// loadWithin runs fn(k) for every key index from `workers` goroutines and
// returns the first error; ctx bounds it.
func loadWithin(ctx context.Context, n, workers int, fn func(ctx context.Context, k int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	next := make(chan int)
	errc := make(chan error, workers)
	for range workers {
		go func() {
			for k := range next {
				if err := fn(ctx, k); err != nil {
					errc <- fmt.Errorf("load key %d: %w", k, err)
					cancel()
					for range next {
					}
					return
				}
			}
			errc <- nil
		}()
	}
	var err error
feed:
	for k := range n {
		select {
		case next <- k:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	for range workers {
		if e := <-errc; e != nil && err == nil {
			err = e
		}
	}
	if err == nil {
		err = ctx.Err()
	}
	return err
}
