package storage

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// stream returns a snapshot stream of pairs.
func testStream(t *testing.T, pairs map[string]string) []byte {
	t.Helper()
	m := NewMemory()
	defer m.Close()
	err := m.Update(1, func(tx WriteTx) error {
		for k, v := range pairs {
			if err := tx.Put([]byte(k), []byte(v)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	snap, _ := m.Snapshot()
	defer snap.Release()
	var b bytes.Buffer
	if err := WriteSnapshot(&b, 1, snap); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func viewKey(e Engine, key string) (string, error) {
	var out string
	err := e.View(func(tx ReadTx) error {
		v, _ := tx.Get([]byte(key))
		out = string(v)
		return nil
	})
	return out, err
}

// Staged data is invisible until Install, which records the index it is
// given; a newer Stage makes the older one's Install fail.
func TestEngine_StageInstall(t *testing.T) {
	for _, tc := range []struct {
		name string
		open func(t *testing.T) Engine
	}{
		{"memory", func(t *testing.T) Engine { return NewMemory() }},
		{"bolt", func(t *testing.T) Engine {
			e, err := OpenBolt(filepath.Join(t.TempDir(), "data.db"), BoltOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return e
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := tc.open(t)
			defer e.Close()
			if err := e.Update(5, func(tx WriteTx) error { return tx.Put([]byte("k"), []byte("old")) }); err != nil {
				t.Fatal(err)
			}
			first, err := e.Stage(bytes.NewReader(testStream(t, map[string]string{"k": "first"})))
			if err != nil {
				t.Fatal(err)
			}
			st, err := e.Stage(bytes.NewReader(testStream(t, map[string]string{"k": "new"})))
			if err != nil {
				t.Fatal(err)
			}
			if v, err := viewKey(e, "k"); err != nil || v != "old" || e.AppliedIndex() != 5 {
				t.Fatalf("staged data visible before Install: %q, %v, index %d", v, err, e.AppliedIndex())
			}
			if err := first.Install(7); err == nil {
				t.Fatal("Install of a replaced staged restore succeeded")
			}
			if err := st.Install(9); err != nil {
				t.Fatal(err)
			}
			if v, err := viewKey(e, "k"); err != nil || v != "new" || e.AppliedIndex() != 9 {
				t.Fatalf("after Install: %q, %v, index %d", v, err, e.AppliedIndex())
			}
			if err := st.Install(10); err == nil {
				t.Fatal("a second Install succeeded")
			}
		})
	}
}

// When the new file cannot be opened after it was renamed over the data
// file, the engine does not go on with the old, unlinked file: every call
// returns the error, and a reopen finds the new file.
func TestBolt_InstallFailureAfterRenameRefusesUse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.db")
	e, err := OpenBolt(path, BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.Update(5, func(tx WriteTx) error { return tx.Put([]byte("k"), []byte("old")) }); err != nil {
		t.Fatal(err)
	}
	st, err := e.Stage(bytes.NewReader(testStream(t, map[string]string{"k": "new"})))
	if err != nil {
		t.Fatal(err)
	}
	// A shared lock on the renamed file: the engine's open (exclusive)
	// times out.
	var holder *bolt.DB
	afterRename = func(p string) {
		holder, err = bolt.Open(p, 0o600, &bolt.Options{ReadOnly: true})
		if err != nil {
			t.Errorf("hold the new file: %v", err)
		}
	}
	defer func() { afterRename = nil }()
	ierr := st.Install(9)
	if ierr == nil || errors.Is(ierr, ErrClosed) {
		t.Fatalf("Install: %v, want the open error", ierr)
	}
	t.Logf("Install: %v", ierr)
	if _, err := viewKey(e, "k"); err == nil {
		t.Fatal("View works on the engine whose file was replaced")
	}
	if _, _, err := e.Lookup("k", nil); err == nil {
		t.Fatal("Lookup works on the engine whose file was replaced")
	}
	if err := e.Update(10, func(tx WriteTx) error { return tx.Put([]byte("k"), []byte("x")) }); err == nil {
		t.Fatal("Update works on the engine whose file was replaced")
	}
	if s, err := e.Snapshot(); err == nil {
		s.Release()
		t.Fatal("Snapshot works on the engine whose file was replaced")
	}
	if holder != nil {
		holder.Close()
	}
	if err := e.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	r, err := OpenBolt(path, BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if v, err := viewKey(r, "k"); err != nil || v != "new" || r.AppliedIndex() != 9 {
		t.Fatalf("reopened: %q, %v, index %d", v, err, r.AppliedIndex())
	}
}
