package kv

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cohortkv/kv/internal/storage"
)

// EventType says what a change did: EventPut or EventDelete.
type EventType uint8

// Event types.
const (
	// EventPut: the key was written (created or changed).
	EventPut EventType = 1
	// EventDelete: the key was deleted, by a Delete, a Txn, or the expiry
	// or revocation of its lease.
	EventDelete EventType = 2
	// EventProgress: no change, only news of the watch's progress (only
	// WatchProgress yields it): every change under the prefix with a
	// revision up to Entry.ModRev has been yielded.
	EventProgress EventType = 3
)

// String returns "put" or "delete".
func (t EventType) String() string {
	switch t {
	case EventPut:
		return "put"
	case EventDelete:
		return "delete"
	case EventProgress:
		return "progress"
	}
	return fmt.Sprintf("EventType(%d)", uint8(t))
}

// Event is one change to one key, as Watch yields it.
type Event struct {
	Type EventType
	// Entry is the key as the change left it. For a put: Key, Value and
	// its revisions (ModRev is the change's revision) and Lease. For a
	// delete: Key and ModRev (the delete's revision); Value is nil.
	Entry Entry
}

// ErrCompacted is wrapped by the error of a Watch whose fromRev is older
// than the history kept (Config.WatchHistory). errors.As to
// *CompactedError gives the oldest revision a Watch can start from.
var ErrCompacted = errors.New("kv: revision compacted")

// CompactedError is the error of a Watch that asked for changes no longer
// kept. It wraps ErrCompacted.
type CompactedError struct {
	// Rev is the revision the Watch asked for.
	Rev uint64
	// Oldest is the oldest revision a Watch can start from now: the
	// history holds every change from it on.
	Oldest uint64
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("kv: revision %d compacted: the history kept starts at revision %d (Config.WatchHistory)", e.Rev, e.Oldest)
}

// Unwrap returns ErrCompacted.
func (e *CompactedError) Unwrap() error { return ErrCompacted }

// Watch yields every change to keys under prefix with revision >= fromRev
// (0: from now, the changes after the revision this member has applied),
// in revision order, each revision once and with no gaps; the changes of
// one revision (one Txn, or writes group-committed together) come
// together, in the order they were applied. Starting from the revision
// ListEntries returned plus one continues that list with no change missed
// or repeated.
//
// The stream is that of this member's own applied state: on a follower, a
// change comes once the follower has applied it, which may be a little
// after a write on the leader returned. Reads are linearizable; a watch is
// as fresh as the member it runs on. The changes come from the change log
// kept in the data file (Config.WatchHistory bounds it), so a Watch can
// resume from the last revision it saw plus one after a restart or on
// another member, as long as that revision is still kept.
//
// It ends when ctx ends (yielding an error wrapping ctx.Err()), when the
// Store closes (ErrClosed), when this member halts, or at once with an
// error wrapping ErrCompacted (a *CompactedError) when fromRev is older
// than the history kept, or falls out of it while the watcher lags (a
// Restore also ends every Watch this way: its changes are not in the
// history). Stop early by breaking out of the loop. A watcher that reads
// slowly never slows writes down: it reads what it missed from the change
// log. Each yielded Event, its Value included, is the caller's.
func (s *Store) Watch(ctx context.Context, prefix string, fromRev uint64) iter.Seq2[Event, error] {
	return s.watch(ctx, prefix, fromRev, false)
}

// WatchProgress is Watch that also yields progress events (EventProgress),
// which carry a revision in Entry.ModRev and say that every change under
// prefix up to it has been yielded. The first comes as soon as the watch
// has caught up with this member's applied state: a watch from an old
// revision is synced then, as with etcd's progress notifications or the
// end of NATS's initial values. Then one comes at most every
// progressInterval while revisions pass, whether or not they change keys
// under prefix, so that a watcher of a quiet prefix can resume from a
// recent revision. Its other events, and its end, are Watch's.
func (s *Store) WatchProgress(ctx context.Context, prefix string, fromRev uint64) iter.Seq2[Event, error] {
	return s.watch(ctx, prefix, fromRev, true)
}

// progressInterval bounds how often WatchProgress reports progress once
// it has caught up.
const progressInterval = time.Second

func (s *Store) watch(ctx context.Context, prefix string, fromRev uint64, progress bool) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		if err := s.usable(); err != nil {
			yield(Event{}, err)
			return
		}
		h := s.fsm.hist
		next := fromRev
		if next == 0 {
			next = h.lastRev() + 1
		}
		var buf []histRev
		// Progress: the last revision reported, when, and a timer for a
		// report held back by progressInterval.
		var (
			reported   uint64
			synced     bool
			lastReport time.Time
			due        *time.Timer
			dueC       <-chan time.Time
		)
		defer func() {
			if due != nil {
				due.Stop()
			}
		}()
		for {
			wake := s.fsm.appliedChan()
			var err error
			buf, next, err = h.read(s.eng, buf[:0], next, watchReadRevs)
			if err != nil {
				var ce *CompactedError
				if !errors.As(err, &ce) {
					err = s.engineErr(err)
				}
				yield(Event{}, err)
				return
			}
			for _, r := range buf {
				for _, ev := range r.events {
					if !strings.HasPrefix(ev.Entry.Key, prefix) {
						continue
					}
					ev.Entry.Value = bytes.Clone(ev.Entry.Value)
					if ev.Type == EventPut && ev.Entry.Value == nil {
						ev.Entry.Value = []byte{}
					}
					if !yield(ev, nil) {
						return
					}
				}
			}
			if len(buf) > 0 {
				if err := ctx.Err(); err != nil {
					yield(Event{}, watchCtxErr(ctx))
					return
				}
				continue
			}
			// Caught up: every change up to next-1 has been yielded.
			if progress && (!synced || min(next-1, h.lastRev()) > reported) {
				if wait := progressInterval - time.Since(lastReport); synced && wait > 0 {
					if dueC == nil {
						due = time.NewTimer(wait)
						dueC = due.C
					}
				} else {
					// A watch from a revision not applied yet has seen
					// everything up to the last applied one.
					rev := min(next-1, h.lastRev())
					synced, reported, lastReport = true, max(rev, reported), time.Now()
					if !yield(Event{Type: EventProgress, Entry: Entry{ModRev: rev}}, nil) {
						return
					}
				}
			}
			select {
			case <-dueC:
				dueC = nil
				continue
			case <-wake:
			case <-ctx.Done():
				yield(Event{}, watchCtxErr(ctx))
				return
			case <-s.ctx.Done():
				yield(Event{}, ErrClosed)
				return
			case <-s.halter.ch:
				yield(Event{}, s.usable())
				return
			}
			if err := s.usable(); err != nil {
				yield(Event{}, err)
				return
			}
		}
	}
}

// watchReadRevs bounds the revisions one read of the history returns.
const watchReadRevs = 256

// The change log: for each revision that changed a key, under
// sysHistPrefix + rev (8 bytes big endian), its changes:
//
//	uvarint n, then each: byte type, key, and for a put: uvarint
//	CreateRev, uvarint Version, uvarint lease, bytes value
//
// and under sysHistMetaKey: the oldest revision kept (every change from it
// on is in the log), the number of revisions and their bytes, 8 bytes big
// endian each. The state machine writes it in the transaction of the
// changes, and trims it there, deterministically, to Config.WatchHistory.
const (
	sysHistPrefix  = sysPrefix + "h/"
	sysHistMetaKey = sysPrefix + "hmeta"
)

// histRev is the changes of one revision.
type histRev struct {
	rev    uint64
	events []Event // alias blob
	size   int
}

// Bounds of the recent changes a member keeps in memory for its watchers;
// older ones are read from the change log.
const (
	ringRevs  = 4096
	ringBytes = 16 << 20
)

// history serves the change log to watchers: the recent revisions in
// memory, older ones from the data file. The state machine feeds it.
type history struct {
	maxRevs  uint64
	maxBytes uint64

	mu       sync.Mutex
	ring     []histRev // committed revisions, ascending
	ringFrom uint64    // every change with a revision >= ringFrom is in ring
	size     int       // bytes in ring
	last     uint64    // the last revision committed
	start    uint64    // the oldest revision the change log keeps (0: unknown)
	pending  []histRev // of the transaction being applied
	pendFrom uint64    // the log's start once the transaction commits (0: unchanged)
}

func newHistory(applied uint64, cfg WatchHistory) *history {
	h := &history{ringFrom: applied + 1, last: applied}
	if cfg.Revisions > 0 {
		h.maxRevs = uint64(cfg.Revisions)
	}
	if cfg.Bytes > 0 {
		h.maxBytes = uint64(cfg.Bytes)
	}
	return h
}

func (h *history) lastRev() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last
}

// reset forgets the recent changes: the data was replaced by a snapshot or
// a restore applied at index.
func (h *history) reset(index uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ring, h.size, h.pending = nil, 0, nil
	h.ringFrom, h.last, h.start, h.pendFrom = index+1, index, 0, 0
}

// histTx writes the changes of one engine transaction to the change log.
type histTx struct {
	h       *history
	tx      storage.WriteTx
	cur     []Event
	meta    histMeta
	loaded  bool
	changed bool
	from    uint64 // the applied index before the transaction
	err     error
}

type histMeta struct{ start, revs, bytes uint64 }

func readHistMeta(tx storage.ReadTx) (histMeta, bool) {
	b, ok := tx.Get([]byte(sysHistMetaKey))
	if !ok || len(b) != 24 {
		return histMeta{}, false
	}
	return histMeta{binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:]), binary.BigEndian.Uint64(b[16:])}, true
}

func (m histMeta) encode() []byte {
	b := make([]byte, 0, 24)
	b = binary.BigEndian.AppendUint64(b, m.start)
	b = binary.BigEndian.AppendUint64(b, m.revs)
	return binary.BigEndian.AppendUint64(b, m.bytes)
}

func histKey(rev uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte(sysHistPrefix), rev)
}

// begin starts the changes of a transaction (an attempt: a failed one is
// retried, and begins again).
func (h *history) begin(tx storage.WriteTx, from uint64) *histTx {
	h.mu.Lock()
	h.pending, h.pendFrom = h.pending[:0], 0
	h.mu.Unlock()
	return &histTx{h: h, tx: tx, from: from}
}

func (t *histTx) put(key string, create, mod, version, lease uint64, value []byte) {
	t.cur = append(t.cur, Event{Type: EventPut, Entry: Entry{Key: key, Value: value, CreateRev: create, ModRev: mod, Version: version, Lease: LeaseID(lease)}})
}

func (t *histTx) del(key string, rev uint64) {
	t.cur = append(t.cur, Event{Type: EventDelete, Entry: Entry{Key: key, ModRev: rev}})
}

// load reads the state of the change log, once per transaction.
func (t *histTx) load() {
	if t.loaded {
		return
	}
	t.meta, t.loaded = readHistMeta(t.tx)
	if !t.loaded {
		// A new data file, or one from before the change log: the log
		// starts with this transaction, the first one on this file since
		// (so that from, and the log's start, are the same on every
		// member, however it batches the entries).
		t.meta, t.loaded, t.changed = histMeta{start: t.from + 1}, true, true
	}
}

// endEntry logs the changes of the entry at index, if any.
func (t *histTx) endEntry(index uint64) {
	t.load()
	if len(t.cur) == 0 {
		return
	}
	n := binary.MaxVarintLen64
	for i := range t.cur {
		e := &t.cur[i].Entry
		n += 1 + 4*binary.MaxVarintLen64 + len(e.Key) + len(e.Value)
	}
	b := make([]byte, 0, n)
	b = binary.AppendUvarint(b, uint64(len(t.cur)))
	for i := range t.cur {
		ev := &t.cur[i]
		b = append(b, byte(ev.Type))
		b = appendBytes(b, ev.Entry.Key)
		if ev.Type == EventPut {
			b = binary.AppendUvarint(b, ev.Entry.CreateRev)
			b = binary.AppendUvarint(b, ev.Entry.Version)
			b = binary.AppendUvarint(b, uint64(ev.Entry.Lease))
			b = appendBytes(b, string(ev.Entry.Value))
		}
	}
	t.cur = t.cur[:0]
	t.pend(index, b)
}

func (t *histTx) pend(index uint64, b []byte) {
	if err := t.tx.Put(histKey(index), b); err != nil {
		t.fail(err)
		return
	}
	t.meta.revs++
	t.meta.bytes += uint64(len(b))
	t.changed = true
	evs, err := decodeChanges(index, b)
	if err != nil {
		t.fail(err)
		return
	}
	t.h.mu.Lock()
	t.h.pending = append(t.h.pending, histRev{rev: index, events: evs, size: len(b)})
	t.h.mu.Unlock()
}

// fail keeps the first error of the transaction, which end returns.
func (t *histTx) fail(err error) {
	if t.err == nil {
		t.err = err
	}
}

// end trims the change log to its limits and records its state.
func (t *histTx) end() error {
	if t.err != nil {
		return t.err
	}
	t.load()
	if !t.changed {
		return nil
	}
	for (t.h.maxRevs > 0 && t.meta.revs > t.h.maxRevs) || (t.h.maxBytes > 0 && t.meta.bytes > t.h.maxBytes) {
		var key []byte
		var size int
		// Every revision below start is gone: seek past them.
		if err := t.tx.Scan(histKey(t.meta.start), func(k, v []byte) bool {
			if len(k) == len(sysHistPrefix)+8 && string(k[:len(sysHistPrefix)]) == sysHistPrefix {
				key, size = bytes.Clone(k), len(v)
			}
			return false
		}); err != nil {
			return err
		}
		if key == nil {
			t.meta.revs, t.meta.bytes = 0, 0
			break
		}
		if err := t.tx.Delete(key); err != nil {
			return err
		}
		t.meta.start = binary.BigEndian.Uint64(key[len(sysHistPrefix):]) + 1
		t.meta.revs--
		t.meta.bytes -= min(t.meta.bytes, uint64(size))
	}
	t.h.mu.Lock()
	t.h.pendFrom = t.meta.start
	t.h.mu.Unlock()
	return t.tx.Put([]byte(sysHistMetaKey), t.meta.encode())
}

// resetHistory empties the change log of tx: its history starts at start.
func resetHistory(tx storage.WriteTx, start uint64) error {
	var keys [][]byte
	if err := tx.Scan([]byte(sysHistPrefix), func(k, _ []byte) bool {
		if !bytes.HasPrefix(k, []byte(sysHistPrefix)) {
			return false
		}
		keys = append(keys, bytes.Clone(k))
		return true
	}); err != nil {
		return err
	}
	for _, k := range keys {
		if err := tx.Delete(k); err != nil {
			return err
		}
	}
	return tx.Put([]byte(sysHistMetaKey), histMeta{start: start}.encode())
}

// committed makes the changes of the transaction that applied up to index
// visible to watchers.
func (h *history) committed(index uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.pending {
		h.ring = append(h.ring, r)
		h.size += r.size
	}
	h.pending = h.pending[:0]
	h.last = index
	if h.pendFrom != 0 {
		h.start, h.pendFrom = h.pendFrom, 0
	}
	drop := 0
	// The ring keeps no revision the change log has dropped: a Watch
	// gets ErrCompacted alike from memory and from the file.
	for drop < len(h.ring) && (len(h.ring)-drop > ringRevs || h.size > ringBytes || h.ring[drop].rev < h.start) {
		h.size -= h.ring[drop].size
		h.ringFrom = h.ring[drop].rev + 1
		drop++
	}
	if drop > 0 {
		// Reslice, not copy: a copy of the whole ring on every commit
		// once it is full costs a write its revisions' worth of work.
		// append moves the ring to a new array when the old one's end is
		// reached, so the dropped head is given back then; cleared now,
		// it holds no values meanwhile.
		clear(h.ring[:drop])
		h.ring = h.ring[drop:]
	}
}

// read appends to buf the changes of up to max revisions from next on, and
// returns the revision to read from next time. It reads the recent ones
// from memory, older ones from the change log in eng.
func (h *history) read(eng storage.Engine, buf []histRev, next uint64, max int) ([]histRev, uint64, error) {
	h.mu.Lock()
	if next > h.last {
		h.mu.Unlock()
		return buf, next, nil
	}
	if h.start != 0 && next < h.start {
		h.mu.Unlock()
		return buf, next, &CompactedError{Rev: next, Oldest: h.start}
	}
	if next >= h.ringFrom {
		i := sort.Search(len(h.ring), func(i int) bool { return h.ring[i].rev >= next })
		end := min(len(h.ring), i+max)
		buf = append(buf, h.ring[i:end]...)
		if end < len(h.ring) {
			next = h.ring[end].rev
		} else {
			next = h.last + 1
		}
		h.mu.Unlock()
		return buf, next, nil
	}
	h.mu.Unlock()
	err := eng.ViewApplied(func(tx storage.ReadTx, index uint64) error {
		m, ok := readHistMeta(tx)
		if !ok {
			m.start = index + 1
		}
		if next < m.start {
			return &CompactedError{Rev: next, Oldest: m.start}
		}
		if next > index {
			return nil
		}
		from := histKey(next)
		var scanErr error
		last := uint64(0)
		err := tx.Scan(from, func(k, v []byte) bool {
			if len(k) != len(sysHistPrefix)+8 || string(k[:len(sysHistPrefix)]) != sysHistPrefix {
				return false
			}
			rev := binary.BigEndian.Uint64(k[len(sysHistPrefix):])
			if rev > index {
				return false
			}
			evs, err := decodeChanges(rev, bytes.Clone(v))
			if err != nil {
				scanErr = err
				return false
			}
			buf = append(buf, histRev{rev: rev, events: evs, size: len(v)})
			last = rev
			return len(buf) < max
		})
		if err == nil {
			err = scanErr
		}
		if err != nil {
			return err
		}
		if len(buf) < max || last == 0 {
			next = index + 1
		} else {
			next = last + 1
		}
		return nil
	})
	return buf, next, err
}

// decodeChanges decodes the changes of revision rev; they alias b.
func decodeChanges(rev uint64, b []byte) (evs []Event, err error) {
	defer func() {
		if r := recover(); r != nil {
			evs, err = nil, fmt.Errorf("%w: change log at revision %d: %v", storage.ErrCorruptData, rev, r)
		}
	}()
	bad := func(err error) error {
		return fmt.Errorf("%w: change log at revision %d: %v", storage.ErrCorruptData, rev, err)
	}
	r := reader{b: b}
	n, err := r.count(2)
	if err != nil {
		return nil, bad(err)
	}
	evs = make([]Event, n)
	for i := range evs {
		ev := &evs[i]
		t, err := r.byte()
		if err != nil {
			return nil, bad(err)
		}
		ev.Type = EventType(t)
		if ev.Entry.Key, err = r.str(); err != nil {
			return nil, bad(err)
		}
		ev.Entry.ModRev = rev
		switch ev.Type {
		case EventDelete:
			continue
		case EventPut:
		default:
			return nil, bad(fmt.Errorf("event type %d", t))
		}
		var lease uint64
		if ev.Entry.CreateRev, err = r.uvarint(); err == nil {
			if ev.Entry.Version, err = r.uvarint(); err == nil {
				if lease, err = r.uvarint(); err == nil {
					ev.Entry.Value, err = r.bytes()
				}
			}
		}
		if err != nil {
			return nil, bad(err)
		}
		ev.Entry.Lease = LeaseID(lease)
	}
	if len(r.b) > 0 {
		return nil, bad(fmt.Errorf("%d bytes after the last change", len(r.b)))
	}
	return evs, nil
}

// watchCtxErr is the error a Watch ends with when ctx ends.
func watchCtxErr(ctx context.Context) error { return fmt.Errorf("kv: watch: %w", ctx.Err()) }
