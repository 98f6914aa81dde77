package kv

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/cohortkv/kv/internal/storage"
)

// The space quota bounds the data the cluster stores. The state machine
// keeps the data's logical size: the bytes of every user key plus its
// stored record (the value and a header of 25 bytes, 33 for a key on a
// lease; 17 for a record written by a version before revisions counted
// versions). The store's own state (write sessions, leases, the watch
// history) is not counted: each has bounds of its own. The size is the
// same on every member, whatever its file system does, since it is a
// function of the applied log alone; os.Stat never decides.
//
// The size and the quota live in the data, under sysSpaceKey, and change
// in the transaction of the apply that changes them, so snapshots,
// restarts, snapshot installs and Backups carry them. A data file without
// the key (written by a version before the quota, or a Backup of one) gets
// it from one scan of its keys: at Open, or at the first apply after an
// install.
//
// The quota is a cluster setting, set through the log: a leader, once it
// has committed the marker entry of its term, proposes cmdSetQuota with its
// own Config.QuotaBytes whenever the applied quota differs. Until a leader
// has, there is no quota. The state machine refuses a command whose branch
// to run would grow the data to beyond the applied quota (resNoSpace), and
// records the refusal in the command's session like any result; a command
// that does not grow the data (deletes, overwrites with values no larger,
// a transaction that shrinks it) always passes, as do lease commands.
const sysSpaceKey = sysPrefix + "space"

// maxQuota bounds the quota a command may set (it is an int64 in Config
// and Stats).
const maxQuota = 1<<63 - 1

// space is the value under sysSpaceKey: uvarint size, uvarint quota (0:
// none).
type space struct {
	size  uint64
	quota uint64
}

func (s space) encode() []byte {
	b := binary.AppendUvarint(make([]byte, 0, 2*binary.MaxVarintLen64), s.size)
	return binary.AppendUvarint(b, s.quota)
}

// readSpace reads the value under sysSpaceKey; ok is false when the data
// has none.
func readSpace(tx storage.ReadTx) (sp space, ok bool, err error) {
	b, ok := tx.Get([]byte(sysSpaceKey))
	if !ok {
		return space{}, false, nil
	}
	r := reader{b: b}
	if sp.size, err = r.uvarint(); err == nil {
		sp.quota, err = r.uvarint()
	}
	if err == nil && len(r.b) > 0 {
		err = fmt.Errorf("%d bytes after the quota", len(r.b))
	}
	if err != nil {
		return space{}, false, fmt.Errorf("%w: space record: %v", storage.ErrCorruptData, err)
	}
	return sp, true, nil
}

// dataSize scans the user keys of tx and returns their logical size.
func dataSize(tx storage.ReadTx) (uint64, error) {
	var n uint64
	sys := []byte(sysPrefix)
	err := tx.Scan([]byte{}, func(k, v []byte) bool {
		if bytes.Compare(k, sys) >= 0 {
			return false
		}
		n += uint64(len(k) + len(v))
		return true
	})
	if err != nil {
		return 0, err
	}
	err = tx.Scan(sysEnd, func(k, v []byte) bool {
		n += uint64(len(k) + len(v))
		return true
	})
	return n, err
}

// migrateSpace gives a data file without a space record one, from a scan
// of its keys, at its applied index. Every member holding the same data
// computes the same size.
func migrateSpace(eng storage.Engine) error {
	index := eng.AppliedIndex()
	if index == 0 {
		return nil // empty: the first apply writes it
	}
	var has bool
	if err := eng.View(func(tx storage.ReadTx) error {
		_, ok, err := readSpace(tx)
		has = ok
		return err
	}); err != nil || has {
		return err
	}
	return eng.Update(index, func(tx storage.WriteTx) error {
		n, err := dataSize(tx)
		if err != nil {
			return err
		}
		return tx.Put([]byte(sysSpaceKey), space{size: n}.encode())
	})
}

// spaceTx is the space record as one apply transaction sees it.
type spaceTx struct {
	tx     storage.WriteTx
	sp     space
	loaded bool
	dirty  bool
	ev     spaceEvents
}

// spaceEvents is what an apply transaction did that the log reports.
type spaceEvents struct {
	refused bool // a command was refused for space
	grew    bool // a command that grew the data was applied
	quota   bool // the quota changed
}

// load reads the record, or computes it from the data when there is none.
// It runs before the transaction changes any user key.
func (s *spaceTx) load() error {
	if s.loaded {
		return nil
	}
	sp, ok, err := readSpace(s.tx)
	if err != nil {
		return err
	}
	if !ok {
		if sp.size, err = dataSize(s.tx); err != nil {
			return err
		}
		s.dirty = true
	}
	s.sp, s.loaded = sp, true
	return nil
}

// add changes the size by delta bytes.
func (s *spaceTx) add(delta int64) {
	if delta == 0 {
		return
	}
	if delta < 0 && uint64(-delta) > s.sp.size {
		s.sp.size = 0 // cannot happen while the record matches the data
	} else {
		s.sp.size = uint64(int64(s.sp.size) + delta)
	}
	s.dirty = true
}

// fits says whether a command that grows the data by grow bytes may be
// applied.
func (s *spaceTx) fits(grow int64) bool {
	if grow <= 0 || s.sp.quota == 0 {
		return true
	}
	return s.sp.size+uint64(grow) <= s.sp.quota
}

func (s *spaceTx) flush() error {
	if !s.dirty {
		return nil
	}
	return s.tx.Put([]byte(sysSpaceKey), s.sp.encode())
}

// recordSize is the size of key's record holding value, as setKey writes
// it, key included.
func recordSize(key string, value []byte, leased bool) int64 {
	h := recHeader
	if leased {
		h = recHeader3
	}
	return int64(len(key) + h + len(value))
}

// growth is by how many bytes ops would grow the data (negative: shrink),
// for the quota check: when even the most they could add fits the quota,
// it returns that bound and reads nothing.
func (a *applier) growth(ops []Op) int64 {
	// Far from the quota, the most the ops can add decides without
	// reading the records they replace.
	var most int64
	for i := range ops {
		if o := &ops[i]; o.kind == opSet {
			most += recordSize(o.key, o.value, o.lease != 0 || o.ttl != 0)
		}
	}
	if a.space.fits(most) {
		return most
	}
	var n int64
	for i := range ops {
		o := &ops[i]
		if o.kind == opGet {
			continue
		}
		if old, ok := a.tx.Get(keyBytes(o.key)); ok {
			n -= int64(len(o.key) + len(old))
		}
		if o.kind == opSet {
			n += recordSize(o.key, o.value, o.lease != 0 || o.ttl != 0)
		}
	}
	return n
}

// setQuota applies a cmdSetQuota: only in the term of the leader that
// proposed it, so that one retried across a leader change cannot undo
// the new leader's setting.
func (a *applier) setQuota(c *command) cmdResult {
	if c.term != a.term {
		return cmdResult{status: resFailed, rev: a.space.sp.quota}
	}
	if a.space.sp.quota != c.n {
		a.space.sp.quota, a.space.dirty, a.space.ev.quota = c.n, true, true
	}
	return cmdResult{status: resOK, rev: c.n}
}

// noteSpace logs, after an apply committed, the first refusal for space
// and the first write that passes again after refusals: not every one.
func (f *fsm) noteSpace(ev spaceEvents, sp space) {
	switch {
	case ev.refused:
		if !f.noSpace.Swap(true) {
			f.logger.Warn("writes refused: the data reached the cluster's space quota; delete data or raise Config.QuotaBytes on the leader",
				"quota", sp.quota, "size", sp.size)
		}
	case ev.grew || ev.quota:
		if f.noSpace.Swap(false) {
			f.logger.Warn("writes pass again: the data is within the cluster's space quota",
				"quota", sp.quota, "size", sp.size)
		}
	}
}

// spaceUsage returns the applied quota (0: none) and the data's logical
// size, as this member's state machine has applied them.
func (s *Store) spaceUsage() (quota, size int64) {
	var sp space
	err := s.eng.View(func(tx storage.ReadTx) error {
		var ok bool
		var err error
		sp, ok, err = readSpace(tx)
		if err == nil && !ok {
			sp.size, err = dataSize(tx)
		}
		return err
	})
	if err != nil {
		return 0, 0
	}
	return int64(min(sp.quota, maxQuota)), int64(min(sp.size, maxQuota))
}

// wantQuota is the quota this member's Config asks for, as the state
// machine keeps it (0: none).
func (s *Store) wantQuota() uint64 {
	if s.cfg.QuotaBytes < 0 {
		return 0
	}
	return uint64(s.cfg.QuotaBytes)
}

// syncQuota, on a leader that has committed the marker of its term (so
// it has applied every entry of earlier terms), proposes its quota when
// the applied one differs.
func (s *Store) syncQuota() {
	term := s.raft.CurrentTerm()
	if s.readyTerm.Load() != term || s.raft.State() != raft.Leader {
		return
	}
	want := s.wantQuota()
	if q, _ := s.spaceUsage(); uint64(q) == want {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	w := &pendingWrite{}
	w.one[0] = command{kind: cmdSetQuota, n: want, term: term}
	w.cmds = w.one[:]
	w.size, w.nops = w.one[0].size(), 1
	res, err := s.writeCmd(ctx, w)
	switch {
	case err != nil:
		if !errors.Is(err, ErrClosed) {
			s.logger.Warn("leader could not set the cluster's space quota", "quota", want, "error", err)
		}
	case res.status == resOK:
		s.logger.Info("cluster space quota set from this leader's Config.QuotaBytes", "quota", want, "term", term)
	}
}

// errNoSpace is the error of a write refused for space; quota is the
// cluster's.
func errNoSpace(quota uint64) error {
	return fmt.Errorf("%w: the write would take the data beyond the cluster's quota of %d bytes; it was not applied", ErrNoSpace, quota)
}

// appliedQuota reads the quota the state machine applied (0: none).
func appliedQuota(eng storage.Engine) (uint64, error) {
	var q uint64
	err := eng.View(func(tx storage.ReadTx) error {
		sp, _, err := readSpace(tx)
		q = sp.quota
		return err
	})
	return q, err
}

// keepQuota sets the quota of the data of tx, just restored from a Backup,
// to the cluster's, and gives it its size if it came without one.
func keepQuota(tx storage.WriteTx, quota uint64) error {
	sp, ok, err := readSpace(tx)
	if err != nil {
		return err
	}
	if !ok {
		if sp.size, err = dataSize(tx); err != nil {
			return err
		}
	}
	sp.quota = quota
	return tx.Put([]byte(sysSpaceKey), sp.encode())
}
