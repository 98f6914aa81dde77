package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

var (
	keyTerm     = []byte("CurrentTerm")
	keyVoteTerm = []byte("LastVoteTerm")
	keyVoteCand = []byte("LastVoteCand")
)

func mustGetUint64(t *testing.T, s *LogStore, key []byte) uint64 {
	t.Helper()
	v, err := s.GetUint64(key)
	if err != nil {
		t.Fatalf("GetUint64(%s): %v", key, err)
	}
	return v
}

// boltConf returns the value of key in the conf bucket of the bbolt file
// at path (the store must be closed).
func boltConf(t *testing.T, path string, key []byte) []byte {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v []byte
	_ = db.View(func(tx *bolt.Tx) error {
		if got := tx.Bucket(logStoreBucketConf).Get(key); got != nil {
			v = append([]byte{}, got...)
		}
		return nil
	})
	return v
}

// TestStateFile_RaftKeysLiveThere: raft's term and vote are kept in the
// state file, not in bbolt; other keys in bbolt. Both survive a reopen.
func TestStateFile_RaftKeysLiveThere(t *testing.T) {
	s := lsOpenTestStore(t, LogStoreOptions{})
	if _, err := s.GetUint64(keyTerm); !errors.Is(err, ErrStableKeyNotFound) {
		t.Fatalf("GetUint64 of an unset term: %v", err)
	}
	for term := uint64(1); term <= 5; term++ {
		if err := s.SetUint64(keyTerm, term); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetUint64(keyVoteTerm, 4); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(keyVoteCand, []byte("node-2")); err != nil {
		t.Fatal(err)
	}
	if err := s.Set([]byte("other"), []byte("x")); err != nil {
		t.Fatal(err)
	}
	s2 := lsReopenTestStore(t, s)
	if got := mustGetUint64(t, s2, keyTerm); got != 5 {
		t.Fatalf("CurrentTerm = %d, want 5", got)
	}
	if got := mustGetUint64(t, s2, keyVoteTerm); got != 4 {
		t.Fatalf("LastVoteTerm = %d, want 4", got)
	}
	if v, err := s2.Get(keyVoteCand); err != nil || string(v) != "node-2" {
		t.Fatalf("LastVoteCand = %q, %v", v, err)
	}
	if v, err := s2.Get([]byte("other")); err != nil || string(v) != "x" {
		t.Fatalf("other = %q, %v", v, err)
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if v := boltConf(t, s.Path(), keyTerm); v != nil {
		t.Fatalf("CurrentTerm in bbolt: %x", v)
	}
	if fi, err := os.Stat(s.Path() + ".state"); err != nil || fi.Size() != stateFileSize {
		t.Fatalf("state file: %v, %v", fi, err)
	}
}

// TestStateFile_MigratesFromBolt: a DataDir without a state file takes
// raft's values from the bbolt file's conf bucket.
func TestStateFile_MigratesFromBolt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(logStoreBucketConf)
		if err != nil {
			return err
		}
		if err := b.Put(keyTerm, binary.BigEndian.AppendUint64(nil, 42)); err != nil {
			return err
		}
		return b.Put(keyVoteCand, []byte("node-9"))
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	s := openAt(t, path)
	if got := mustGetUint64(t, s, keyTerm); got != 42 {
		t.Fatalf("CurrentTerm = %d, want 42", got)
	}
	if v, err := s.Get(keyVoteCand); err != nil || string(v) != "node-9" {
		t.Fatalf("LastVoteCand = %q, %v", v, err)
	}
	if _, err := s.GetUint64(keyVoteTerm); !errors.Is(err, ErrStableKeyNotFound) {
		t.Fatalf("LastVoteTerm: %v, want not found", err)
	}
	if err := s.SetUint64(keyTerm, 43); err != nil {
		t.Fatal(err)
	}
	if got := mustGetUint64(t, lsReopenTestStore(t, s), keyTerm); got != 43 {
		t.Fatalf("CurrentTerm after reopen = %d, want 43", got)
	}
}

// stateSlotWithTerm returns which slot of the state file holds term as
// CurrentTerm, or -1.
func stateSlotWithTerm(b []byte, term uint64) int {
	for i := range 2 {
		_, vals, set, ok := decodeStateSlot(b[i*stateSlotSize : (i+1)*stateSlotSize])
		if ok && set[0] && bytes.Equal(vals[0], binary.BigEndian.AppendUint64(nil, term)) {
			return i
		}
	}
	return -1
}

// TestStateFile_DamagedSlot: a torn or damaged slot loses to the other
// one; both damaged is ErrCorrupt naming the file.
func TestStateFile_DamagedSlot(t *testing.T) {
	setup := func(t *testing.T) (path string, b []byte) {
		s := lsOpenTestStore(t, LogStoreOptions{})
		for term := uint64(5); term <= 6; term++ {
			if err := s.SetUint64(keyTerm, term); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(s.Path() + ".state")
		if err != nil {
			t.Fatal(err)
		}
		if stateSlotWithTerm(b, 5) < 0 || stateSlotWithTerm(b, 6) < 0 {
			t.Fatal("the slots do not hold terms 5 and 6")
		}
		return s.Path(), b
	}
	write := func(t *testing.T, path string, b []byte) {
		if err := os.WriteFile(path+".state", b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("torn newest", func(t *testing.T) {
		path, b := setup(t)
		// A write of term 7 torn halfway over the slot of 6.
		i := stateSlotWithTerm(b, 6)
		var vals [len(stateKeys)][]byte
		set := [len(stateKeys)]bool{true}
		vals[0] = binary.BigEndian.AppendUint64(nil, 7)
		slot, _ := encodeStateSlot(99, &vals, &set)
		copy(b[i*stateSlotSize+stateSlotSize/2:], slot[stateSlotSize/2:])
		write(t, path, b)
		s := openAt(t, path)
		if got := mustGetUint64(t, s, keyTerm); got != 5 {
			t.Fatalf("CurrentTerm = %d, want 5", got)
		}
		// The next write goes to the damaged slot, not over term 5.
		if err := s.SetUint64(keyTerm, 8); err != nil {
			t.Fatal(err)
		}
		if got := mustGetUint64(t, lsReopenTestStore(t, s), keyTerm); got != 8 {
			t.Fatalf("CurrentTerm = %d, want 8", got)
		}
	})
	t.Run("damaged older", func(t *testing.T) {
		path, b := setup(t)
		b[stateSlotWithTerm(b, 5)*stateSlotSize+100] ^= 1
		write(t, path, b)
		if got := mustGetUint64(t, openAt(t, path), keyTerm); got != 6 {
			t.Fatalf("CurrentTerm = %d, want 6", got)
		}
	})
	t.Run("both damaged", func(t *testing.T) {
		path, b := setup(t)
		b[3] ^= 1
		b[stateSlotSize+stateSlotSize-1] ^= 1
		write(t, path, b)
		_, err := OpenLogStore(path, LogStoreOptions{})
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path+".state") {
			t.Fatalf("OpenLogStore: %v, want ErrCorrupt naming %s.state", err, path)
		}
	})
}

// A state file that goes missing after it was made is not made again from
// the stale copies of the term and vote in the bbolt file: the member
// could vote twice in a term.
func TestStateFile_MissingAfterMadeIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	s, err := OpenLogStore(path, LogStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path + ".state"); err != nil {
		t.Fatal(err)
	}
	if s, err := OpenLogStore(path, LogStoreOptions{}); !errors.Is(err, ErrCorrupt) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("OpenLogStore without its state file: %v, want ErrCorrupt", err)
	}
}
