package storage

import (
	"bytes"
	"encoding/binary"
	"os"
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
	// Frames of both formats: the old one with every plausible epoch, the
	// current one under salts an attacker might guess.
	data := forgedV1Frames()
	for _, salt := range [][tailSaltSize]byte{{}, {1}, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}} {
		for i := range 50 {
			data = appendTailFrame(data, salt, uint64(i+1), &raft.Log{Index: uint64(i + 1), Term: 1})
		}
	}
	hostile := &raft.Log{Index: 1, Term: 1, Type: raft.LogCommand, Data: data}
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

// TestLogTail_ReplayFollowsIndexesAndTerms: frames that carry the salt but
// do not continue the log (an index skipped or repeated, a term lower than
// the one before, a batch that does not begin at its own index) end the
// replay as a torn append does: 101(T+1), 102(T+1), 103(T) replays as
// 101..102.
func TestLogTail_ReplayFollowsIndexesAndTerms(t *testing.T) {
	for _, tc := range []struct {
		name string
		logs []raft.Log // Index, Term
		bat  []uint64   // the batch field of each frame
		want uint64     // the last index replayed (its term: 5)
	}{
		{"term decreases", []raft.Log{{Index: 101, Term: 5}, {Index: 102, Term: 5}, {Index: 103, Term: 4}}, []uint64{101, 101, 101}, 102},
		{"index repeats", []raft.Log{{Index: 101, Term: 5}, {Index: 102, Term: 5}, {Index: 102, Term: 6}}, []uint64{101, 101, 102}, 102},
		{"index skips", []raft.Log{{Index: 101, Term: 5}, {Index: 102, Term: 5}, {Index: 104, Term: 5}}, []uint64{101, 101, 104}, 102},
		{"batch elsewhere", []raft.Log{{Index: 101, Term: 5}, {Index: 102, Term: 5}, {Index: 103, Term: 5}}, []uint64{101, 101, 99}, 102},
		{"sound", []raft.Log{{Index: 101, Term: 5}, {Index: 102, Term: 5}, {Index: 103, Term: 6}}, []uint64{101, 101, 103}, 103},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := lsOpenTestStore(t, LogStoreOptions{})
			if err := s.StoreLogs(lsTestLogs(1, 100)); err != nil {
				t.Fatal(err)
			}
			if err := s.Checkpoint(); err != nil {
				t.Fatal(err)
			}
			path := crashCopy(t, s)
			b, err := os.ReadFile(path + ".tail")
			if err != nil {
				t.Fatal(err)
			}
			var salt [tailSaltSize]byte
			copy(salt[:], b[8:16])
			var frames []byte
			for i := range tc.logs {
				frames = appendTailFrame(frames, salt, tc.bat[i], &tc.logs[i])
			}
			copy(b[tailHeaderSize:], frames)
			if err := os.WriteFile(path+".tail", b, 0o600); err != nil {
				t.Fatal(err)
			}
			c := openAt(t, path)
			if last, err := c.LastIndex(); err != nil || last != tc.want {
				t.Fatalf("LastIndex = %d, %v; want %d", last, err, tc.want)
			}
			var l raft.Log
			if err := c.GetLog(tc.want, &l); err != nil || l.Term != tc.logs[tc.want-101].Term {
				t.Fatalf("GetLog(%d): term %d, %v; want %d", tc.want, l.Term, err, tc.logs[tc.want-101].Term)
			}
		})
	}
}

// appendTailFrameV1 appends a frame of the tail format before salts.
func appendTailFrameV1(dst []byte, epoch uint32, batch uint64, l *raft.Log) []byte {
	start := len(dst)
	dst = binary.BigEndian.AppendUint32(dst, 0)
	dst = binary.BigEndian.AppendUint32(dst, epoch)
	dst = binary.BigEndian.AppendUint64(dst, batch)
	dst = appendLog(dst, l)
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-tailFrameHeaderV1))
	return dst
}

// TestLogTail_OldFormatIsReplayed: a DataDir whose tail is in the format
// before salts opens with the tail's entries, and the tail starts over in
// the current format. Stale frames of an earlier epoch past the chain are
// ignored.
func TestLogTail_OldFormatIsReplayed(t *testing.T) {
	s := lsOpenTestStore(t, LogStoreOptions{})
	if err := s.StoreLogs(lsTestLogs(1, 10)); err != nil {
		t.Fatal(err)
	}
	if err := s.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	path := crashCopy(t, s)
	const epoch = 7
	b := make([]byte, tailSize)
	binary.BigEndian.PutUint32(b, tailMagicV1)
	binary.BigEndian.PutUint32(b[4:], epoch)
	var frames []byte
	for first := uint64(11); first <= 30; first += 5 {
		for i := first; i < first+5; i++ {
			frames = appendTailFrameV1(frames, epoch, first, lsTestLog(i))
		}
	}
	// A torn frame, then frames of epoch-1 and of this epoch, stale.
	frames = append(frames, make([]byte, 40)...)
	for i := uint64(50); i < 60; i++ {
		frames = appendTailFrameV1(frames, epoch-1, 50, lsTestLog(i))
		frames = appendTailFrameV1(frames, epoch, 50, lsTestLog(i))
	}
	copy(b[tailHeaderSizeV1:], frames)
	if err := os.WriteFile(path+".tail", b, 0o600); err != nil {
		t.Fatal(err)
	}
	c := openAt(t, path)
	assertRange(t, c, 1, 30)
	nb, err := os.ReadFile(path + ".tail")
	if err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint32(nb) != tailMagic || binary.BigEndian.Uint32(nb[4:]) != epoch+1 {
		t.Fatalf("tail header %x, want the current format at epoch %d", nb[:tailHeaderSize], epoch+1)
	}
	if bytes.Equal(nb[8:16], make([]byte, 8)) {
		t.Fatal("zero salt")
	}
	// It goes on in the current format.
	if err := c.StoreLogs(lsTestLogs(31, 40)); err != nil {
		t.Fatal(err)
	}
	assertRange(t, openAt(t, crashCopy(t, c)), 1, 40)
}
