package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	kv "github.com/cohortkv/kv"
)

const (
	// defaultHeartbeat is how often a quiet watch stream gets a progress
	// line, so that proxies and load balancers keep the connection open
	// and the client knows how far it has been brought.
	defaultHeartbeat = 10 * time.Second
	// streamWriteTimeout bounds one write to a watch stream: a client
	// that reads nothing for this long, with the socket buffers full, is
	// cut off. The server's WriteTimeout does not apply to streams.
	streamWriteTimeout = 30 * time.Second
	// watchQueue is how many events the store's watch may run ahead of
	// the writes to the client.
	watchQueue = 64
)

// errShuttingDown ends the watch streams of a kvserver that stops.
var errShuttingDown = fmt.Errorf("kvserver shutting down: resume on another member (%w)", kv.ErrClosed)

// watchEvent is one line of /api/watch for a change: a put carries the
// key's entry as /api/get answers it; a delete, the key and the delete's
// revision (mod_rev).
type watchEvent struct {
	Type      string  `json:"type"`
	Key       string  `json:"key"`
	Value     *string `json:"value,omitempty"`
	CreateRev uint64  `json:"create_rev,omitempty"`
	ModRev    uint64  `json:"mod_rev"`
	Version   uint64  `json:"version,omitempty"`
	Lease     *int64  `json:"lease,omitempty"`
}

func toWatchEvent(ev kv.Event) watchEvent {
	out := watchEvent{Type: ev.Type.String(), Key: ev.Entry.Key, ModRev: ev.Entry.ModRev}
	if ev.Type == kv.EventPut {
		v, lease := string(ev.Entry.Value), int64(ev.Entry.Lease)
		out.Value, out.CreateRev, out.Version, out.Lease = &v, ev.Entry.CreateRev, ev.Entry.Version, &lease
	}
	return out
}

// watchProgress is the line that says every change up to Rev has been
// sent: the first line of every stream, then one per heartbeat.
type watchProgress struct {
	Type string `json:"type"` // "progress"
	Rev  uint64 `json:"rev"`
}

type watchItem struct {
	ev  kv.Event
	err error
}

// watch streams the changes under prefix= from revision from_rev= (absent
// or 0: from now) as newline-delimited JSON: a progress line first, then
// one line per event, a progress line every heartbeat, and an error line
// last when the watch ends with an error. It runs until the client goes
// away, this kvserver stops, or the store's watch ends.
func (a *api) watch(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	prefix := q.Get("prefix")
	var from uint64
	if s := q.Get("from_rev"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			badRequest(w, fmt.Sprintf("from_rev=%q: want a revision, a whole number of 0 or more (0: from now)", s))
			return
		}
		from = n
	}
	select {
	case <-a.stopping:
		a.fail(w, errShuttingDown)
		return
	default:
	}
	if from == 0 {
		// "Now" is the revision this member has applied: the watch
		// continues from it, as it continues a list.
		ctx, cancel := a.ctx(r)
		_, rev, err := a.store.ListEntries(ctx, prefix, kv.Limit(1), kv.Stale())
		cancel()
		if err != nil {
			a.fail(w, err)
			return
		}
		from = rev + 1
	}
	// A start in the past that is no longer kept is 410 Gone, with the
	// oldest revision kept, before anything of the stream is written.
	if err := a.watchable(prefix, from); err != nil {
		a.fail(w, err)
		return
	}

	ctx, cancel := context.WithCancel(r.Context())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	// The store's watch runs on its own goroutine, so that heartbeats go
	// out while it waits for changes. Its progress events (every change
	// up to a revision has been yielded, also as revisions pass outside
	// the prefix) move the progress line on, so that a client of a quiet
	// prefix can resume from a recent revision.
	items := make(chan watchItem, watchQueue)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ev, err := range a.store.WatchProgress(ctx, prefix, from) {
			select {
			case items <- watchItem{ev, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()

	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	send := func(v any) bool {
		// A rolling deadline instead of the server's WriteTimeout, which
		// counts from the request and would cut the stream.
		rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
		return enc.Encode(v) == nil
	}
	flush := func() bool {
		rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
		return rc.Flush() == nil
	}
	h := w.Header()
	h.Set("Content-Type", "application/x-ndjson")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: pass lines on as they come
	w.WriteHeader(http.StatusOK)

	// done is the revision up to which every change has been sent, as
	// the store's last progress event said.
	done := from - 1
	if !send(watchProgress{"progress", done}) || !flush() {
		return
	}
	heartbeat := time.NewTicker(a.heartbeat)
	defer heartbeat.Stop()
	for {
		select {
		case it := <-items:
			// Write what is ready, then flush once: the events of one
			// revision (a transaction, writes committed together) go
			// out together.
			for more := true; more; {
				if it.err != nil {
					if ctx.Err() == nil {
						a.endStream(send, it.err)
						flush()
					}
					return
				}
				if it.ev.Type == kv.EventProgress {
					done = max(done, it.ev.Entry.ModRev)
				} else if !send(toWatchEvent(it.ev)) {
					return
				}
				select {
				case it = <-items:
				default:
					more = false
				}
			}
			if !flush() {
				return
			}
		case <-heartbeat.C:
			if !send(watchProgress{"progress", done}) || !flush() {
				return
			}
		case <-a.stopping:
			a.endStream(send, errShuttingDown)
			flush()
			return
		case <-ctx.Done():
			return
		}
	}
}

// endStream writes the error line that ends a stream: the error as fail
// would answer it, with "type":"error" and the status a request would
// have had.
func (a *api) endStream(send func(any) bool, err error) {
	body := errorBody(err)
	body["type"] = "error"
	body["status"] = a.status(err)
	send(body)
}

// watchable says whether a watch from revision from can start: nil, or
// the error the store's watch would end with at once (the revision is no
// longer kept, the store is closed).
func (a *api) watchable(prefix string, from uint64) error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // read what is there, wait for nothing
	for _, err := range a.store.Watch(ctx, prefix, from) {
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return err // nil after an event
	}
	return nil
}

// stopWatches ends every watch stream, each with an error line: run calls
// it when the HTTP server shuts down, which would otherwise wait for the
// streams to end by themselves.
func (a *api) stopWatches() {
	a.stopOnce.Do(func() { close(a.stopping) })
}
