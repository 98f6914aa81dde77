package storage

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

func TestReindex(t *testing.T) {
	m := NewMemory()
	err := m.Update(7, func(tx WriteTx) error {
		for i := 0; i < 100; i++ {
			if err := tx.Put([]byte(fmt.Sprintf("k%03d", i)), []byte(fmt.Sprint(i))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	snap, _ := m.Snapshot()
	var src bytes.Buffer
	if err := WriteSnapshot(&src, snap.AppliedIndex(), snap); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := Reindex(bytes.NewReader(src.Bytes()), 4242, &out); err != nil {
		t.Fatal(err)
	}
	if out.Len() != src.Len() {
		t.Fatalf("reindexed stream is %d bytes, source %d", out.Len(), src.Len())
	}
	n := NewMemory()
	if err := n.Restore(bytes.NewReader(out.Bytes())); err != nil {
		t.Fatal(err)
	}
	if n.AppliedIndex() != 4242 {
		t.Fatalf("index %d, want 4242", n.AppliedIndex())
	}
	var got int
	n.View(func(tx ReadTx) error {
		return tx.Scan(nil, func(k, v []byte) bool { got++; return true })
	})
	if got != 100 {
		t.Fatalf("%d pairs after reindex, want 100", got)
	}
	bad := bytes.Clone(src.Bytes())
	bad[len(bad)/2] ^= 1
	if err := Reindex(bytes.NewReader(bad), 1, &bytes.Buffer{}); !errors.Is(err, ErrCorruptSnapshot) {
		t.Fatalf("damaged source: %v, want ErrCorruptSnapshot", err)
	}
}
