package storage

import (
	"errors"
	"fmt"
	"runtime/debug"
	"syscall"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// openDB opens a bbolt file. Errors that mean the file's bytes are damaged
// (bad meta pages, a checksum, a version bbolt does not know, or a panic
// while bbolt reads the file) wrap ErrCorrupt and name the file; others
// (permissions, a lock held by another process) do not.
func openDB(path, what string, opts *bolt.Options) (db *bolt.DB, err error) {
	err = guard(path, what, func() error {
		var err error
		db, err = bolt.Open(path, 0o600, opts)
		return err
	})
	if err == nil {
		return db, nil
	}
	if errors.Is(err, ErrCorrupt) {
		return nil, err
	}
	for _, c := range []error{berrors.ErrInvalid, berrors.ErrChecksum, berrors.ErrVersionMismatch, berrors.ErrInvalidMapping} {
		if errors.Is(err, c) {
			return nil, fmt.Errorf("%w: %s %s: %v", ErrCorrupt, what, path, err)
		}
	}
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("storage: open %s %s: locked by another process: %w", what, path, err)
	}
	return nil, fmt.Errorf("storage: open %s %s: %w", what, path, err)
}

// guard runs fn and turns a panic inside it into an error wrapping
// ErrCorrupt that names the file. bbolt panics on some kinds of damaged
// pages (its transactions roll back on the way out); a damaged file must
// fail the call, not the host process.
func guard(path, what string, fn func() error) (err error) {
	// A wild pointer read from a damaged page faults inside the mmap: make
	// that a panic (recovered below) instead of a crash of the process.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %s %s: %v", ErrCorrupt, what, path, r)
		}
	}()
	return fn()
}

// diskFull wraps err with ErrDiskFull when it reports a file system without
// space (ENOSPC, EDQUOT), and returns it unchanged otherwise.
func diskFull(err error) error {
	if err == nil || errors.Is(err, ErrDiskFull) {
		return err
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", ErrDiskFull, err)
	}
	return err
}
