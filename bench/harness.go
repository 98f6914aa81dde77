package main

import (
	"context"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// opFunc performs one operation on key index k. Each caller goroutine gets
// its own opFunc, so an implementation may keep per-caller state in it.
type opFunc func(ctx context.Context, k int) error

// cellSpec is one measurement: one system, one workload, one concurrency.
type cellSpec struct {
	System   string
	Workload workload
	C        int
	Round    int
	Warm     time.Duration
	Dur      time.Duration
	MaxOps   int64
	Keys     int
	Profile  string // CPU profile path for the measured window, or ""
	NewOp    func(caller int) opFunc
	NotFound func(error) bool // nil: every error counts as an error
}

// cellResult is what one cell measured.
type cellResult struct {
	Ops      int64
	Errors   int64
	FirstErr error
	Elapsed  time.Duration
	CPU      time.Duration // process user+system CPU time in the window
	Mallocs  uint64        // process heap allocations in the window
	Hist     *histogram
}

func (r cellResult) opsPerSec() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Ops) / r.Elapsed.Seconds()
}

func (r cellResult) cpuPerOp() time.Duration {
	if r.Ops == 0 {
		return 0
	}
	return r.CPU / time.Duration(r.Ops)
}

func (r cellResult) allocsPerOp() float64 {
	if r.Ops == 0 {
		return 0
	}
	return float64(r.Mallocs) / float64(r.Ops)
}

// Phases of a cell.
const (
	phaseWarm int32 = iota
	phaseMeasure
	phaseStop
)

// runCell runs a closed loop of spec.C callers: each issues its next
// operation as soon as the previous one returns. Operations that start and
// end inside the measured window count; the window ends after spec.Dur or
// once spec.MaxOps operations have completed in it, whichever is first.
// Nothing here can run unbounded: every operation's context ends at most
// 30 s after the window.
func runCell(spec cellSpec) (cellResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), spec.Warm+spec.Dur+30*time.Second)
	defer cancel()

	var (
		phase    atomic.Int32
		count    atomic.Int64
		errs     atomic.Int64
		firstErr atomic.Pointer[error]
		full     = make(chan struct{})
		fullOnce sync.Once
		wg       sync.WaitGroup
	)
	hists := make([]*histogram, spec.C)
	for i := range spec.C {
		hists[i] = new(histogram)
		op := spec.NewOp(i)
		rng := rand.New(rand.NewPCG(uint64(spec.Round)<<32|uint64(i), uint64(spec.C)))
		h := hists[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				p := phase.Load()
				if p == phaseStop || ctx.Err() != nil {
					return
				}
				k := rng.IntN(spec.Keys)
				t0 := time.Now()
				err := op(ctx, k)
				d := time.Since(t0)
				if p != phaseMeasure || phase.Load() != phaseMeasure {
					continue
				}
				if err != nil {
					if errs.Add(1) == 1 {
						e := err // only here: &err would move every op's err to the heap
						firstErr.Store(&e)
					}
					continue
				}
				h.record(d)
				if count.Add(1) == spec.MaxOps {
					fullOnce.Do(func() { close(full) })
				}
			}
		}()
	}

	sleepCtx(ctx, spec.Warm)
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	var stopProfile func()
	if spec.Profile != "" {
		f, err := os.Create(spec.Profile)
		if err != nil {
			return cellResult{}, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return cellResult{}, err
		}
		stopProfile = func() { pprof.StopCPUProfile(); f.Close() }
	}
	cpu0 := processCPU()
	t0 := time.Now()
	phase.Store(phaseMeasure)
	timer := time.NewTimer(spec.Dur)
	select {
	case <-timer.C:
	case <-full:
	case <-ctx.Done():
	}
	timer.Stop()
	phase.Store(phaseStop)
	elapsed := time.Since(t0)
	cpu1 := processCPU()
	if stopProfile != nil {
		stopProfile()
	}
	runtime.ReadMemStats(&ms1)
	wg.Wait()

	res := cellResult{
		Ops:     count.Load(),
		Errors:  errs.Load(),
		Elapsed: elapsed,
		CPU:     cpu1 - cpu0,
		Mallocs: ms1.Mallocs - ms0.Mallocs,
		Hist:    new(histogram),
	}
	if p := firstErr.Load(); p != nil {
		res.FirstErr = *p
	}
	for _, h := range hists {
		res.Hist.merge(h)
	}
	return res, nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// processCPU is the user plus system CPU time of the whole process.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// histogram is a log-linear latency histogram with 128 sub-buckets per
// power of two (under 1% error), fixed size, no allocation per record.
const (
	histSubBits = 7
	histSub     = 1 << histSubBits
	histBuckets = (64 - histSubBits + 1) * histSub
)

type histogram struct {
	counts [histBuckets]uint64
	n      uint64
	max    int64
}

func histIndex(v int64) int {
	if v < histSub {
		if v < 0 {
			return 0
		}
		return int(v)
	}
	shift := bits.Len64(uint64(v)) - histSubBits - 1
	return (shift+1)*histSub + int(uint64(v)>>shift) - histSub
}

// histValue is the midpoint of bucket i, in nanoseconds.
func histValue(i int) int64 {
	if i < histSub {
		return int64(i)
	}
	shift := i/histSub - 1
	sub := int64(i%histSub + histSub)
	lo := sub << shift
	return lo + (int64(1)<<shift)/2
}

func (h *histogram) record(d time.Duration) {
	v := int64(d)
	h.counts[histIndex(v)]++
	h.n++
	if v > h.max {
		h.max = v
	}
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile returns the q-quantile (0 < q <= 1).
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(min(histValue(i), h.max))
		}
	}
	return time.Duration(h.max)
}

// profilePath names the CPU profile of a cell.
func profilePath(dir, system string, w workload, c, round int) string {
	return filepath.Join(dir, fmt.Sprintf("%s-%s-c%d-r%d.pprof", system, w.ID, c, round))
}
