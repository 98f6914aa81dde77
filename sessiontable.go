package kv

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cohortkv/kv/internal/storage"
)

// The session table makes writes exactly-once. Every Store writes under a
// session it registers through the log (its ID is the index of the
// registering entry and a nonce of its own) and numbers its commands in it.
// The table lives in the data, under keys no user can write, and changes
// in the same engine transaction as the writes it records, so snapshots,
// restarts and Backups carry it. For each session it holds:
//
//   - the leader time the session was last used (entries carry the
//     leader's clock; apply reads no clock of its own);
//   - its floor: every sequence below it has been answered to its Store,
//     which says so in each command, so nothing below it is retried;
//   - the results of the commands at or above the floor that wrote
//     something: status and revision, and under a key of their own the
//     Gets of a transaction that had some.
//
// A command whose sequence has a result is not applied again: the result
// is returned. One below the floor is not applied (resStale). A command
// that wrote nothing is not recorded: applied again, it evaluates anew,
// and still has at most one effect. A command of a session the table does
// not hold is not applied (resNoSession): its Store registers a new one;
// a write that may have been applied under the old one reports
// ErrSessionExpired instead of risking a second apply.
//
// The table is bounded, deterministically: a session unused for
// sessionTTL of leader time is dropped (a sweep every sessionTTL/16 of
// leader time), the least recently used one when a registration finds
// maxSessions, and a session's oldest results past maxSessionResults
// (raising its floor above them).
const (
	defaultSessionTTL  = uint64(time.Hour / time.Millisecond)
	defaultMaxSessions = 16384
	maxSessionResults  = 1 << 16
)

// The limits, which tests change (every member of a cluster must use the
// same), and sessionsOff, which makes the state machine ignore sessions:
// tests show with it what the table prevents.
var (
	sessionTTL  atomic.Uint64
	maxSessions atomic.Uint64
	sessionsOff atomic.Bool
)

func init() {
	sessionTTL.Store(defaultSessionTTL)
	maxSessions.Store(defaultMaxSessions)
}

// Keys of the store's own state. No user key starts with sysPrefix.
const (
	sysPrefix     = "\xff\xffkv/"
	sysMetaKey    = sysPrefix + "meta"
	sysSessPrefix = sysPrefix + "s/"
	sysGetsPrefix = sysPrefix + "g/"
)

// sysEnd is the smallest key after every key with sysPrefix.
var sysEnd = []byte("\xff\xffkv0")

func isSysKey(k []byte) bool { return bytes.HasPrefix(k, []byte(sysPrefix)) }

// keyBytes returns the bytes of s, for reads and for Put (which copies).
func keyBytes(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// sessResult is a recorded result.
type sessResult struct {
	seq    uint64
	status uint8
	rev    uint64
	gets   bool // the Gets are under getsKey
}

// A session's entry: uvarint lastSeen, uvarint floor, then its results by
// sequence, sessResultSize bytes each: seq (8 bytes big endian), a status
// byte (0x80 added when its Gets are stored), rev (8 bytes big endian).
// Results are read in place, without decoding the list.
const sessResultSize = 17

// sessState is one session's entry of the table.
type sessState struct {
	id       sessionID
	lastSeen uint64
	floor    uint64
	res      []byte // the results; aliases the transaction until own
	own      bool   // res may be changed in place
	dirty    bool
	gone     bool // removed in this transaction
}

func (s *sessState) n() int { return len(s.res) / sessResultSize }

func (s *sessState) at(i int) sessResult {
	b := s.res[i*sessResultSize:]
	return sessResult{seq: binary.BigEndian.Uint64(b), status: b[8] &^ 0x80, rev: binary.BigEndian.Uint64(b[9:]), gets: b[8]&0x80 != 0}
}

func (s *sessState) seqAt(i int) uint64 { return binary.BigEndian.Uint64(s.res[i*sessResultSize:]) }

// find returns the place of seq among the results, and whether it is there.
func (s *sessState) find(seq uint64) (int, bool) {
	i := sort.Search(s.n(), func(i int) bool { return s.seqAt(i) >= seq })
	return i, i < s.n() && s.seqAt(i) == seq
}

// put records r at its place.
func (s *sessState) put(r sessResult) {
	var rec [sessResultSize]byte
	binary.BigEndian.PutUint64(rec[:], r.seq)
	rec[8] = r.status
	if r.gets {
		rec[8] |= 0x80
	}
	binary.BigEndian.PutUint64(rec[9:], r.rev)
	i, found := s.find(r.seq)
	if !s.own {
		s.res, s.own = append(make([]byte, 0, len(s.res)+4*sessResultSize), s.res...), true
	}
	switch {
	case found:
		copy(s.res[i*sessResultSize:], rec[:])
	case i == s.n():
		s.res = append(s.res, rec[:]...)
	default:
		s.res = slices.Insert(s.res, i*sessResultSize, rec[:]...)
	}
}

func (s *sessState) encode(b []byte) []byte {
	b = binary.AppendUvarint(b, s.lastSeen)
	b = binary.AppendUvarint(b, s.floor)
	return append(b, s.res...)
}

// decodeSession decodes a session's entry; its results alias b.
func decodeSession(id sessionID, b []byte) (*sessState, error) {
	r := reader{b: b}
	s := &sessState{id: id}
	var err error
	if s.lastSeen, err = r.uvarint(); err != nil {
		return nil, fmt.Errorf("kv: session entry: %w", err)
	}
	if s.floor, err = r.uvarint(); err != nil {
		return nil, fmt.Errorf("kv: session entry: %w", err)
	}
	if len(r.b)%sessResultSize != 0 {
		return nil, fmt.Errorf("kv: session entry: results of %d bytes", len(r.b))
	}
	s.res = r.b
	for i := 1; i < s.n(); i++ {
		if s.seqAt(i) <= s.seqAt(i-1) {
			return nil, fmt.Errorf("kv: session entry: results out of order")
		}
	}
	return s, nil
}

func sessKey(id sessionID) []byte { return append([]byte(sysSessPrefix), id[:]...) }

func getsKey(id sessionID, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(sysGetsPrefix), id[:]...), seq)
}

// sessionTable is the table as one engine transaction sees it: entries
// are read once and written back by flush.
type sessionTable struct {
	tx    storage.WriteTx
	open  map[sessionID]*sessState
	meta  *sessMeta
	order []sessionID // of open, for flush
}

// sessMeta: uvarint count of sessions, uvarint leader time of the next
// sweep.
type sessMeta struct {
	count, nextSweep uint64
	dirty            bool
}

func (t *sessionTable) loadMeta() (*sessMeta, error) {
	if t.meta != nil {
		return t.meta, nil
	}
	t.meta = &sessMeta{}
	if b, ok := t.tx.Get([]byte(sysMetaKey)); ok {
		r := reader{b: b}
		var err error
		if t.meta.count, err = r.uvarint(); err == nil {
			t.meta.nextSweep, err = r.uvarint()
		}
		if err != nil {
			return nil, fmt.Errorf("%w: session table: %v", storage.ErrCorruptData, err)
		}
	}
	return t.meta, nil
}

// get returns the session's entry, or nil when the table does not hold it.
func (t *sessionTable) get(id sessionID) (*sessState, error) {
	if s, ok := t.open[id]; ok {
		if s.gone {
			return nil, nil
		}
		return s, nil
	}
	b, ok := t.tx.Get(sessKey(id))
	if !ok {
		return nil, nil
	}
	s, err := decodeSession(id, b)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", storage.ErrCorruptData, err)
	}
	t.keep(s)
	return s, nil
}

func (t *sessionTable) keep(s *sessState) {
	if t.open == nil {
		t.open = make(map[sessionID]*sessState, 2)
	}
	if _, ok := t.open[s.id]; !ok {
		t.order = append(t.order, s.id)
	}
	t.open[s.id] = s
}

// tick runs the sweep when the leader time now has reached it.
func (t *sessionTable) tick(now uint64) error {
	if now == 0 {
		return nil
	}
	m, err := t.loadMeta()
	if err != nil || now < m.nextSweep {
		return err
	}
	ttl := sessionTTL.Load()
	m.nextSweep, m.dirty = now+max(ttl/16, 1), true
	return t.each(func(s *sessState) error {
		if s.lastSeen+ttl < now {
			return t.drop(s)
		}
		return nil
	})
}

// each calls fn for every session the table holds.
func (t *sessionTable) each(fn func(s *sessState) error) error {
	var ids []sessionID
	var derr error
	err := t.tx.Scan([]byte(sysSessPrefix), func(k, v []byte) bool {
		if !bytes.HasPrefix(k, []byte(sysSessPrefix)) {
			return false
		}
		if len(k) != len(sysSessPrefix)+16 {
			derr = fmt.Errorf("%w: session key of %d bytes", storage.ErrCorruptData, len(k))
			return false
		}
		ids = append(ids, sessionID(k[len(sysSessPrefix):]))
		return true
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return err
	}
	for _, id := range ids {
		s, err := t.get(id)
		if err != nil {
			return err
		}
		if s != nil {
			if err := fn(s); err != nil {
				return err
			}
		}
	}
	return nil
}

// drop removes a session and its stored Gets.
func (t *sessionTable) drop(s *sessState) error {
	for i := range s.n() {
		if r := s.at(i); r.gets {
			if err := t.tx.Delete(getsKey(s.id, r.seq)); err != nil {
				return err
			}
		}
	}
	s.res, s.gone, s.dirty = nil, true, true
	if t.meta.count > 0 {
		t.meta.count--
	}
	t.meta.dirty = true
	return nil
}

// register adds a session, first dropping the least recently used one if
// the table is full.
func (t *sessionTable) register(id sessionID, now uint64) error {
	m, err := t.loadMeta()
	if err != nil {
		return err
	}
	if s, err := t.get(id); err != nil || s != nil {
		return err // the same entry applied twice cannot happen; keep it
	}
	if m.count >= maxSessions.Load() {
		var lru *sessState
		err := t.each(func(s *sessState) error {
			if lru == nil || s.lastSeen < lru.lastSeen || s.lastSeen == lru.lastSeen && bytes.Compare(s.id[:], lru.id[:]) < 0 {
				lru = s
			}
			return nil
		})
		if err != nil {
			return err
		}
		if lru != nil {
			if err := t.drop(lru); err != nil {
				return err
			}
		}
	}
	t.keep(&sessState{id: id, lastSeen: now, floor: 1, dirty: true})
	m.count++
	m.dirty = true
	return nil
}

// use marks the session used at now and raises its floor to floor,
// dropping the results below it.
func (t *sessionTable) use(s *sessState, now, floor uint64) error {
	s.lastSeen, s.dirty = max(s.lastSeen, now), true
	return t.raise(s, floor)
}

func (t *sessionTable) raise(s *sessState, floor uint64) error {
	if floor <= s.floor {
		return nil
	}
	s.floor = floor
	n, _ := s.find(floor)
	for i := range n {
		if r := s.at(i); r.gets {
			if err := t.tx.Delete(getsKey(s.id, r.seq)); err != nil {
				return err
			}
		}
	}
	s.res = s.res[n*sessResultSize:]
	return nil
}

// record keeps the result of a command that wrote.
func (t *sessionTable) record(s *sessState, seq uint64, res cmdResult) error {
	r := sessResult{seq: seq, status: res.status, rev: res.rev, gets: len(res.gets) > 0}
	if r.gets {
		if err := t.tx.Put(getsKey(s.id, seq), appendResults(nil, []cmdResult{{status: res.status, gets: res.gets}})); err != nil {
			return err
		}
	}
	s.put(r)
	if s.n() > maxSessionResults {
		return t.raise(s, s.seqAt(s.n()-maxSessionResults))
	}
	return nil
}

// replay returns the recorded result r of a command.
func (t *sessionTable) replay(s *sessState, r sessResult) (cmdResult, error) {
	res := cmdResult{status: r.status, rev: r.rev}
	if !r.gets {
		return res, nil
	}
	b, ok := t.tx.Get(getsKey(s.id, r.seq))
	if !ok {
		return res, fmt.Errorf("%w: session table: the Gets of a recorded result are missing", storage.ErrCorruptData)
	}
	rs, err := decodeResults(b)
	if err != nil || len(rs) != 1 {
		return res, fmt.Errorf("%w: session table: recorded Gets: %v", storage.ErrCorruptData, err)
	}
	res.gets = rs[0].gets
	for i := range res.gets { // they alias the transaction
		res.gets[i].Key = strings.Clone(res.gets[i].Key)
		res.gets[i].Value = bytes.Clone(res.gets[i].Value)
		if res.gets[i].ModRev != 0 && res.gets[i].Value == nil {
			res.gets[i].Value = []byte{}
		}
	}
	return res, nil
}

// flush writes back what changed; buf is scratch space (Put copies).
func (t *sessionTable) flush(buf []byte) error {
	for _, id := range t.order {
		s := t.open[id]
		if !s.dirty {
			continue
		}
		if s.gone {
			if err := t.tx.Delete(sessKey(id)); err != nil {
				return err
			}
			continue
		}
		buf = s.encode(buf[:0])
		if err := t.tx.Put(sessKey(id), buf); err != nil {
			return err
		}
	}
	if t.meta != nil && t.meta.dirty {
		b := binary.AppendUvarint(nil, t.meta.count)
		b = binary.AppendUvarint(b, t.meta.nextSweep)
		if err := t.tx.Put([]byte(sysMetaKey), b); err != nil {
			return err
		}
	}
	return nil
}
