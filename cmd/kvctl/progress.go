package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// progress shows bytes moved and the rate on stderr while a backup or a
// restore runs: when stderr is a terminal, or with --progress. It never
// writes to stdout.
type progress struct {
	e      *env
	label  string
	total  int64 // 0 or less: unknown
	n      atomic.Int64
	start  time.Time
	stop   chan struct{}
	done   chan struct{}
	finish func()
}

// progressEvery is how often the line is redrawn.
const progressEvery = 250 * time.Millisecond

func startProgress(e *env, label string, total int64) *progress {
	p := &progress{e: e, label: label, total: total, start: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	if !e.g.progress && !isTerminal(e.stderr) {
		p.finish = func() {}
		return p
	}
	go func() {
		defer close(p.done)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				fmt.Fprintf(e.stderr, "\r%s   ", p.line())
			case <-p.stop:
				fmt.Fprintf(e.stderr, "\r%s   \n", p.line())
				return
			}
		}
	}()
	var once sync.Once
	p.finish = func() {
		once.Do(func() {
			close(p.stop)
			<-p.done
		})
	}
	return p
}

func (p *progress) line() string {
	n := p.n.Load()
	secs := time.Since(p.start).Seconds()
	rate := 0.0
	if secs > 0 {
		rate = float64(n) / secs
	}
	if p.total > 0 {
		return fmt.Sprintf("%s: %s of %s (%d%%), %s/s", p.label, humanBytes(n), humanBytes(p.total), n*100/p.total, humanBytes(int64(rate)))
	}
	return fmt.Sprintf("%s: %s, %s/s", p.label, humanBytes(n), humanBytes(int64(rate)))
}

// reader counts what r yields.
func (p *progress) reader(r io.Reader) io.Reader { return &countReader{r, &p.n} }

type countReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}

// isTerminal says whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
