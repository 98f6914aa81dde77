package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// The state file (path + ".state") holds hashicorp/raft's term and vote:
// the stable-store keys CurrentTerm, LastVoteTerm and LastVoteCand. Raft
// panics when it cannot store its term, so writing them must not need new
// space on the file system: the file is created at its full size and never
// grows, and a write rewrites one of its two slots in place (pwrite and
// fdatasync). The other keys stay in the bbolt file.
//
// Layout: two slots of stateSlotSize bytes, at offsets 0 and stateSlotSize.
// A slot is
//
//	magic     4 bytes  stateMagic, big-endian
//	sequence  8 bytes  big-endian, one more than the slot written before
//	3 times, in the order of stateKeys:
//	  set     1 byte   1 if the key has a value, else 0
//	  length  2 bytes  big-endian, then the value
//	zeros up to the last 4 bytes
//	CRC-32C   4 bytes  big-endian, over the rest of the slot
//
// Writes alternate between the slots, so a write torn by a crash damages
// only the slot it was writing; Open takes the valid slot with the higher
// sequence. Both slots damaged is reported as ErrCorrupt naming the file.
// When the file does not exist, Open creates it (through a temporary file
// renamed into place, its directory synced) with the values found in the
// bbolt file's conf bucket, where raft's keys were kept before; those
// copies are no longer read or written.
const (
	stateMagic    = 0x434b5653 // "CKVS"
	stateSlotSize = 4096
	stateFileSize = 2 * stateSlotSize
	stateCRCOff   = stateSlotSize - 4
)

// stateKeys are the stable-store keys kept in the state file, exactly as
// hashicorp/raft spells them.
var stateKeys = [...][]byte{[]byte("CurrentTerm"), []byte("LastVoteTerm"), []byte("LastVoteCand")}

// stateKeyIndex returns the index of key in stateKeys, or -1.
func stateKeyIndex(key []byte) int {
	for i, k := range stateKeys {
		if bytes.Equal(k, key) {
			return i
		}
	}
	return -1
}

// stateFile is the open state file. Safe for concurrent use.
type stateFile struct {
	mu     sync.Mutex
	f      *os.File
	path   string
	noSync bool
	seq    uint64 // sequence of the newest valid slot
	next   int    // the slot the next write goes to (never the newest valid one)
	vals   [len(stateKeys)][]byte
	set    [len(stateKeys)]bool
}

// encodeStateSlot encodes a slot; false if the values do not fit.
func encodeStateSlot(seq uint64, vals *[len(stateKeys)][]byte, set *[len(stateKeys)]bool) ([]byte, bool) {
	b := make([]byte, 0, stateSlotSize)
	b = binary.BigEndian.AppendUint32(b, stateMagic)
	b = binary.BigEndian.AppendUint64(b, seq)
	for i := range stateKeys {
		var flag byte
		if set[i] {
			flag = 1
		}
		if len(vals[i]) > 0xFFFF || len(b)+3+len(vals[i]) > stateCRCOff {
			return nil, false
		}
		b = append(b, flag)
		b = binary.BigEndian.AppendUint16(b, uint16(len(vals[i])))
		b = append(b, vals[i]...)
	}
	b = b[:stateSlotSize] // the rest of the capacity is zeros
	binary.BigEndian.PutUint32(b[stateCRCOff:], crc32.Checksum(b[:stateCRCOff], logCRCTable))
	return b, true
}

// decodeStateSlot decodes a slot; ok is false if it is damaged.
func decodeStateSlot(b []byte) (seq uint64, vals [len(stateKeys)][]byte, set [len(stateKeys)]bool, ok bool) {
	if len(b) != stateSlotSize || binary.BigEndian.Uint32(b) != stateMagic ||
		crc32.Checksum(b[:stateCRCOff], logCRCTable) != binary.BigEndian.Uint32(b[stateCRCOff:]) {
		return 0, vals, set, false
	}
	seq = binary.BigEndian.Uint64(b[4:])
	off := 12
	for i := range stateKeys {
		if off+3 > stateCRCOff {
			return 0, vals, set, false
		}
		set[i] = b[off] == 1
		n := int(binary.BigEndian.Uint16(b[off+1:]))
		off += 3
		if b[off-3] > 1 || off+n > stateCRCOff {
			return 0, vals, set, false
		}
		if set[i] {
			vals[i] = append([]byte{}, b[off:off+n]...)
		}
		off += n
	}
	return seq, vals, set, true
}

// openStateFile opens the state file of the log store whose bbolt file is
// db, creating it from the values db holds if it does not exist.
func openStateFile(path string, db *bolt.DB, noSync bool) (*stateFile, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		// Created once, from raft's values in the bbolt file (a log store
		// that kept them there); the bbolt copies are not updated after
		// that, so a state file that goes missing later must not be
		// made again from them: the term and vote would go back.
		if stateFileMade(db) {
			return nil, fmt.Errorf("%w: state file %s is missing: Raft's term and vote are lost with it (Rebuild this member)", ErrCorruptLog, path)
		}
		if err := createStateFile(path, db, noSync); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("storage: state file %s: %w", path, err)
	}
	if !stateFileMade(db) {
		if err := guard(path, "raft log", func() error {
			return db.Update(func(tx *bolt.Tx) error {
				return tx.Bucket(logStoreBucketConf).Put(keyStateFileMade, []byte{1})
			})
		}); err != nil {
			return nil, fmt.Errorf("storage: state file %s: %w", path, diskFull(err))
		}
	}
	f, err := fsOpen(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("storage: open state file %s: %w", path, err)
	}
	st := &stateFile{f: f, path: path, noSync: noSync}
	if err := st.load(); err != nil {
		f.Close()
		return nil, err
	}
	return st, nil
}

// keyStateFileMade, in the bbolt file's conf bucket, says that the state
// file was made: from then on it holds raft's term and vote.
var keyStateFileMade = []byte("cohort_state_file_made")

func stateFileMade(db *bolt.DB) bool {
	made := false
	_ = guard("", "raft log", func() error {
		return db.View(func(tx *bolt.Tx) error {
			made = tx.Bucket(logStoreBucketConf).Get(keyStateFileMade) != nil
			return nil
		})
	})
	return made
}

// load reads both slots and keeps the newest valid one.
func (st *stateFile) load() error {
	fi, err := st.f.Stat()
	if err != nil {
		return fmt.Errorf("storage: state file %s: %w", st.path, err)
	}
	buf := make([]byte, stateFileSize)
	if n := min(fi.Size(), stateFileSize); n > 0 {
		if _, err := fsReadAt(st.f, buf[:n], 0); err != nil {
			return fmt.Errorf("storage: read state file %s: %w", st.path, err)
		}
	}
	best := -1
	for i := range 2 {
		seq, vals, set, ok := decodeStateSlot(buf[i*stateSlotSize : (i+1)*stateSlotSize])
		if !ok || (best >= 0 && seq <= st.seq) {
			continue
		}
		best, st.seq, st.vals, st.set = i, seq, vals, set
	}
	if best < 0 {
		return fmt.Errorf("%w: state file %s: both slots are damaged", ErrCorrupt, st.path)
	}
	st.next = 1 - best
	return nil
}

// createStateFile writes a new state file holding the values of raft's
// keys in db's conf bucket.
func createStateFile(path string, db *bolt.DB, noSync bool) error {
	var (
		vals [len(stateKeys)][]byte
		set  [len(stateKeys)]bool
	)
	err := guard(path, "raft log", func() error {
		return db.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(logStoreBucketConf)
			for i, k := range stateKeys {
				if v := b.Get(k); v != nil {
					vals[i], set[i] = append([]byte{}, v...), true
				}
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("storage: create state file %s: %w", path, err)
	}
	buf := make([]byte, 0, stateFileSize)
	for seq := uint64(1); seq <= 2; seq++ {
		slot, ok := encodeStateSlot(seq, &vals, &set)
		if !ok {
			return fmt.Errorf("storage: create state file %s: raft's values are too long", path)
		}
		buf = append(buf, slot...)
	}
	tmp := path + ".tmp"
	_ = fsRemove(tmp)
	f, err := fsOpen(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("storage: create state file %s: %w", tmp, diskFull(err))
	}
	_, err = fsWriteAt(f, buf, 0)
	if err == nil && !noSync {
		err = fsSync(f, true)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fsRename(tmp, path)
	}
	if err == nil && !noSync {
		err = fsSyncDir(dirOf(path)) // OpenLogStore syncs it again at each open
	}
	if err != nil {
		_ = fsRemove(tmp)
		return fmt.Errorf("storage: create state file %s: %w", path, diskFull(err))
	}
	return nil
}

// get returns a copy of the value of the ith key.
func (st *stateFile) get(i int) ([]byte, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.set[i] {
		return nil, false
	}
	return append([]byte{}, st.vals[i]...), true
}

// put durably sets the ith key to val: one slot written in place and
// synced. On error the value is unchanged in memory (the slot written may
// or may not hold the new one; the other slot still holds the old one).
func (st *stateFile) put(i int, val []byte) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.f == nil {
		return ErrClosed
	}
	vals, set := st.vals, st.set
	vals[i], set[i] = append([]byte{}, val...), true
	slot, ok := encodeStateSlot(st.seq+1, &vals, &set)
	if !ok {
		return fmt.Errorf("storage: state file %s: value of %d bytes does not fit", st.path, len(val))
	}
	if _, err := fsWriteAt(st.f, slot, int64(st.next*stateSlotSize)); err != nil {
		return fmt.Errorf("storage: write state file %s: %w", st.path, diskFull(err))
	}
	if !st.noSync {
		if err := fsSync(st.f, false); err != nil {
			return fmt.Errorf("storage: sync state file %s: %w", st.path, diskFull(err))
		}
	}
	st.seq++
	st.next = 1 - st.next
	st.vals, st.set = vals, set
	return nil
}

func (st *stateFile) close() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.f == nil {
		return nil
	}
	err := st.f.Close()
	st.f = nil
	return err
}
