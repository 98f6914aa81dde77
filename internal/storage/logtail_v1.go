package storage

import (
	"encoding/binary"

	"github.com/hashicorp/raft"
)

// The tail format before salts, which a DataDir may still hold: replayed
// once at open, then the tail starts over in the current format.
//
//	header: tailMagicV1 (4 bytes), epoch (4 bytes), both big-endian
//	frame:  record length (4 bytes), epoch (4 bytes), the first index of
//	        the frame's batch (8 bytes), the record
//
// Nothing tells its frames from stale bytes of an earlier epoch that
// happen to hold the same epoch number (a raft entry's data can hold
// anything), so the replay follows the chain from the header with the
// same checks as the current format and treats whatever ends it as a torn
// append, without looking further for damage.
const (
	tailMagicV1       = 0x434b5654 // "CKVT"
	tailHeaderSizeV1  = 8
	tailFrameHeaderV1 = 16
)

// scanTailV1 returns the records of the chain of frames of a tail in the
// format before salts, and their indexes; it sets s.epoch from the header.
func (s *LogStore) scanTailV1(buf []byte) (recs [][]byte, idxs []uint64) {
	if len(buf) < tailHeaderSizeV1 {
		return nil, nil
	}
	epoch := binary.BigEndian.Uint32(buf[4:])
	s.epoch = epoch
	var (
		l                          raft.Log
		lastIndex, lastTerm, batch uint64
	)
	for off := tailHeaderSizeV1; ; {
		rec, b, next, ok := tailFrameAtV1(buf, off, epoch, &l)
		if !ok || !chainNext(len(recs) == 0, lastIndex, lastTerm, batch, &l, b) {
			return recs, idxs
		}
		recs, idxs = append(recs, rec), append(idxs, l.Index)
		lastIndex, lastTerm, batch = l.Index, l.Term, b
		off = next
	}
}

// tailFrameAtV1 decodes the frame at off of a tail in the format before
// salts: its record (aliasing buf), the first index of its batch, the
// offset after it, and whether it is a valid frame of epoch.
func tailFrameAtV1(buf []byte, off int, epoch uint32, l *raft.Log) (rec []byte, batch uint64, next int, ok bool) {
	if off+tailFrameHeaderV1 > len(buf) {
		return nil, 0, 0, false
	}
	n := int(binary.BigEndian.Uint32(buf[off:]))
	if binary.BigEndian.Uint32(buf[off+4:]) != epoch || n < minLogRecordSize || n > len(buf)-off-tailFrameHeaderV1 {
		return nil, 0, 0, false
	}
	batch = binary.BigEndian.Uint64(buf[off+8:])
	rec = buf[off+tailFrameHeaderV1 : off+tailFrameHeaderV1+n]
	if err := unmarshalLog(rec, l); err != nil {
		return nil, 0, 0, false
	}
	return rec, batch, off + tailFrameHeaderV1 + n, true
}
