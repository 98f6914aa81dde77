package storage

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"
)

// TestBolt_LayerIndexAnswersReads overwrites and deletes keys across many
// Updates that stay in the pending layer (no commit), so that the records
// each Update reads, and every Lookup, come from the layers' index: each
// must see the newest write of the keys of earlier Updates, the index must
// hold exactly the items of the layer's tree, and a view taken earlier must
// keep reading what it saw.
func TestBolt_LayerIndexAnswersReads(t *testing.T) {
	e := openBoltOpts(t, filepath.Join(t.TempDir(), "data.db"), BoltOptions{CommitInterval: time.Hour})
	rng := rand.New(rand.NewPCG(3, 5))
	model := map[string]string{}
	key := func() string { return fmt.Sprintf("k%03d", rng.IntN(100)) }
	var frozen map[string]string // the model when the held view was taken
	held := make(chan struct{})
	viewDone := make(chan error, 1)
	for step := uint64(1); step <= 600; step++ {
		err := e.Update(step, func(tx WriteTx) error {
			for n := rng.IntN(6); n >= 0; n-- {
				k := key()
				got, ok := tx.Get([]byte(k))
				want, wok := model[k]
				if ok != wok || string(got) != want {
					return fmt.Errorf("read %s = %q %v, want %q %v", k, got, ok, want, wok)
				}
				if rng.IntN(4) == 0 {
					if err := tx.Delete([]byte(k)); err != nil {
						return err
					}
					delete(model, k)
					continue
				}
				v := fmt.Sprintf("v%d-%d", step, n)
				if err := tx.Put([]byte(k), []byte(v)); err != nil {
					return err
				}
				model[k] = v
			}
			return nil
		})
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		for i := range 100 {
			k := fmt.Sprintf("k%03d", i)
			got, ok, err := e.Lookup(k, nil)
			want, wok := model[k]
			if err != nil || ok != wok || string(got) != want {
				t.Fatalf("step %d: Lookup %s = %q %v %v, want %q %v", step, k, got, ok, err, want, wok)
			}
		}
		if step == 200 {
			// A view that stays open while the layer goes on changing.
			frozen = map[string]string{}
			for k, v := range model {
				frozen[k] = v
			}
			ready := make(chan struct{})
			go func() {
				viewDone <- e.View(func(tx ReadTx) error {
					close(ready)
					<-held
					for i := range 100 {
						k := fmt.Sprintf("k%03d", i)
						got, ok := tx.Get([]byte(k))
						want, wok := frozen[k]
						if ok != wok || string(got) != want {
							return fmt.Errorf("held view: %s = %q %v, want %q %v", k, got, ok, want, wok)
						}
					}
					return nil
				})
			}()
			<-ready
		}
	}
	close(held)
	if err := <-viewDone; err != nil {
		t.Fatal(err)
	}
	if e.DurableIndex() != 0 {
		t.Fatalf("the layer was committed (file at %d): the reads above did not all come from it", e.DurableIndex())
	}
	e.mu.RLock()
	p := e.pending
	var inTree int
	p.t.Ascend(func(it layerItem) bool {
		inTree++
		got, ok := p.idx[string(it.key)]
		if !ok || got.del != it.del || !bytes.Equal(got.value, it.value) {
			t.Errorf("index holds %q as %+v, tree as %+v", it.key, got, it)
		}
		return true
	})
	if inTree != len(p.idx) {
		t.Errorf("index holds %d items, tree %d", len(p.idx), inTree)
	}
	e.mu.RUnlock()
}
