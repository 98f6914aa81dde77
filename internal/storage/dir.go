package storage

import (
	"fmt"
	"os"
	"path/filepath"
)

// MkdirAllSynced creates dir and any missing parents, like os.MkdirAll,
// and fsyncs the parent of every directory it created, so that a power
// loss right after cannot lose the directory with the files written in it.
func MkdirAllSynced(dir string, perm os.FileMode) error {
	dir = filepath.Clean(dir)
	var created []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		created = append(created, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if err := os.MkdirAll(dir, perm); err != nil {
		return err
	}
	for i := len(created) - 1; i >= 0; i-- {
		if err := fsSyncDir(filepath.Dir(created[i])); err != nil {
			return fmt.Errorf("storage: sync directory %s: %w", filepath.Dir(created[i]), err)
		}
	}
	return nil
}
