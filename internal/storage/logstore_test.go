package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"math/rand"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// lsOpenTestStore opens a LogStore in a fresh temp dir and closes it at the
// end of the test.
func lsOpenTestStore(t testing.TB, opts LogStoreOptions) *LogStore {
	t.Helper()
	s, err := OpenLogStore(filepath.Join(t.TempDir(), "raft.db"), opts)
	if err != nil {
		t.Fatalf("OpenLogStore: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func lsReopenTestStore(t *testing.T, s *LogStore) *LogStore {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s2, err := OpenLogStore(s.Path(), LogStoreOptions{})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	t.Cleanup(func() { _ = s2.Close() })
	return s2
}

func lsTestLog(index uint64) *raft.Log {
	return &raft.Log{
		Index:      index,
		Term:       index/10 + 1,
		Type:       raft.LogCommand,
		Data:       []byte(fmt.Sprintf("data-%d", index)),
		AppendedAt: time.Unix(1700000000, int64(index)),
	}
}

func lsTestLogs(first, last uint64) []*raft.Log {
	var logs []*raft.Log
	for i := first; i <= last; i++ {
		logs = append(logs, lsTestLog(i))
	}
	return logs
}

func lsAssertLogEqual(t *testing.T, want, got *raft.Log) {
	t.Helper()
	if got.Index != want.Index || got.Term != want.Term || got.Type != want.Type {
		t.Errorf("header: got (idx %d, term %d, type %v), want (idx %d, term %d, type %v)",
			got.Index, got.Term, got.Type, want.Index, want.Term, want.Type)
	}
	if !bytes.Equal(got.Data, want.Data) {
		t.Errorf("Data: got %q, want %q", got.Data, want.Data)
	}
	if !bytes.Equal(got.Extensions, want.Extensions) {
		t.Errorf("Extensions: got %q, want %q", got.Extensions, want.Extensions)
	}
	if got.AppendedAt.IsZero() != want.AppendedAt.IsZero() || !got.AppendedAt.Equal(want.AppendedAt) {
		t.Errorf("AppendedAt: got %v, want %v", got.AppendedAt, want.AppendedAt)
	}
}

func TestLogStoreRoundTrip(t *testing.T) {
	big := bytes.Repeat([]byte{0xAB}, 70000)
	tests := []struct {
		name string
		log  raft.Log
	}{
		{"empty", raft.Log{Index: 1}},
		{"all fields", raft.Log{
			Index: 2, Term: 7, Type: raft.LogConfiguration,
			Data: []byte("hello"), Extensions: []byte{0, 1, 2, 0xff},
			AppendedAt: time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC),
		}},
		{"extensions only", raft.Log{Index: 3, Term: 1, Type: raft.LogNoop, Extensions: []byte("ext")}},
		{"zero time stays zero", raft.Log{Index: 4, Term: 1, Data: []byte("x")}},
		{"unix epoch is not zero", raft.Log{Index: 5, Term: 1, AppendedAt: time.Unix(0, 0)}},
		{"pre-epoch time", raft.Log{Index: 6, Term: 1, AppendedAt: time.Unix(-1000, 5)}},
		{"monotonic clock reading", raft.Log{Index: 7, Term: 2, AppendedAt: time.Now()}},
		{"max values", raft.Log{Index: math.MaxUint64, Term: math.MaxUint64, Type: raft.LogType(255), Data: big}},
		{"large data", raft.Log{Index: 1 << 40, Term: 1 << 33, Type: raft.LogBarrier, Data: big, Extensions: big[:300]}},
	}
	s := lsOpenTestStore(t, LogStoreOptions{NoSync: true})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.log
			if err := s.StoreLog(&in); err != nil {
				t.Fatalf("StoreLog: %v", err)
			}
			// Pre-fill out with junk to check every field is overwritten.
			out := raft.Log{Index: 99, Term: 99, Type: raft.LogBarrier, Data: []byte("junk"),
				Extensions: []byte("junk"), AppendedAt: time.Now()}
			if err := s.GetLog(in.Index, &out); err != nil {
				t.Fatalf("GetLog: %v", err)
			}
			lsAssertLogEqual(t, &in, &out)
			if len(in.Data) == 0 && out.Data != nil {
				t.Errorf("empty Data decoded as %#v, want nil", out.Data)
			}
			// Appending to the decoded Data must not clobber Extensions.
			if len(out.Data) > 0 && len(out.Extensions) > 0 {
				ext := append([]byte(nil), out.Extensions...)
				_ = append(out.Data, 'Z')
				if !bytes.Equal(out.Extensions, ext) {
					t.Errorf("append to Data clobbered Extensions")
				}
			}
		})
	}
}

func TestLogStoreEncodedSizeExact(t *testing.T) {
	for _, l := range []*raft.Log{
		{},
		{Index: 1 << 63, Term: 300, Data: make([]byte, 200), Extensions: make([]byte, 20000), AppendedAt: time.Now()},
		lsTestLog(12345),
	} {
		if got, want := len(appendLog(nil, l)), encodedLogSize(l); got != want {
			t.Errorf("encodedLogSize = %d, encoded length = %d", want, got)
		}
	}
}

func TestLogStoreIndexes(t *testing.T) {
	tests := []struct {
		name        string
		store       [][2]uint64 // ranges to StoreLogs
		del         [][2]uint64 // ranges to DeleteRange
		first, last uint64
		present     []uint64
		absent      []uint64
	}{
		{name: "empty", first: 0, last: 0, absent: []uint64{0, 1}},
		{name: "one", store: [][2]uint64{{1, 1}}, first: 1, last: 1, present: []uint64{1}, absent: []uint64{0, 2}},
		{name: "append", store: [][2]uint64{{1, 10}, {11, 20}}, first: 1, last: 20, present: []uint64{1, 10, 11, 20}},
		{name: "delete prefix", store: [][2]uint64{{1, 20}}, del: [][2]uint64{{1, 5}}, first: 6, last: 20,
			present: []uint64{6, 20}, absent: []uint64{1, 5}},
		{name: "delete suffix", store: [][2]uint64{{1, 20}}, del: [][2]uint64{{15, 20}}, first: 1, last: 14,
			present: []uint64{14}, absent: []uint64{15, 20}},
		{name: "delete middle", store: [][2]uint64{{1, 20}}, del: [][2]uint64{{5, 9}}, first: 1, last: 20,
			present: []uint64{4, 10}, absent: []uint64{5, 7, 9}},
		{name: "delete all", store: [][2]uint64{{1, 20}}, del: [][2]uint64{{1, 20}}, first: 0, last: 0,
			absent: []uint64{1, 20}},
		{name: "delete beyond both ends", store: [][2]uint64{{10, 20}}, del: [][2]uint64{{0, math.MaxUint64}},
			first: 0, last: 0, absent: []uint64{10}},
		{name: "delete empty range", store: [][2]uint64{{1, 3}}, del: [][2]uint64{{3, 2}, {100, 200}},
			first: 1, last: 3, present: []uint64{1, 2, 3}},
		{name: "gap", store: [][2]uint64{{1, 3}, {10, 12}}, first: 1, last: 12,
			present: []uint64{3, 10}, absent: []uint64{4, 9}},
		{name: "delete spanning gap", store: [][2]uint64{{1, 3}, {10, 12}}, del: [][2]uint64{{2, 11}},
			first: 1, last: 12, present: []uint64{1, 12}, absent: []uint64{2, 3, 10, 11}},
		{name: "many deletes (cursor re-seek)", store: [][2]uint64{{1, 5000}}, del: [][2]uint64{{2, 4999}},
			first: 1, last: 5000, present: []uint64{1, 5000}, absent: []uint64{2, 1000, 2500, 4999}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := lsOpenTestStore(t, LogStoreOptions{NoSync: true})
			for _, r := range tc.store {
				if err := s.StoreLogs(lsTestLogs(r[0], r[1])); err != nil {
					t.Fatalf("StoreLogs: %v", err)
				}
			}
			for _, r := range tc.del {
				if err := s.DeleteRange(r[0], r[1]); err != nil {
					t.Fatalf("DeleteRange: %v", err)
				}
			}
			check := func(s *LogStore) {
				t.Helper()
				if got, err := s.FirstIndex(); err != nil || got != tc.first {
					t.Errorf("FirstIndex = %d, %v; want %d", got, err, tc.first)
				}
				if got, err := s.LastIndex(); err != nil || got != tc.last {
					t.Errorf("LastIndex = %d, %v; want %d", got, err, tc.last)
				}
				for _, i := range tc.present {
					var l raft.Log
					if err := s.GetLog(i, &l); err != nil {
						t.Errorf("GetLog(%d): %v", i, err)
						continue
					}
					lsAssertLogEqual(t, lsTestLog(i), &l)
				}
				for _, i := range tc.absent {
					var l raft.Log
					if err := s.GetLog(i, &l); err != raft.ErrLogNotFound {
						t.Errorf("GetLog(%d) = %v, want raft.ErrLogNotFound (==)", i, err)
					}
				}
			}
			check(s)
			check(lsReopenTestStore(t, s))
		})
	}
}

func TestLogStoreDeleteRangeCount(t *testing.T) {
	s := lsOpenTestStore(t, LogStoreOptions{NoSync: true})
	if err := s.StoreLogs(lsTestLogs(1, 3000)); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(100, 2899); err != nil {
		t.Fatal(err)
	}
	var n int
	err := s.db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(logStoreBucketLogs).Stats().KeyN
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := 3000 - 2800; n != want {
		t.Fatalf("%d logs left, want %d", n, want)
	}
}

func TestLogStoreOverwrite(t *testing.T) {
	s := lsOpenTestStore(t, LogStoreOptions{NoSync: true})
	if err := s.StoreLogs(lsTestLogs(1, 5)); err != nil {
		t.Fatal(err)
	}
	// A new leader overwrites a conflicting suffix.
	repl := &raft.Log{Index: 3, Term: 42, Data: []byte("new")}
	if err := s.StoreLog(repl); err != nil {
		t.Fatal(err)
	}
	var got raft.Log
	if err := s.GetLog(3, &got); err != nil {
		t.Fatal(err)
	}
	lsAssertLogEqual(t, repl, &got)
}

func TestLogStoreStable(t *testing.T) {
	s := lsOpenTestStore(t, LogStoreOptions{NoSync: true})

	// Missing keys: raft checks err.Error() == "not found" exactly.
	if v, err := s.Get([]byte("missing")); err == nil || err.Error() != "not found" || v != nil {
		t.Fatalf("Get(missing) = %q, %v; want nil, \"not found\"", v, err)
	}
	if !errors.Is(func() error { _, err := s.Get([]byte("missing")); return err }(), ErrStableKeyNotFound) {
		t.Fatalf("Get(missing) is not ErrStableKeyNotFound")
	}
	if v, err := s.GetUint64([]byte("missing")); err == nil || err.Error() != "not found" || v != 0 {
		t.Fatalf("GetUint64(missing) = %d, %v; want 0, \"not found\"", v, err)
	}

	tests := []struct {
		key []byte
		val []byte
	}{
		{[]byte("LastVoteCand"), []byte("node-1")},
		{[]byte("empty"), []byte{}},
		{[]byte("binary"), []byte{0, 0xff, 0, 1}},
		{[]byte("big"), bytes.Repeat([]byte("v"), 100000)},
	}
	for _, tc := range tests {
		if err := s.Set(tc.key, tc.val); err != nil {
			t.Fatalf("Set(%q): %v", tc.key, err)
		}
	}
	u64 := map[string]uint64{"CurrentTerm": 7, "LastVoteTerm": 0, "max": math.MaxUint64}
	for k, v := range u64 {
		if err := s.SetUint64([]byte(k), v); err != nil {
			t.Fatalf("SetUint64(%q): %v", k, err)
		}
	}
	if err := s.Set(nil, []byte("x")); err == nil || !strings.HasPrefix(err.Error(), "storage: ") {
		t.Errorf("Set(empty key) = %v, want storage: error", err)
	}

	check := func(s *LogStore) {
		t.Helper()
		for _, tc := range tests {
			got, err := s.Get(tc.key)
			if err != nil || !bytes.Equal(got, tc.val) {
				t.Errorf("Get(%q) = %.20q, %v; want %.20q", tc.key, got, err, tc.val)
			}
		}
		for k, want := range u64 {
			if got, err := s.GetUint64([]byte(k)); err != nil || got != want {
				t.Errorf("GetUint64(%q) = %d, %v; want %d", k, got, err, want)
			}
		}
		if _, err := s.GetUint64([]byte("LastVoteCand")); err == nil || err.Error() == "not found" {
			t.Errorf("GetUint64 of a 6-byte value = %v, want a length error", err)
		}
	}
	check(s)
	s = lsReopenTestStore(t, s)
	check(s)

	// Returned values must not alias the mmap: mutate and re-read.
	v, err := s.Get([]byte("LastVoteCand"))
	if err != nil {
		t.Fatal(err)
	}
	v[0] = 'X'
	if v2, _ := s.Get([]byte("LastVoteCand")); string(v2) != "node-1" {
		t.Fatalf("value changed to %q after mutating a returned copy", v2)
	}
}

func TestLogStoreCloseAndLocking(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	s, err := OpenLogStore(path, LogStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Path() != path {
		t.Errorf("Path() = %q, want %q", s.Path(), path)
	}

	start := time.Now()
	s2, err := OpenLogStore(path, LogStoreOptions{})
	if err == nil {
		_ = s2.Close()
		t.Fatal("second OpenLogStore of a held file succeeded")
	}
	if !errors.Is(err, bolt.ErrTimeout) || !strings.HasPrefix(err.Error(), "storage: ") {
		t.Errorf("second open error = %v, want storage: ... wrapping bolt.ErrTimeout", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("second open took %v", d)
	}

	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.LastIndex(); err == nil {
		t.Error("LastIndex after Close succeeded")
	}
	if err := s.StoreLog(lsTestLog(1)); err == nil {
		t.Error("StoreLog after Close succeeded")
	}
}

// lsCorruptLogValue rewrites the stored value of index in the closed store file.
func lsCorruptLogValue(t *testing.T, path string, index uint64, mutate func(v []byte) []byte) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var key [8]byte
	binary.BigEndian.PutUint64(key[:], index)
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("logs"))
		v := b.Get(key[:])
		if v == nil {
			return fmt.Errorf("log %d not in file", index)
		}
		return b.Put(key[:], mutate(append([]byte(nil), v...)))
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestLogStoreCorruption(t *testing.T) {
	flip := func(pos func(n int) int) func([]byte) []byte {
		return func(v []byte) []byte { v[pos(len(v))] ^= 0x40; return v }
	}
	tests := []struct {
		name   string
		mutate func([]byte) []byte
	}{
		{"flip version byte", flip(func(int) int { return 0 })},
		{"flip byte in data", flip(func(n int) int { return n / 2 })},
		{"flip last crc byte", flip(func(n int) int { return n - 1 })},
		{"truncated", func(v []byte) []byte { return v[:len(v)-3] }},
		{"too short", func(v []byte) []byte { return v[:2] }},
		{"trailing garbage", func(v []byte) []byte { return append(v, 1, 2, 3) }},
		{"record of another index", func([]byte) []byte { return appendLog(nil, lsTestLog(6)) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "raft.db")
			s, err := OpenLogStore(path, LogStoreOptions{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.StoreLogs(lsTestLogs(1, 10)); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			lsCorruptLogValue(t, path, 5, tc.mutate)

			s, err = OpenLogStore(path, LogStoreOptions{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var l raft.Log
			err = s.GetLog(5, &l)
			if !errors.Is(err, ErrCorruptLog) {
				t.Fatalf("GetLog(5) = %v, want ErrCorruptLog", err)
			}
			if !strings.Contains(err.Error(), "index 5") || !strings.HasPrefix(err.Error(), "storage: ") {
				t.Errorf("error %q should start with storage: and name index 5", err)
			}
			t.Logf("error: %v", err)
			// Neighbours are unaffected.
			for _, i := range []uint64{4, 6} {
				if err := s.GetLog(i, &l); err != nil {
					t.Errorf("GetLog(%d): %v", i, err)
				}
			}
		})
	}
}

func TestDecodeLogNeverPanics(t *testing.T) {
	valid := appendLog(nil, &raft.Log{Index: 9, Term: 3, Data: []byte("abc"), Extensions: []byte("e"), AppendedAt: time.Now()})
	// withCRC seals a body with a valid checksum so parsing past the CRC
	// check is exercised.
	withCRC := func(body ...byte) []byte {
		return binary.BigEndian.AppendUint32(body, crc32.Checksum(body, logCRCTable))
	}
	tests := []struct {
		name string
		in   []byte
	}{
		{"nil", nil},
		{"one byte", []byte{1}},
		{"all 0xff", bytes.Repeat([]byte{0xff}, 64)},
		{"valid minus one", valid[:len(valid)-1]},
		{"valid minus crc", valid[:len(valid)-4]},
		{"bad version", withCRC(2, 9, 1, 0, 0, 0, 0)},
		{"varint overflow", withCRC(1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 1, 0, 0, 0, 0)},
		{"truncated varint", withCRC(1, 9, 0x80, 0x80, 0x80, 0x80)},
		{"huge data length", withCRC(1, 9, 1, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0)},
		{"data length past end", withCRC(1, 9, 1, 0, 0, 5, 'a', 'b', 0)},
		{"missing appended_at", withCRC(1, 9, 1, 0, 1, 0, 0, 1, 2, 3)},
		{"unknown flag", withCRC(1, 9, 1, 0, 0x80, 0, 0)},
		{"trailing byte", withCRC(1, 9, 1, 0, 0, 0, 0, 7)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var l raft.Log
			err := decodeLog(9, tc.in, &l)
			if !errors.Is(err, ErrCorruptLog) || !strings.Contains(err.Error(), "index 9") {
				t.Fatalf("decodeLog = %v, want ErrCorruptLog naming index 9", err)
			}
		})
	}
	// Random bytes and every prefix of a valid record.
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 2000; i++ {
		b := make([]byte, r.Intn(64))
		r.Read(b)
		var l raft.Log
		_ = decodeLog(1, b, &l)
		_ = decodeLog(1, withCRC(b...), &l)
	}
	for i := range valid {
		var l raft.Log
		if err := decodeLog(9, valid[:i], &l); err == nil {
			t.Errorf("prefix of %d bytes decoded without error", i)
		}
	}
	var l raft.Log
	if err := decodeLog(9, valid, &l); err != nil {
		t.Fatalf("valid record: %v", err)
	}
}

func FuzzDecodeLog(f *testing.F) {
	f.Add([]byte{})
	f.Add(appendLog(nil, &raft.Log{}))
	f.Add(appendLog(nil, lsTestLog(300)))
	f.Add(appendLog(nil, &raft.Log{Index: 1, Term: 2, Type: raft.LogConfiguration, Extensions: []byte("x"), AppendedAt: time.Now()}))
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		var l raft.Log
		_ = unmarshalLog(b, &l)
		// Seal the input with a valid CRC so the fuzzer reaches the parser,
		// both as-is and with the CRC stripped first.
		for _, body := range [][]byte{b, b[:max(0, len(b)-logCRCSize)]} {
			rec := binary.BigEndian.AppendUint32(append([]byte(nil), body...), crc32.Checksum(body, logCRCTable))
			var got raft.Log
			if err := unmarshalLog(rec, &got); err != nil {
				continue
			}
			// Anything that decodes must survive a re-encode round trip.
			var again raft.Log
			if err := unmarshalLog(appendLog(nil, &got), &again); err != nil {
				t.Fatalf("re-encoded record does not decode: %v", err)
			}
			if again.Index != got.Index || again.Term != got.Term || again.Type != got.Type ||
				!bytes.Equal(again.Data, got.Data) || !bytes.Equal(again.Extensions, got.Extensions) ||
				!again.AppendedAt.Equal(got.AppendedAt) || again.AppendedAt.IsZero() != got.AppendedAt.IsZero() {
				t.Fatalf("round trip mismatch: %+v vs %+v", got, again)
			}
			if err := decodeLog(got.Index, rec, &again); err != nil {
				t.Fatalf("decodeLog: %v", err)
			}
		}
	})
}

func TestLogStoreConcurrent(t *testing.T) {
	s := lsOpenTestStore(t, LogStoreOptions{NoSync: true})
	const writers, batches, batch = 4, 20, 16
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for b := 0; b < batches; b++ {
				first := uint64(w*batches*batch + b*batch + 1)
				if err := s.StoreLogs(lsTestLogs(first, first+batch-1)); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	var stop atomic.Bool
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				last, err := s.LastIndex()
				if err != nil {
					t.Error(err)
					return
				}
				var l raft.Log
				if err := s.GetLog(last, &l); err != nil && err != raft.ErrLogNotFound {
					t.Error(err)
					return
				}
				if err := s.SetUint64([]byte("CurrentTerm"), last); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	time.Sleep(10 * time.Millisecond)
	go func() { time.Sleep(200 * time.Millisecond); stop.Store(true) }()
	wg.Wait()
	for i := uint64(1); i <= writers*batches*batch; i++ {
		var l raft.Log
		if err := s.GetLog(i, &l); err != nil {
			t.Fatalf("GetLog(%d): %v", i, err)
		}
		lsAssertLogEqual(t, lsTestLog(i), &l)
	}
}

// lsCountingFSM counts applied commands.
type lsCountingFSM struct {
	mu   sync.Mutex
	n    int
	last []byte
}

func (f *lsCountingFSM) Apply(l *raft.Log) interface{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	f.last = append(f.last[:0], l.Data...)
	return f.n
}

func (f *lsCountingFSM) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

func (f *lsCountingFSM) Snapshot() (raft.FSMSnapshot, error) { return lsNopSnapshot{}, nil }
func (f *lsCountingFSM) Restore(rc io.ReadCloser) error      { return rc.Close() }

type lsNopSnapshot struct{}

func (lsNopSnapshot) Persist(sink raft.SnapshotSink) error { return sink.Close() }
func (lsNopSnapshot) Release()                             {}

func lsStartRaft(t *testing.T, store *LogStore, fsm raft.FSM, snaps raft.SnapshotStore) *raft.Raft {
	t.Helper()
	conf := raft.DefaultConfig()
	conf.LocalID = "node1"
	conf.HeartbeatTimeout = 50 * time.Millisecond
	conf.ElectionTimeout = 50 * time.Millisecond
	conf.LeaderLeaseTimeout = 50 * time.Millisecond
	conf.CommitTimeout = 5 * time.Millisecond
	conf.LogOutput = io.Discard
	conf.LogLevel = "ERROR"
	_, trans := raft.NewInmemTransport("node1")
	r, err := raft.NewRaft(conf, fsm, store, store, snaps, trans)
	if err != nil {
		t.Fatalf("NewRaft: %v", err)
	}
	return r
}

func lsWaitLeader(t *testing.T, r *raft.Raft) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for r.State() != raft.Leader {
		if time.Now().After(deadline) {
			t.Fatalf("no leader after 10s (state %v)", r.State())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestLogStoreRaftSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("raft smoke test")
	}
	path := filepath.Join(t.TempDir(), "raft.db")
	store, err := OpenLogStore(path, LogStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	snaps := raft.NewInmemSnapshotStore()
	fsm := &lsCountingFSM{}
	r := lsStartRaft(t, store, fsm, snaps)
	err = r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{
		{ID: "node1", Address: "node1"},
	}}).Error()
	if err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	lsWaitLeader(t, r)
	const n = 100
	for i := 0; i < n; i++ {
		if err := r.Apply([]byte(fmt.Sprintf("cmd-%d", i)), 5*time.Second).Error(); err != nil {
			t.Fatalf("Apply %d: %v", i, err)
		}
	}
	if got := fsm.count(); got != n {
		t.Fatalf("fsm applied %d, want %d", got, n)
	}
	if err := r.Shutdown().Error(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}

	store, err = OpenLogStore(path, LogStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	last, err := store.LastIndex()
	if err != nil || last < n {
		t.Fatalf("LastIndex after reopen = %d, %v; want >= %d", last, err, n)
	}
	term, err := store.GetUint64([]byte("CurrentTerm"))
	if err != nil || term == 0 {
		t.Fatalf("CurrentTerm = %d, %v", term, err)
	}
	var cmds int
	for i := uint64(1); i <= last; i++ {
		var l raft.Log
		if err := store.GetLog(i, &l); err != nil {
			t.Fatalf("GetLog(%d): %v", i, err)
		}
		if l.Type == raft.LogCommand {
			if want := fmt.Sprintf("cmd-%d", cmds); string(l.Data) != want {
				t.Fatalf("log %d data %q, want %q", i, l.Data, want)
			}
			if l.AppendedAt.IsZero() {
				t.Errorf("log %d has zero AppendedAt", i)
			}
			cmds++
		}
	}
	if cmds != n {
		t.Fatalf("found %d command logs, want %d", cmds, n)
	}

	// Restart raft on the reopened store: it must see existing state, win
	// the election again and replay all commands into a fresh FSM.
	if ok, err := raft.HasExistingState(store, store, snaps); err != nil || !ok {
		t.Fatalf("HasExistingState = %v, %v", ok, err)
	}
	fsm2 := &lsCountingFSM{}
	r2 := lsStartRaft(t, store, fsm2, snaps)
	defer func() { _ = r2.Shutdown().Error() }()
	lsWaitLeader(t, r2)
	if err := r2.Barrier(5 * time.Second).Error(); err != nil {
		t.Fatalf("Barrier: %v", err)
	}
	if got := fsm2.count(); got != n {
		t.Fatalf("replayed %d commands, want %d", got, n)
	}
}

func BenchmarkStoreLogs(b *testing.B) {
	for _, bc := range []struct {
		name   string
		noSync bool
	}{{"nosync", true}, {"fsync", false}} {
		b.Run(bc.name, func(b *testing.B) {
			s := lsOpenTestStore(b, LogStoreOptions{NoSync: bc.noSync})
			const batch = 64
			data := bytes.Repeat([]byte{'x'}, 128)
			logs := make([]*raft.Log, batch)
			for i := range logs {
				logs[i] = &raft.Log{Term: 1, Type: raft.LogCommand, Data: data, AppendedAt: time.Now()}
			}
			next := uint64(1)
			b.ReportAllocs()
			b.SetBytes(batch * 128)
			for b.Loop() {
				for _, l := range logs {
					l.Index = next
					next++
				}
				if err := s.StoreLogs(logs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGetLog reads entries of a 4096-entry log from the bbolt file
// (checkpointed: the tail holds none), one at a time, and in parallel.
func BenchmarkGetLog(b *testing.B) {
	s := lsOpenTestStore(b, LogStoreOptions{})
	data := bytes.Repeat([]byte{'x'}, 128)
	const n = 4096
	for i := uint64(1); i <= n; i += 256 {
		if err := s.StoreLogs(withData(lsTestLogs(i, i+255), data)); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Checkpoint(); err != nil {
		b.Fatal(err)
	}
	b.Run("serial", func(b *testing.B) {
		var l raft.Log
		i := uint64(0)
		b.ReportAllocs()
		for b.Loop() {
			if err := s.GetLog(i%n+1, &l); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			var l raft.Log
			i := uint64(0)
			for pb.Next() {
				if err := s.GetLog(i%n+1, &l); err != nil {
					b.Fatal(err)
				}
				i += 7
			}
		})
	})
}

// Verify checks entries where they lie: reading a long log at Open must not
// copy every entry into the heap.
func TestVerifyCopiesNoEntry(t *testing.T) {
	s := lsOpenTestStore(t, LogStoreOptions{NoSync: true})
	const n = 200
	logs := lsTestLogs(1, n)
	for _, l := range logs {
		l.Data = bytes.Repeat([]byte{byte(l.Index)}, 64<<10)
	}
	if err := s.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(1); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if err := s.Verify(1); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	// 200 entries of 64 KiB are 12.5 MiB; reading /proc for the mapping
	// and bbolt's transaction take a little.
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 2<<20 {
		t.Fatalf("Verify of %d entries of 64 KiB allocated %d bytes", n, grew)
	}
}

// GetLogHeader reads a command entry without its data and any other entry
// whole, from the tail and from the bbolt file alike.
func TestGetLogHeader(t *testing.T) {
	s := lsOpenTestStore(t, LogStoreOptions{NoSync: true})
	logs := lsTestLogs(1, 6)
	logs[2].Type = raft.LogConfiguration
	logs[2].Data = []byte("configuration")
	logs[3].Extensions = []byte("ext")
	if err := s.StoreLogs(logs[:3]); err != nil {
		t.Fatal(err)
	}
	if err := s.Checkpoint(); err != nil { // entries 1-3 into the bbolt file
		t.Fatal(err)
	}
	if err := s.StoreLogs(logs[3:]); err != nil { // 4-6 in the tail
		t.Fatal(err)
	}
	for _, want := range logs {
		var got raft.Log
		if err := s.GetLogHeader(want.Index, &got); err != nil {
			t.Fatalf("entry %d: %v", want.Index, err)
		}
		w := *want
		if w.Type == raft.LogCommand {
			w.Data, w.Extensions = nil, nil
		}
		if got.Index != w.Index || got.Term != w.Term || got.Type != w.Type ||
			!bytes.Equal(got.Data, w.Data) || !bytes.Equal(got.Extensions, w.Extensions) ||
			!got.AppendedAt.Equal(w.AppendedAt) {
			t.Errorf("entry %d: got %+v, want %+v", want.Index, got, w)
		}
		var full raft.Log
		if err := s.GetLog(want.Index, &full); err != nil || !bytes.Equal(full.Data, want.Data) {
			t.Errorf("entry %d: GetLog %q, %v; want %q", want.Index, full.Data, err, want.Data)
		}
	}
	var l raft.Log
	if err := s.GetLogHeader(7, &l); err != raft.ErrLogNotFound {
		t.Fatalf("missing entry: %v, want raft.ErrLogNotFound", err)
	}
}
