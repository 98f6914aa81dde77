package storage

import (
	"encoding/binary"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"
)

// forgedV1Frames returns bytes shaped like frames of the tail format without
// salts: [length][epoch e][batch 1][record of index 0, term 1], for every
// epoch in 1..199, each record with a valid CRC-32C.
func forgedV1Frames() []byte {
	var b []byte
	for e := uint32(1); e < 200; e++ {
		start := len(b)
		b = binary.BigEndian.AppendUint32(b, 0)
		b = binary.BigEndian.AppendUint32(b, e)
		b = binary.BigEndian.AppendUint64(b, 1)
		b = appendLog(b, &raft.Log{Index: 0, Term: 1})
		binary.BigEndian.PutUint32(b[start:], uint32(len(b)-start-16))
	}
	return b
}

// TestLogTail_HostileValueIsNotAFrame: a client's value that holds bytes
// shaped like frames stays a value. It is written into the tail inside a
// raft entry; after Close the tail starts over, and the value's bytes stay
// in the file as stale bytes. Open must not take them for frames.
func TestLogTail_HostileValueIsNotAFrame(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	s, err := OpenLogStore(path, LogStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hostile := &raft.Log{Index: 1, Term: 1, Type: raft.LogCommand, Data: forgedV1Frames()}
	if err := s.StoreLogs([]*raft.Log{hostile}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		s, err = OpenLogStore(path, LogStoreOptions{})
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		var got raft.Log
		if err := s.GetLog(1, &got); err != nil {
			t.Fatal(err)
		}
		lsAssertLogEqual(t, hostile, &got)
		if last, _ := s.LastIndex(); last != 1 {
			t.Fatalf("LastIndex = %d, want 1", last)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
