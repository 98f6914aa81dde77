package kv_test

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
)

// Revisions on a 3-member cluster: create, update, delete and create again,
// each read on every member, with ListEntries' revision.
func TestStore_Revisions_Lifecycle(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t, time.Minute)
	n := c.nodes
	entries := func(key string) []kv.Entry {
		t.Helper()
		var out []kv.Entry
		for i, s := range n {
			e, err := s.GetEntry(ctx, key)
			if err != nil {
				t.Fatalf("GetEntry %s on n%d: %v", key, i+1, err)
			}
			if len(out) > 0 && (e.ModRev != out[0].ModRev || e.CreateRev != out[0].CreateRev || e.Version != out[0].Version || string(e.Value) != string(out[0].Value)) {
				t.Fatalf("GetEntry %s: n%d has %+v, n1 has %+v", key, i+1, e, out[0])
			}
			out = append(out, e)
		}
		return out
	}
	if err := n[0].Set(ctx, "a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	e1 := entries("a")[0]
	if e1.Key != "a" || string(e1.Value) != "1" || e1.Version != 1 || e1.CreateRev != e1.ModRev || e1.ModRev == 0 {
		t.Fatalf("after the create: %+v", e1)
	}
	if err := n[1].Set(ctx, "a", []byte("2")); err != nil {
		t.Fatal(err)
	}
	e2 := entries("a")[0]
	if e2.Version != 2 || e2.CreateRev != e1.CreateRev || e2.ModRev <= e1.ModRev {
		t.Fatalf("after an update: %+v (first %+v)", e2, e1)
	}
	if err := n[2].Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	for i, s := range n {
		if _, err := s.GetEntry(ctx, "a"); !errors.Is(err, kv.ErrNotFound) {
			t.Fatalf("GetEntry of a deleted key on n%d: %v", i+1, err)
		}
	}
	if err := n[0].Set(ctx, "a", []byte("3")); err != nil {
		t.Fatal(err)
	}
	e3 := entries("a")[0]
	if e3.Version != 1 || e3.CreateRev <= e2.ModRev || e3.CreateRev != e3.ModRev {
		t.Fatalf("created again: %+v (before the delete %+v)", e3, e2)
	}
	if err := n[0].Set(ctx, "b", nil); err != nil {
		t.Fatal(err)
	}
	for i, s := range n {
		ents, rev, err := s.ListEntries(ctx, "")
		if err != nil {
			t.Fatalf("ListEntries on n%d: %v", i+1, err)
		}
		if len(ents) != 2 || ents[0].Key != "a" || ents[1].Key != "b" || ents[1].Value == nil || len(ents[1].Value) != 0 || ents[1].Version != 1 {
			t.Fatalf("ListEntries on n%d: %+v", i+1, ents)
		}
		if rev < ents[1].ModRev || rev < ents[0].ModRev {
			t.Fatalf("ListEntries on n%d: revision %d below an entry's: %+v", i+1, rev, ents)
		}
		if st := s.Stats(); rev > st.AppliedIndex {
			t.Fatalf("ListEntries on n%d: revision %d above the applied index %d", i+1, rev, st.AppliedIndex)
		}
		// Paging and stale reads take the same options as List.
		page, prev, err := s.ListEntries(ctx, "", kv.After("a"), kv.Limit(1), kv.Stale())
		if err != nil || len(page) != 1 || page[0].Key != "b" || prev < page[0].ModRev {
			t.Fatalf("ListEntries After a, Limit 1, Stale on n%d: %+v at %d, %v", i+1, page, prev, err)
		}
	}
	// A revision only grows.
	_, r1, _ := n[1].ListEntries(ctx, "zz")
	if err := n[1].Set(ctx, "c", []byte("x")); err != nil {
		t.Fatal(err)
	}
	ents, r2, err := n[1].ListEntries(ctx, "zz")
	if err != nil || len(ents) != 0 || r2 <= r1 {
		t.Fatalf("an empty ListEntries after a write: %v at %d, before %d (%v)", ents, r2, r1, err)
	}
	if _, err := n[0].GetEntry(ctx, ""); !errors.Is(err, kv.ErrEmptyKey) {
		t.Fatalf("GetEntry of an empty key: %v", err)
	}
}

// A DataDir written before versions were counted (format 1 value records,
// made by this package at the commit before revisions; see the keys below)
// opens, reads with the documented versions, and counts on.
func TestStore_Revisions_Format1DataDir(t *testing.T) {
	for _, replay := range []bool{false, true} {
		name := "data file"
		if replay {
			name = "log replayed"
		}
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "datadir")
			untar(t, "testdata/datadir-format1.tar.gz", filepath.Dir(dir))
			if replay {
				// Without its data file the member applies its whole log
				// again: the commands as the old version wrote them.
				if err := os.Remove(filepath.Join(dir, "data.db")); err != nil {
					t.Fatal(err)
				}
			}
			s, err := kv.Open(kv.Config{NodeID: "old", DataDir: dir, BootstrapExpect: 1, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ctx := ctxT(t, time.Minute)
			once, err := s.GetEntry(ctx, "once")
			if err != nil {
				t.Fatal(err)
			}
			thrice, err := s.GetEntry(ctx, "thrice")
			if err != nil {
				t.Fatal(err)
			}
			empty, err := s.GetEntry(ctx, "empty")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.GetEntry(ctx, "gone"); !errors.Is(err, kv.ErrNotFound) {
				t.Fatalf("gone: %v", err)
			}
			wantThrice := uint64(2) // a format 1 record: at least 2
			if replay {
				wantThrice = 3 // applied again by this version: counted
			}
			if string(once.Value) != "1" || once.Version != 1 || once.CreateRev != once.ModRev ||
				string(thrice.Value) != "3" || thrice.Version != wantThrice || thrice.CreateRev >= thrice.ModRev || thrice.CreateRev <= once.ModRev ||
				len(empty.Value) != 0 || empty.Version != 1 {
				t.Fatalf("once %+v, thrice %+v, empty %+v", once, thrice, empty)
			}
			if err := s.Set(ctx, "thrice", []byte("4")); err != nil {
				t.Fatal(err)
			}
			again, err := s.GetEntry(ctx, "thrice")
			if err != nil || again.Version != wantThrice+1 || again.CreateRev != thrice.CreateRev || again.ModRev <= thrice.ModRev {
				t.Fatalf("after a write: %+v (before %+v), %v", again, thrice, err)
			}
		})
	}
}

// untar extracts the gzipped tar file at path into dir.
func untar(t *testing.T, path, dir string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		target := filepath.Join(dir, filepath.Clean(h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o700); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(out, tr); err != nil {
				t.Fatal(err)
			}
			if err := out.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
}
