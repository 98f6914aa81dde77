package storage

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
)

// The snapshot stream:
//
//	magic   "cohortkv" (8 bytes)
//	version 1 byte (1)
//	index   8 bytes big endian: the applied index the data reflects
//	records 0x01, uvarint len(key), key, uvarint len(value), value  (ascending keys)
//	end     0x00, 8 bytes big endian record count, 4 bytes CRC-32C of all preceding bytes
const (
	snapMagic   = "cohortkv"
	snapVersion = 1
	recPair     = 0x01
	recEnd      = 0x00
)

// Limits on one record of a snapshot stream, so that a damaged length prefix
// cannot make the reader allocate without bound.
const (
	MaxSnapshotKey   = 1 << 20
	MaxSnapshotValue = 1 << 28
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// snapWriter writes the snapshot format.
type snapWriter struct {
	w     io.Writer
	crc   hash.Hash32
	bw    *bufio.Writer
	count uint64
	buf   [1 + 2*binary.MaxVarintLen64]byte
}

func newSnapWriter(w io.Writer, index uint64) (*snapWriter, error) {
	crc := crc32.New(castagnoli)
	sw := &snapWriter{w: w, crc: crc, bw: bufio.NewWriterSize(io.MultiWriter(w, crc), 256<<10)}
	var hdr [17]byte
	copy(hdr[:], snapMagic)
	hdr[8] = snapVersion
	binary.BigEndian.PutUint64(hdr[9:], index)
	_, err := sw.bw.Write(hdr[:])
	return sw, err
}

func (sw *snapWriter) pair(k, v []byte) error {
	sw.buf[0] = recPair
	n := 1 + binary.PutUvarint(sw.buf[1:], uint64(len(k)))
	if _, err := sw.bw.Write(sw.buf[:n]); err != nil {
		return err
	}
	if _, err := sw.bw.Write(k); err != nil {
		return err
	}
	n = binary.PutUvarint(sw.buf[:], uint64(len(v)))
	if _, err := sw.bw.Write(sw.buf[:n]); err != nil {
		return err
	}
	sw.count++
	_, err := sw.bw.Write(v)
	return err
}

func (sw *snapWriter) finish() error {
	var tail [9]byte
	tail[0] = recEnd
	binary.BigEndian.PutUint64(tail[1:], sw.count)
	if _, err := sw.bw.Write(tail[:]); err != nil {
		return err
	}
	if err := sw.bw.Flush(); err != nil {
		return err
	}
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], sw.crc.Sum32())
	_, err := sw.w.Write(sum[:])
	return err
}

// WriteSnapshot streams every pair of tx, in key order, to w in the snapshot
// format, stamped with index. It holds one record in memory at a time.
func WriteSnapshot(w io.Writer, index uint64, tx ReadTx) error {
	sw, err := newSnapWriter(w, index)
	if err != nil {
		return err
	}
	var werr error
	err = tx.Scan(nil, func(k, v []byte) bool {
		werr = sw.pair(k, v)
		return werr == nil
	})
	if err == nil {
		err = werr
	}
	if err != nil {
		return err
	}
	return sw.finish()
}

// ReadSnapshot reads a stream written by WriteSnapshot. It calls begin with
// the stream's index before the first pair, then put for every pair in order
// (the slices are reused after put returns), and returns nil only when the
// whole stream, its record count and its checksum are intact. Callers must
// stage what put receives and commit it only when ReadSnapshot returns nil.
// Errors from a damaged stream wrap ErrCorruptSnapshot.
func ReadSnapshot(r io.Reader, begin func(index uint64) error, put func(key, value []byte) error) error {
	crc := crc32.New(castagnoli)
	br := bufio.NewReaderSize(r, 256<<10)
	cr := &crcReader{r: br, h: crc}
	var hdr [17]byte
	if _, err := io.ReadFull(cr, hdr[:]); err != nil {
		return corrupt("header", err)
	}
	if string(hdr[:8]) != snapMagic {
		return corrupt("header", errors.New("bad magic"))
	}
	if hdr[8] != snapVersion {
		return fmt.Errorf("%w: unsupported version %d", ErrCorruptSnapshot, hdr[8])
	}
	if err := begin(binary.BigEndian.Uint64(hdr[9:])); err != nil {
		return err
	}
	var key, val []byte
	var count uint64
	for {
		tag, err := cr.ReadByte()
		if err != nil {
			return corrupt("record", err)
		}
		if tag == recEnd {
			break
		}
		if tag != recPair {
			return corrupt("record", fmt.Errorf("bad tag %#x after %d records", tag, count))
		}
		if key, err = readChunk(cr, key, MaxSnapshotKey); err != nil {
			return corrupt("key", err)
		}
		if val, err = readChunk(cr, val, MaxSnapshotValue); err != nil {
			return corrupt("value", err)
		}
		if err := put(key, val); err != nil {
			return err
		}
		count++
	}
	var tail [8]byte
	if _, err := io.ReadFull(cr, tail[:]); err != nil {
		return corrupt("trailer", err)
	}
	if n := binary.BigEndian.Uint64(tail[:]); n != count {
		return corrupt("trailer", fmt.Errorf("count %d, read %d records", n, count))
	}
	want := crc.Sum32()
	var sum [4]byte
	if _, err := io.ReadFull(br, sum[:]); err != nil {
		return corrupt("checksum", err)
	}
	if got := binary.BigEndian.Uint32(sum[:]); got != want {
		return corrupt("checksum", fmt.Errorf("crc32c %08x, want %08x", got, want))
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return corrupt("trailer", errors.New("bytes after the checksum"))
	}
	return nil
}

func corrupt(where string, err error) error {
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("%w: %s: %v", ErrCorruptSnapshot, where, err)
}

func readChunk(r *crcReader, buf []byte, max uint64) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return buf, err
	}
	if n > max {
		return buf, fmt.Errorf("length %d over limit %d", n, max)
	}
	// Grow with what actually arrives, so that a damaged length cannot
	// allocate far beyond the stream.
	buf = buf[:0]
	for remaining := n; remaining > 0; {
		step := min(remaining, 1<<20)
		if uint64(cap(buf)-len(buf)) < step {
			buf = append(buf, make([]byte, step)...)[:len(buf)]
		}
		start := len(buf)
		buf = buf[:start+int(step)]
		if _, err := io.ReadFull(r, buf[start:]); err != nil {
			return buf, err
		}
		remaining -= step
	}
	return buf, nil
}

// crcReader hashes every byte read through it.
type crcReader struct {
	r *bufio.Reader
	h hash.Hash32
	b [1]byte
}

func (c *crcReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.h.Write(p[:n])
	return n, err
}

func (c *crcReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.b[0] = b
		c.h.Write(c.b[:])
	}
	return b, err
}

// Reindex copies the snapshot stream r to w with its index replaced by
// index, checking r as it goes; on a damaged r it returns an error wrapping
// ErrCorruptSnapshot after w may have received part of the stream.
func Reindex(r io.Reader, index uint64, w io.Writer) error {
	var sw *snapWriter
	err := ReadSnapshot(r, func(uint64) (err error) {
		sw, err = newSnapWriter(w, index)
		return err
	}, func(k, v []byte) error { return sw.pair(k, v) })
	if err != nil {
		return err
	}
	return sw.finish()
}

// SnapshotHeaderSize is the size of the header that begins a snapshot
// stream.
const SnapshotHeaderSize = 17

// SnapshotIndex returns the applied index recorded in hdr, the first
// SnapshotHeaderSize bytes of a snapshot stream. A header that is not one
// wraps ErrCorruptSnapshot.
func SnapshotIndex(hdr []byte) (uint64, error) {
	if len(hdr) < SnapshotHeaderSize || string(hdr[:8]) != snapMagic {
		return 0, corrupt("header", errors.New("bad magic"))
	}
	if hdr[8] != snapVersion {
		return 0, fmt.Errorf("%w: unsupported version %d", ErrCorruptSnapshot, hdr[8])
	}
	return binary.BigEndian.Uint64(hdr[9:]), nil
}
