package storage

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// The log tail: StoreLogs appends its records to a small file of fixed size
// (path + ".tail") with one write and one fdatasync, instead of a bbolt
// commit (two fdatasyncs, and page writes). The records also stay in memory,
// where reads find them, until a checkpoint moves them into the bbolt file in
// one transaction and starts the tail over under a new epoch; a checkpoint
// happens when the tail is full, before a DeleteRange that reaches into the
// records it holds, at Close, and on Checkpoint. OpenLogStore replays what
// a crash left in the tail.
//
// The file is written full of zeros when created and never grows, so an
// fdatasync has no size to record: one disk flush per append.
//
// Layout: a header of tailHeaderSize bytes, frames, and a copy of the
// header in the last tailHeaderSize bytes of the file (frames never reach
// it). Header:
//
//	magic   4 bytes  tailMagic, big-endian
//	epoch   4 bytes  big-endian, one more than the epoch before
//	salt    8 bytes  random (crypto/rand), new for each epoch
//	CRC-32C 4 bytes  big-endian, over the 16 bytes before
//
// A new epoch writes and syncs the copy, then the header: if a crash (or
// damage) leaves the header bad, its copy holds the epoch. A header is
// only written once every record of the tail is in the bbolt file.
//
// Frame (tailFrameHeader bytes, then the record):
//
//	length  4 bytes  big-endian, of the record
//	salt    8 bytes  the salt of the epoch the frame was written in
//	batch   8 bytes  big-endian, the index of the first record of the
//	                 frame's StoreLogs batch
//	CRC-32C 4 bytes  big-endian, over the 20 bytes before and the record
//	record           the bbolt file's record format, with its own CRC-32C
//
// Bytes of earlier epochs stay in the file past what the current epoch has
// written, among them the raft entries' data, which clients choose. None of
// them carries the current salt, which nobody outside the process knows, so
// no stale bytes pass for a frame of the current epoch. Replay follows the
// chain of frames from the header: each must carry the salt, pass its
// checksum, hold the index after the one before, a term no lower, and begin
// a new batch only at its own index. It stops at the first frame that does
// not: what a crash tore mid-append (the pages of one write reach the disk
// in any order, so frames of the torn batch may survive after it; they are
// dropped too). If a salted frame of a later batch follows, the damage is
// not a torn append, and Open fails with ErrCorruptLog.
//
// A tail is never appended to after a failed write or fdatasync (Linux may
// report a failed writeback once and drop or keep the data): the next
// StoreLogs first checkpoints and starts a new epoch. Nothing is appended
// under an epoch whose header is not durable.
//
// The last tailReserve bytes of the tail are kept for batches without
// raft.LogCommand entries (the no-op of a new leader, configuration
// changes, barriers): when a checkpoint fails for lack of space, such a
// batch is appended anyway if it fits, so that a member whose disk is full
// still takes part in elections and membership changes.
//
// The format before salts (header "CKVT" and the epoch; frames of length,
// epoch, batch and record) is still replayed at open, then the tail starts
// over in this format; see logtail_v1.go.
const (
	tailMagic       = 0x434b5432 // "CKT2"
	tailHeaderSize  = 20
	tailFrameHeader = 24
	tailSaltSize    = 8
)

// tailSize is the size of a new tail file: the bytes of log a member holds
// outside bbolt at most (and in memory), and a checkpoint's size.
// tailReserve is the part kept for batches without commands. Variables
// only so that tests can use a small tail.
var (
	tailSize    = 8 << 20
	tailReserve = 512 << 10
)

// tailRun is a run of consecutive records held in the tail.
type tailRun struct {
	first uint64   // index of recs[0]
	recs  [][]byte // encoded records
}

func (r *tailRun) last() uint64 { return r.first + uint64(len(r.recs)) - 1 }

func (r *tailRun) get(index uint64) ([]byte, bool) {
	if len(r.recs) == 0 || index < r.first || index > r.last() {
		return nil, false
	}
	return r.recs[index-r.first], true
}

// openTail opens (or creates) the tail file and replays its records into
// the bbolt file, leaving the tail empty under a new epoch.
func (s *LogStore) openTail() error {
	path := s.path + ".tail"
	f, err := fsOpen(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("storage: open log tail %s: %w", path, diskFull(err))
	}
	s.tail, s.tailPath = f, path
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("storage: log tail %s: %w", path, err)
	}
	s.tailLen = max(int(fi.Size()), tailSize)
	if err := s.replayTail(fi.Size()); err != nil {
		return err
	}
	if fi.Size() < int64(s.tailLen) {
		// New (or cut short by a crash while created): zeros all through.
		// Any frames it held are replayed above: a file cut short still
		// has its beginning.
		if err := fsTruncate(f, int64(s.tailLen)); err != nil {
			return fmt.Errorf("storage: size log tail %s: %w", path, diskFull(err))
		}
		if _, err := fsWriteAt(f, make([]byte, int64(s.tailLen)-fi.Size()), fi.Size()); err != nil {
			return fmt.Errorf("storage: fill log tail %s: %w", path, diskFull(err))
		}
	}
	// Its size and zeros durable (again, in case an earlier Open failed
	// before it synced them); OpenLogStore then syncs the directory.
	if err := fsSync(f, true); err != nil {
		return fmt.Errorf("storage: sync log tail %s: %w", path, diskFull(err))
	}
	return s.resetTail()
}

func dirOf(path string) string {
	for i := len(path) - 1; i >= 0; i-- {
		if os.IsPathSeparator(path[i]) {
			return path[:i+1]
		}
	}
	return "."
}

// replayTail reads the frames of the current epoch in the first size bytes
// of the tail and stores their records in the bbolt file.
func (s *LogStore) replayTail(size int64) error {
	if size < 4 {
		return nil
	}
	buf := make([]byte, size)
	if _, err := fsReadAt(s.tail, buf, 0); err != nil {
		return fmt.Errorf("storage: read log tail %s: %w", s.tailPath, err)
	}
	var (
		recs [][]byte
		idxs []uint64
		err  error
	)
	switch magic := binary.BigEndian.Uint32(buf); {
	case magic == tailMagicV1:
		recs, idxs = s.scanTailV1(buf)
	case magic == tailMagic || allZero(buf[:min(len(buf), tailHeaderSize)]):
		recs, idxs, err = s.scanTail(buf)
	default:
		err = fmt.Errorf("%w: log tail %s: bad header", ErrCorruptLog, s.tailPath)
	}
	if err != nil || len(recs) == 0 {
		return err
	}
	err = s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(logStoreBucketLogs)
		var key [8]byte
		for i, rec := range recs {
			binary.BigEndian.PutUint64(key[:], idxs[i])
			if err := b.Put(key[:], rec); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("storage: replay log tail %s into %s: %w", s.tailPath, s.path, err)
	}
	return nil
}

// scanTail returns the records of the chain of frames of a tail in the
// current format, and their indexes; it sets s.epoch from the header.
func (s *LogStore) scanTail(buf []byte) (recs [][]byte, idxs []uint64, err error) {
	epoch, salt, ok := parseTailHeader(buf)
	if len(buf) >= s.tailLen {
		// The copy of the header at the end of the file, written first
		// by resetTail: when the header is torn (or damaged), the copy
		// holds its epoch.
		copyAt := len(buf) - tailHeaderSize
		if !ok {
			epoch, salt, ok = parseTailHeader(buf[copyAt:])
		}
		buf = buf[:copyAt]
	}
	if !ok {
		if allZero(buf[:min(len(buf), tailHeaderSize)]) {
			// Created, and no header written yet: no frames either.
			return nil, nil, nil
		}
		return nil, nil, fmt.Errorf("%w: log tail %s: bad header", ErrCorruptLog, s.tailPath)
	}
	s.epoch = epoch
	var (
		l                          raft.Log
		lastIndex, lastTerm, batch uint64
	)
	off := tailHeaderSize
	for {
		rec, b, next, ok := tailFrameAt(buf, off, salt, &l)
		if !ok || !chainNext(len(recs) == 0, lastIndex, lastTerm, batch, &l, b) {
			break
		}
		recs, idxs = append(recs, rec), append(idxs, l.Index)
		lastIndex, lastTerm, batch = l.Index, l.Term, b
		off = next
	}
	// A torn append leaves a bad frame, maybe valid frames of the same
	// batch, then zeros or bytes of older epochs. A salted frame of another
	// batch after it means damage: the frames after the bad one must all
	// be of the batch the last good frame belongs to, or of the next one.
	var after uint64
	for o := off + 1; o+tailFrameHeader+minLogRecordSize <= len(buf); o++ {
		// Candidates only where the salt appears.
		i := bytes.Index(buf[o+4:], salt[:])
		if i < 0 {
			break
		}
		o += i
		_, b, _, ok := tailFrameAt(buf, o, salt, &l)
		if !ok {
			continue
		}
		if after == 0 {
			after = b
		}
		if b != after || l.Index < b || (len(idxs) > 0 && b != batch && b != lastIndex+1) {
			return nil, nil, fmt.Errorf("%w: log tail %s: damaged frame at offset %d, followed by a valid one (index %d) at %d", ErrCorruptLog, s.tailPath, off, l.Index, o)
		}
	}
	return recs, idxs, nil
}

// parseTailHeader decodes a header of the current format at the start of b.
func parseTailHeader(b []byte) (epoch uint32, salt [tailSaltSize]byte, ok bool) {
	if len(b) < tailHeaderSize || binary.BigEndian.Uint32(b) != tailMagic ||
		crc32.Checksum(b[:16], logCRCTable) != binary.BigEndian.Uint32(b[16:]) {
		return 0, salt, false
	}
	copy(salt[:], b[8:16])
	return binary.BigEndian.Uint32(b[4:]), salt, true
}

// chainNext says whether l, of a frame of batch b, follows the chain whose
// last record has lastIndex and lastTerm and belongs to batch (first: the
// chain is empty): consecutive indexes, terms that never decrease, and a
// batch that changes only where a new one begins.
func chainNext(first bool, lastIndex, lastTerm, batch uint64, l *raft.Log, b uint64) bool {
	if first {
		return b == l.Index
	}
	return l.Index == lastIndex+1 && l.Term >= lastTerm && (b == batch || b == l.Index)
}

// tailFrameAt decodes the frame at off: its record (aliasing buf), the
// first index of its batch, the offset after it, and whether it is a valid
// frame of the epoch of salt.
func tailFrameAt(buf []byte, off int, salt [tailSaltSize]byte, l *raft.Log) (rec []byte, batch uint64, next int, ok bool) {
	if off < 0 || off+tailFrameHeader > len(buf) {
		return nil, 0, 0, false
	}
	n := int(binary.BigEndian.Uint32(buf[off:]))
	if !bytes.Equal(buf[off+4:off+12], salt[:]) || n < minLogRecordSize || n > len(buf)-off-tailFrameHeader {
		return nil, 0, 0, false
	}
	rec = buf[off+tailFrameHeader : off+tailFrameHeader+n]
	sum := crc32.Update(crc32.Checksum(buf[off:off+20], logCRCTable), logCRCTable, rec)
	if sum != binary.BigEndian.Uint32(buf[off+20:]) {
		return nil, 0, 0, false
	}
	if err := unmarshalLog(rec, l); err != nil {
		return nil, 0, 0, false
	}
	return rec, binary.BigEndian.Uint64(buf[off+12:]), off + tailFrameHeader + n, true
}

// appendTailFrame appends the frame of l, of the batch whose first index is
// batch, under salt.
func appendTailFrame(dst []byte, salt [tailSaltSize]byte, batch uint64, l *raft.Log) []byte {
	start := len(dst)
	dst = binary.BigEndian.AppendUint32(dst, 0) // the length, set below
	dst = append(dst, salt[:]...)
	dst = binary.BigEndian.AppendUint64(dst, batch)
	dst = binary.BigEndian.AppendUint32(dst, 0) // the checksum, set below
	dst = appendLog(dst, l)
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-tailFrameHeader))
	sum := crc32.Update(crc32.Checksum(dst[start:start+20], logCRCTable), logCRCTable, dst[start+tailFrameHeader:])
	binary.BigEndian.PutUint32(dst[start+20:], sum)
	return dst
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// resetTail starts the tail over under a new epoch with a new salt; the
// tail can take appends once the header is written and synced. The caller
// holds writeMu (or has the store to itself) and has moved every record of
// the tail into the bbolt file.
func (s *LogStore) resetTail() error {
	s.memMu.Lock()
	s.mem = tailRun{}
	s.memMu.Unlock()
	s.tailBad = true // until the new header is durable
	epoch := s.epoch + 1
	if epoch == 0 {
		epoch = 1
	}
	var salt [tailSaltSize]byte
	_, _ = rand.Read(salt[:]) // never fails (crypto/rand)
	var hdr [tailHeaderSize]byte
	binary.BigEndian.PutUint32(hdr[:], tailMagic)
	binary.BigEndian.PutUint32(hdr[4:], epoch)
	copy(hdr[8:], salt[:])
	binary.BigEndian.PutUint32(hdr[16:], crc32.Checksum(hdr[:16], logCRCTable))
	// The epoch advances even if a write fails: a retry uses another.
	s.epoch = epoch
	// The copy at the end first, then the header: a write torn by a crash
	// leaves one of them whole (see scanTail).
	for _, off := range []int{s.tailLen - tailHeaderSize, 0} {
		if _, err := fsWriteAt(s.tail, hdr[:], int64(off)); err != nil {
			return fmt.Errorf("storage: write log tail %s: %w", s.tailPath, diskFull(err))
		}
		if err := fsSync(s.tail, false); err != nil {
			return fmt.Errorf("storage: sync log tail %s: %w", s.tailPath, diskFull(err))
		}
	}
	s.salt, s.tailOff, s.tailBad = salt, tailHeaderSize, false
	return nil
}

// checkpoint moves the records held in the tail into the bbolt file and
// starts the tail over. The caller holds writeMu. A failure for lack of
// space sets DiskFull; a success clears it.
func (s *LogStore) checkpoint() error {
	if s.tail == nil {
		s.full.Store(false)
		return nil
	}
	s.memMu.RLock()
	run := s.mem
	s.memMu.RUnlock()
	if len(run.recs) > 0 {
		err := s.update(func(tx *bolt.Tx) error {
			b := tx.Bucket(logStoreBucketLogs)
			var key [8]byte
			for i, rec := range run.recs {
				binary.BigEndian.PutUint64(key[:], run.first+uint64(i))
				if err := b.Put(key[:], rec); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			if errors.Is(err, ErrDiskFull) {
				s.full.Store(true)
			}
			return fmt.Errorf("storage: checkpoint log tail into %s: %w", s.path, err)
		}
		s.notePut(run.first)
	}
	if err := s.resetTail(); err != nil {
		return err
	}
	s.full.Store(false)
	return nil
}

// hasCommand says whether logs hold a raft.LogCommand entry.
func hasCommand(logs []*raft.Log) bool {
	for _, l := range logs {
		if l.Type == raft.LogCommand {
			return true
		}
	}
	return false
}

// appendTail stores logs through the tail: false when they do not fit in it
// even after a checkpoint (the caller then commits them to bbolt). The
// caller holds writeMu.
func (s *LogStore) appendTail(logs []*raft.Log) (bool, error) {
	for i := 1; i < len(logs); i++ {
		if logs[i].Index != logs[i-1].Index+1 {
			return false, errors.New("storage: StoreLogs with indexes that are not consecutive")
		}
	}
	if s.tailBad {
		// A write or sync of the tail failed, or the header of the epoch
		// is not durable: its records into bbolt, then a new epoch.
		if err := s.checkpoint(); err != nil {
			return false, err
		}
	}
	size := 0
	for _, l := range logs {
		size += tailFrameHeader + encodedLogSize(l)
	}
	end := s.tailLen - tailHeaderSize // the header's copy after it
	usable := end - tailReserve
	if size > usable-tailHeaderSize {
		if err := s.checkpoint(); err != nil {
			return false, err
		}
		return false, nil
	}
	s.memMu.RLock()
	run := s.mem
	s.memMu.RUnlock()
	follows := len(run.recs) == 0 || logs[0].Index == run.last()+1
	if s.tailOff+size > usable || !follows {
		if err := s.checkpoint(); err != nil {
			// Out of space for the checkpoint: a batch without commands
			// goes into the reserve if it fits and the tail is sound.
			if !errors.Is(err, ErrDiskFull) || s.tailBad || !follows ||
				hasCommand(logs) || s.tailOff+size > end {
				return false, err
			}
		} else {
			run = tailRun{}
		}
	}
	// One buffer for the frames; the records in memory alias it, so it is
	// never reused.
	buf := make([]byte, 0, size)
	recs := make([][]byte, 0, len(logs))
	for _, l := range logs {
		start := len(buf)
		buf = appendTailFrame(buf, s.salt, logs[0].Index, l)
		recs = append(recs, buf[start+tailFrameHeader:len(buf):len(buf)])
	}
	if _, err := fsWriteAt(s.tail, buf, int64(s.tailOff)); err != nil {
		s.tailBad = true
		return false, fmt.Errorf("storage: append to log tail %s: %w", s.tailPath, diskFull(err))
	}
	if err := fsSync(s.tail, false); err != nil {
		s.tailBad = true
		return false, fmt.Errorf("storage: sync log tail %s: %w", s.tailPath, diskFull(err))
	}
	s.tailOff += len(buf)
	if len(run.recs) == 0 {
		run.first = logs[0].Index
	}
	s.memMu.Lock()
	s.mem = tailRun{first: run.first, recs: append(run.recs, recs...)}
	s.memMu.Unlock()
	return true, nil
}
