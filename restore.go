package kv

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cohortkv/kv/internal/storage"
)

// A restore travels through the Raft log, so that every member does the
// same thing at the same index: a begin entry, the copy in chunks, then a
// commit (or an abort) entry. Each entry's payload starts with entryRestore,
// which no command starts with (commands start with cmdVersion), then a
// kind byte and the restore's random ID:
//
//	begin   entryRestore, 'b', id[16], total size uint64, CRC-32C of the copy uint32
//	chunk   entryRestore, 'c', id[16], offset uint64, bytes
//	commit  entryRestore, 'C', id[16]
//	abort   entryRestore, 'a', id[16]
//
// Integers are big endian. Each member stages the chunks (a file in DataDir,
// or memory) without touching its data; only the commit entry installs
// them, with its own index as the applied index.
const entryRestore byte = 'R'

// Restore entry kinds.
const (
	restoreBegin  byte = 'b'
	restoreChunk  byte = 'c'
	restoreCommit byte = 'C'
	restoreAbort  byte = 'a'
)

// Restore tuning.
const (
	// restoreChunkSize is the size of one chunk entry.
	restoreChunkSize = 512 << 10
	// restoreInFlight is how many chunk entries the leader keeps in flight.
	restoreInFlight = 4
	// stagingHoldsSnapshots is how long after a begin (local time) a member
	// with an open staging refuses to take snapshots: a follower that
	// installed a snapshot taken between a begin and its commit would reach
	// the commit without the chunks before it. Past this the staging is
	// taken for abandoned.
	stagingHoldsSnapshots = 10 * time.Minute
	// restoreLeaderLimit is how long the leader spends on a restore before
	// it proposes abort instead of commit: well inside
	// stagingHoldsSnapshots, so that no member snapshots before a commit.
	restoreLeaderLimit = stagingHoldsSnapshots / 2
)

type restoreID [16]byte

func (id restoreID) String() string { return hex.EncodeToString(id[:]) }

func newRestoreID() restoreID {
	var id restoreID
	rand.Read(id[:])
	return id
}

// restoreEntry is a decoded restore entry.
type restoreEntry struct {
	kind  byte
	id    restoreID
	total uint64 // begin
	crc   uint32 // begin
	off   uint64 // chunk
	data  []byte // chunk; aliases the log entry
}

const restoreHeader = 2 + 16

func isRestoreEntry(b []byte) bool { return len(b) > 0 && b[0] == entryRestore }

func (e restoreEntry) encode() []byte {
	b := make([]byte, restoreHeader, restoreHeader+12+len(e.data))
	b[0], b[1] = entryRestore, e.kind
	copy(b[2:], e.id[:])
	switch e.kind {
	case restoreBegin:
		b = binary.BigEndian.AppendUint64(b, e.total)
		b = binary.BigEndian.AppendUint32(b, e.crc)
	case restoreChunk:
		b = binary.BigEndian.AppendUint64(b, e.off)
		b = append(b, e.data...)
	}
	return b
}

// decodeRestoreEntry decodes a payload that isRestoreEntry accepted. It
// never panics.
func decodeRestoreEntry(b []byte) (e restoreEntry, err error) {
	if len(b) < restoreHeader || b[0] != entryRestore {
		return e, fmt.Errorf("kv: restore entry of %d bytes", len(b))
	}
	e.kind = b[1]
	copy(e.id[:], b[2:restoreHeader])
	body := b[restoreHeader:]
	switch e.kind {
	case restoreBegin:
		if len(body) != 12 {
			return e, fmt.Errorf("kv: restore begin entry with a body of %d bytes", len(body))
		}
		e.total = binary.BigEndian.Uint64(body)
		e.crc = binary.BigEndian.Uint32(body[8:])
	case restoreChunk:
		if len(body) < 8 {
			return e, fmt.Errorf("kv: restore chunk entry with a body of %d bytes", len(body))
		}
		e.off = binary.BigEndian.Uint64(body)
		e.data = body[8:]
	case restoreCommit, restoreAbort:
		if len(body) != 0 {
			return e, fmt.Errorf("kv: restore entry %q with a body of %d bytes", e.kind, len(body))
		}
	default:
		return e, fmt.Errorf("kv: unknown restore entry kind %#x", e.kind)
	}
	return e, nil
}

// A staging file in DataDir is named restore-<id>.staging and holds a
// header (stagingMagic, total size, CRC-32C of the copy) and the copy at
// stagingData. The leader's check of the copy, before it proposes
// anything, goes to restore-*.tmp; Open removes those.
const (
	stagingMagic  = "kvstage1"
	stagingData   = 32
	stagingSuffix = ".staging"
	stagingPrefix = "restore-"
)

// errNoStaging is the staging status of a restore this member holds no
// staging for (never begun here, aborted, or replaced by a later begin).
var errNoStaging = errors.New("kv: no staging for this restore on this member")

// restorer keeps the staging of the restore in progress on this member.
// The state machine calls begin, chunk, abort, commit and drop (one at a
// time); status, holdsSnapshots and openID may be called from any
// goroutine. Safe for concurrent use.
type restorer struct {
	dir    string // "" stages in memory (Config.InMemory)
	eng    storage.Engine
	logger *slog.Logger

	mu  sync.Mutex
	cur *staging
}

type staging struct {
	id    restoreID
	total uint64
	crc   uint32
	begun time.Time // local time of the begin (or of Open, for a staging found there)
	f     *os.File  // on disk; nil in memory
	mem   []byte    // in memory
	// err is the first failure to stage (disk full, a copy that does not
	// match its begin entry): the commit will fail on this member.
	err error
	// buildErr is the engine's failure to build the complete copy; the
	// commit tries again.
	buildErr error
	// prepared is the copy built by the engine, ready to install, once the
	// last chunk has arrived and the copy checked out.
	prepared storage.Staged
}

// newRestorer removes the leader's leftover restore-*.tmp files in dir and
// takes up a staging a crash left there.
func newRestorer(dir string, eng storage.Engine, logger *slog.Logger) *restorer {
	r := &restorer{dir: dir, eng: eng, logger: logger}
	if dir == "" {
		return r
	}
	tmps, _ := filepath.Glob(filepath.Join(dir, stagingPrefix+"*.tmp"))
	for _, p := range tmps {
		if err := os.Remove(p); err != nil {
			logger.Warn("removing a restore's leftover copy failed", "file", p, "error", err)
			continue
		}
		logger.Info("removed a restore's leftover copy", "file", p)
	}
	found, _ := filepath.Glob(filepath.Join(dir, stagingPrefix+"*"+stagingSuffix))
	for _, p := range found {
		st, err := openStaging(p)
		if err != nil || r.cur != nil {
			// A header that did not reach the disk: its begin was not
			// applied either, and will be again. Two stagings cannot both
			// be current: keep the first.
			logger.Warn("removing a restore staging", "file", p, "error", err)
			if st != nil {
				st.f.Close()
			}
			os.Remove(p)
			continue
		}
		r.cur = st
		logger.Info("found a restore staging in progress", "restore", st.id, "file", p)
	}
	return r
}

func (r *restorer) stagingPath(id restoreID) string {
	return filepath.Join(r.dir, stagingPrefix+id.String()+stagingSuffix)
}

func openStaging(path string) (*staging, error) {
	name := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(path), stagingPrefix), stagingSuffix)
	var id restoreID
	if n, err := hex.Decode(id[:], []byte(name)); err != nil || n != len(id) {
		return nil, fmt.Errorf("kv: staging file name %q", filepath.Base(path))
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	var hdr [stagingData]byte
	if _, err := f.ReadAt(hdr[:], 0); err != nil || string(hdr[:8]) != stagingMagic {
		return &staging{f: f}, fmt.Errorf("kv: staging header: %v", err)
	}
	return &staging{
		id:    id,
		total: binary.BigEndian.Uint64(hdr[8:]),
		crc:   binary.BigEndian.Uint32(hdr[16:]),
		begun: time.Now(),
		f:     f,
	}, nil
}

// apply carries out a begin, chunk or abort entry. Failures are recorded
// in the staging (they fail the commit on this member, and the leader
// checks its own before it proposes one), never returned: the entry is
// applied either way.
func (r *restorer) apply(e restoreEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch e.kind {
	case restoreBegin:
		r.dropLocked("a new restore begins")
		r.cur = r.create(e)
	case restoreChunk:
		st := r.cur
		if st == nil || st.id != e.id || st.err != nil {
			return
		}
		if e.off > st.total || uint64(len(e.data)) > st.total-e.off {
			st.err = fmt.Errorf("%w: restore %s: chunk at %d of %d bytes past its size %d", storage.ErrCorrupt, e.id, e.off, len(e.data), st.total)
			return
		}
		if st.f != nil {
			_, err := st.f.WriteAt(e.data, stagingData+int64(e.off))
			if err == nil {
				err = st.f.Sync()
			}
			if err != nil {
				st.err = wrapDiskFull(fmt.Errorf("kv: restore %s: write staging: %w", e.id, err))
				r.logger.Error("staging a restore failed; it will not install here", "restore", e.id, "error", err)
				return
			}
		} else {
			// Grown as chunks arrive, not allocated at the begin.
			if end := int(e.off) + len(e.data); end > len(st.mem) {
				st.mem = append(st.mem, make([]byte, end-len(st.mem))...)
			}
			copy(st.mem[e.off:], e.data)
		}
		if e.off+uint64(len(e.data)) == st.total {
			r.prepare(st)
		}
	case restoreAbort:
		if r.cur != nil && r.cur.id == e.id {
			r.dropLocked("aborted")
		}
	}
}

func (r *restorer) create(e restoreEntry) *staging {
	st := &staging{id: e.id, total: e.total, crc: e.crc, begun: time.Now()}
	if r.dir == "" {
		if e.total == 0 {
			r.prepare(st)
		}
		return st
	}
	path := r.stagingPath(e.id)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err == nil {
		st.f = f
		var hdr [stagingData]byte
		copy(hdr[:], stagingMagic)
		binary.BigEndian.PutUint64(hdr[8:], e.total)
		binary.BigEndian.PutUint32(hdr[16:], e.crc)
		if _, err = f.WriteAt(hdr[:], 0); err == nil {
			err = f.Sync()
		}
		if err == nil {
			err = syncDir(r.dir)
		}
	}
	if err != nil {
		st.err = wrapDiskFull(fmt.Errorf("kv: restore %s: create staging: %w", e.id, err))
		r.logger.Error("staging a restore failed; it will not install here", "restore", e.id, "error", err)
		return st
	}
	if e.total == 0 {
		r.prepare(st)
	}
	return st
}

// copyReader returns the staged copy.
func (st *staging) copyReader() io.Reader {
	if st.f == nil {
		return bytes.NewReader(st.mem)
	}
	return io.NewSectionReader(st.f, stagingData, int64(st.total))
}

// prepare checks the complete copy against its size and checksum and has
// the engine build it beside the data; failures go to st.err.
func (r *restorer) prepare(st *staging) {
	if err := st.check(); err != nil {
		st.err = err
		r.logger.Error("a staged restore does not match its begin entry; it will not install here", "restore", st.id, "error", err)
		return
	}
	p, err := r.eng.Stage(st.copyReader())
	st.buildErr = nil
	if err != nil {
		st.buildErr = wrapDiskFull(fmt.Errorf("kv: restore %s: build the restored data: %w", st.id, err))
		r.logger.Error("building a staged restore failed; it will not install here", "restore", st.id, "error", err)
		return
	}
	st.prepared = p
}

func (st *staging) check() error {
	if st.f == nil && uint64(len(st.mem)) != st.total {
		return fmt.Errorf("%w: restore %s: staging holds %d bytes, want %d", storage.ErrCorrupt, st.id, len(st.mem), st.total)
	}
	if st.f != nil {
		fi, err := st.f.Stat()
		if err != nil {
			return fmt.Errorf("kv: restore %s: %w", st.id, err)
		}
		if got := fi.Size() - stagingData; got != int64(st.total) {
			return fmt.Errorf("%w: restore %s: staging holds %d bytes, want %d", storage.ErrCorrupt, st.id, got, st.total)
		}
	}
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	if _, err := io.Copy(h, st.copyReader()); err != nil {
		return fmt.Errorf("kv: restore %s: read staging: %w", st.id, err)
	}
	if got := h.Sum32(); got != st.crc {
		return fmt.Errorf("%w: restore %s: staging checksum %08x, want %08x", storage.ErrCorrupt, st.id, got, st.crc)
	}
	return nil
}

// commit installs the staged copy of restore id with index as the applied
// index. An error means this member cannot apply the commit entry: the
// state machine must not go on past it.
func (r *restorer) commit(index uint64, id restoreID) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.cur
	if st == nil || st.id != id {
		return fmt.Errorf("%w: restore %s committed at index %d, but this member holds no staging for it", storage.ErrCorrupt, id, index)
	}
	lost := func(err error) error {
		// The staged copy is unusable: this member lacks what the others
		// install, and waiting does not bring back chunks already
		// applied. It cannot go on (a restart with space builds the copy
		// again from a complete staging).
		return fmt.Errorf("%w: restore %s committed at index %d, and this member cannot install it: %v", storage.ErrCorrupt, id, index, err)
	}
	if st.err != nil {
		return lost(st.err)
	}
	if st.prepared == nil {
		// Not built (lost with a restart, or building failed): build it.
		r.prepare(st)
		if st.err != nil {
			return lost(st.err)
		}
		if st.buildErr != nil {
			return fmt.Errorf("kv: restore %s committed at index %d: %w", id, index, st.buildErr)
		}
	}
	p := st.prepared
	st.prepared = nil
	if err := p.Install(index); err != nil {
		return fmt.Errorf("kv: restore %s: install at index %d: %w", id, index, wrapDiskFull(err))
	}
	r.dropLocked("")
	return nil
}

// drop discards any staging: a Raft snapshot replaced the data.
func (r *restorer) drop(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dropLocked(reason)
}

func (r *restorer) dropLocked(reason string) {
	st := r.cur
	if st == nil {
		return
	}
	r.cur = nil
	if st.prepared != nil {
		st.prepared.Discard()
	}
	if st.f != nil {
		st.f.Close()
		if err := os.Remove(st.f.Name()); err != nil && !os.IsNotExist(err) {
			r.logger.Warn("removing a restore staging failed", "file", st.f.Name(), "error", err)
		}
		_ = syncDir(r.dir)
	}
	if reason != "" {
		r.logger.Info("restore staging dropped", "restore", st.id, "reason", reason)
	}
}

// status returns nil when restore id is staged here completely and built,
// ready to install; otherwise why not.
func (r *restorer) status(id restoreID) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch st := r.cur; {
	case st == nil || st.id != id:
		return errNoStaging
	case st.err != nil:
		return st.err
	case st.buildErr != nil:
		return st.buildErr
	case st.prepared == nil:
		return fmt.Errorf("kv: restore %s: staging incomplete", id)
	}
	return nil
}

// holdsSnapshots returns an error while a staging younger than
// stagingHoldsSnapshots is open.
func (r *restorer) holdsSnapshots() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st := r.cur; st != nil && time.Since(st.begun) < stagingHoldsSnapshots {
		return fmt.Errorf("kv: restore %s is being staged: snapshot postponed", st.id)
	}
	return nil
}

// openID returns the ID of the open staging, if any.
func (r *restorer) openID() (restoreID, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur == nil {
		return restoreID{}, false
	}
	return r.cur.id, true
}

// close releases the staging's file handle (the file stays for the next
// Open).
func (r *restorer) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur != nil && r.cur.f != nil {
		r.cur.f.Close()
	}
	if r.cur != nil && r.cur.prepared != nil {
		r.cur.prepared.Discard()
		r.cur.prepared = nil
	}
	r.cur = nil
}

// wrapDiskFull wraps err with storage.ErrDiskFull when it reports a file
// system without space.
func wrapDiskFull(err error) error {
	if err == nil || errors.Is(err, storage.ErrDiskFull) {
		return err
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", storage.ErrDiskFull, err)
	}
	return err
}
