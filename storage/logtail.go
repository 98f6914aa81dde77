package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// The log tail: StoreLogs appends its records to a small file of fixed size
// (path + ".tail") with one write and one fdatasync, instead of a bbolt
// commit (two fdatasyncs, and page writes). The records also stay in memory,
// where reads find them, until a checkpoint moves them into the bbolt file in
// one transaction and starts the tail over; a checkpoint happens when the
// tail is full, before DeleteRange, and at Close. OpenLogStore replays what
// a crash left in the tail.
//
// The file is written full of zeros when created and never grows, so an
// fdatasync has no size to record: one disk flush per append.
//
// Layout: an 8-byte header (tailMagic, then the epoch, big-endian uint32),
// then frames: record length (uint32), epoch (uint32), the index of the
// first record of the frame's StoreLogs batch (uint64), the record (the
// bbolt file's record format, with its CRC-32C). A checkpoint writes a new
// epoch into the header, so frames of earlier epochs further on in the file
// are not read. Replay stops at the first frame that is not of the current
// epoch or fails its checksum: what a crash tore mid-append (the pages of
// one write reach the disk in any order, so frames of the torn batch may
// survive after it; they are dropped too). If a valid frame of a later
// batch follows, the damage is not a torn append, and Open fails with
// ErrCorruptLog.
const (
	tailMagic       = 0x434b5654 // "CKVT"
	tailHeaderSize  = 8
	tailFrameHeader = 16
	// tailSize is the size of the tail file: the bytes of log a member
	// holds outside bbolt at most (and in memory), and a checkpoint's size.
	tailSize = 8 << 20
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
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("storage: open log tail %s: %w", path, err)
	}
	s.tail, s.tailPath = f, path
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("storage: log tail %s: %w", path, err)
	}
	if fi.Size() < tailSize {
		// New (or cut short by a crash while created): zeros all through,
		// then a header of epoch 1. Any frames it held are kept: a file
		// cut short still has its beginning.
		if err := s.replayTail(fi.Size()); err != nil {
			return err
		}
		if err := f.Truncate(tailSize); err != nil {
			return fmt.Errorf("storage: size log tail %s: %w", path, err)
		}
		if _, err := f.WriteAt(make([]byte, tailSize-fi.Size()), fi.Size()); err != nil {
			return fmt.Errorf("storage: fill log tail %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("storage: sync log tail %s: %w", path, err)
		}
		if err := syncDir(dirOf(path)); err != nil {
			return fmt.Errorf("storage: sync dir of %s: %w", path, err)
		}
		return s.resetTail()
	}
	if err := s.replayTail(tailSize); err != nil {
		return err
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
	if size < tailHeaderSize {
		return nil
	}
	buf := make([]byte, size)
	if _, err := io.ReadFull(io.NewSectionReader(s.tail, 0, size), buf); err != nil {
		return fmt.Errorf("storage: read log tail %s: %w", s.tailPath, err)
	}
	if binary.BigEndian.Uint32(buf) != tailMagic {
		if allZero(buf) {
			return nil // created, never written
		}
		return fmt.Errorf("%w: log tail %s: bad header", ErrCorruptLog, s.tailPath)
	}
	epoch := binary.BigEndian.Uint32(buf[4:])
	var (
		recs          [][]byte
		idxs, batches []uint64
		l             raft.Log
	)
	off := tailHeaderSize
	for {
		rec, batch, next, ok := tailFrameAt(buf, off, epoch, &l)
		if !ok {
			break
		}
		recs, idxs, batches = append(recs, rec), append(idxs, l.Index), append(batches, batch)
		off = next
	}
	// A torn append leaves a bad frame, maybe valid frames of the same
	// batch, then zeros or frames of older epochs. A valid frame of this
	// epoch from another batch after it means damage: the frames after the
	// bad one must all be of the batch the last good frame belongs to, or
	// of the next one.
	var lastIndex, lastBatch, after uint64
	if len(idxs) > 0 {
		lastIndex, lastBatch = idxs[len(idxs)-1], batches[len(batches)-1]
	}
	var pat [4]byte
	binary.BigEndian.PutUint32(pat[:], epoch)
	for o := off + 1; o+tailFrameHeader+minLogRecordSize <= len(buf); o++ {
		// Candidates only where the epoch appears (bytes.Index is fast
		// over the zeros that fill most of the file).
		i := bytes.Index(buf[o+4:], pat[:])
		if i < 0 {
			break
		}
		o += i
		_, batch, _, ok := tailFrameAt(buf, o, epoch, &l)
		if !ok {
			continue
		}
		if after == 0 {
			after = batch
		}
		if batch != after || l.Index < batch || (len(idxs) > 0 && batch != lastBatch && batch != lastIndex+1) {
			return fmt.Errorf("%w: log tail %s: damaged frame at offset %d, followed by a valid one (index %d) at %d", ErrCorruptLog, s.tailPath, off, l.Index, o)
		}
	}
	if len(recs) == 0 {
		return nil
	}
	err := s.update(func(tx *bolt.Tx) error {
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

// tailFrameAt decodes the frame at off: its record (aliasing buf), the
// first index of its batch, the offset after it, and whether it is a valid
// frame of epoch.
func tailFrameAt(buf []byte, off int, epoch uint32, l *raft.Log) (rec []byte, batch uint64, next int, ok bool) {
	if off+tailFrameHeader > len(buf) {
		return nil, 0, 0, false
	}
	n := int(binary.BigEndian.Uint32(buf[off:]))
	if binary.BigEndian.Uint32(buf[off+4:]) != epoch || n < minLogRecordSize || n > len(buf)-off-tailFrameHeader {
		return nil, 0, 0, false
	}
	batch = binary.BigEndian.Uint64(buf[off+8:])
	rec = buf[off+tailFrameHeader : off+tailFrameHeader+n]
	if err := unmarshalLog(rec, l); err != nil {
		return nil, 0, 0, false
	}
	return rec, batch, off + tailFrameHeader + n, true
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// resetTail starts the tail over under a new epoch. The caller holds
// writeMu (or has the store to itself) and has moved every record of the
// tail into the bbolt file.
func (s *LogStore) resetTail() error {
	var hdr [tailHeaderSize]byte
	if _, err := s.tail.ReadAt(hdr[:], 0); err != nil {
		return fmt.Errorf("storage: read log tail %s: %w", s.tailPath, err)
	}
	epoch := uint32(0)
	if binary.BigEndian.Uint32(hdr[:]) == tailMagic {
		epoch = binary.BigEndian.Uint32(hdr[4:])
	}
	epoch++
	if epoch == 0 {
		epoch = 1
	}
	binary.BigEndian.PutUint32(hdr[:], tailMagic)
	binary.BigEndian.PutUint32(hdr[4:], epoch)
	if _, err := s.tail.WriteAt(hdr[:], 0); err != nil {
		return fmt.Errorf("storage: write log tail %s: %w", s.tailPath, err)
	}
	if err := s.tail.Sync(); err != nil {
		return fmt.Errorf("storage: sync log tail %s: %w", s.tailPath, err)
	}
	s.memMu.Lock()
	s.mem = tailRun{}
	s.memMu.Unlock()
	s.epoch, s.tailOff = epoch, tailHeaderSize
	return nil
}

// checkpoint moves the records held in the tail into the bbolt file and
// starts the tail over. The caller holds writeMu.
func (s *LogStore) checkpoint() error {
	if s.tail == nil {
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
			return fmt.Errorf("storage: checkpoint log tail into %s: %w", s.path, err)
		}
	}
	return s.resetTail()
}

// appendTail stores logs through the tail: false when they do not fit in it
// even after a checkpoint (the caller then commits them to bbolt). The
// caller holds writeMu.
func (s *LogStore) appendTail(logs []*raft.Log) (bool, error) {
	size := 0
	for _, l := range logs {
		size += tailFrameHeader + encodedLogSize(l)
	}
	if size > tailSize-tailHeaderSize {
		if err := s.checkpoint(); err != nil {
			return false, err
		}
		return false, nil
	}
	s.memMu.RLock()
	run := s.mem
	s.memMu.RUnlock()
	if s.tailOff+size > tailSize || (len(run.recs) > 0 && logs[0].Index != run.last()+1) {
		if err := s.checkpoint(); err != nil {
			return false, err
		}
		run = tailRun{}
	}
	// One buffer for the frames; the records in memory alias it, so it is
	// never reused.
	buf := make([]byte, 0, size)
	recs := make([][]byte, 0, len(logs))
	for i, l := range logs {
		if i > 0 && l.Index != logs[i-1].Index+1 {
			return false, errors.New("storage: StoreLogs with indexes that are not consecutive")
		}
		start := len(buf)
		buf = binary.BigEndian.AppendUint32(buf, 0)
		buf = binary.BigEndian.AppendUint32(buf, s.epoch)
		buf = binary.BigEndian.AppendUint64(buf, logs[0].Index)
		buf = appendLog(buf, l)
		binary.BigEndian.PutUint32(buf[start:], uint32(len(buf)-start-tailFrameHeader))
		recs = append(recs, buf[start+tailFrameHeader:len(buf):len(buf)])
	}
	if _, err := s.tail.WriteAt(buf, int64(s.tailOff)); err != nil {
		return false, fmt.Errorf("storage: append to log tail %s: %w", s.tailPath, err)
	}
	if err := fdatasync(s.tail); err != nil {
		return false, fmt.Errorf("storage: sync log tail %s: %w", s.tailPath, err)
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
