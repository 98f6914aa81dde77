// Package faultinject lets the module's own tests make the storage
// package's file operations fail on one member, as a failing or full disk
// would. Package storage sets Install; nothing outside tests calls it, and
// without an installed fault each operation costs one atomic load.
package faultinject

// Fault describes the operation to fail.
type Fault struct {
	// Op is the kind of operation: one of Ops.
	Op string
	// N is which operation of that kind fails (1-based), counting only
	// operations on files under PathPrefix.
	N int
	// Sticky makes every operation of the kind from the Nth on fail, not
	// only the Nth.
	Sticky bool
	// Err is what the failing operation returns (syscall.EIO, ENOSPC).
	Err error
	// PathPrefix limits the fault to files under it (a member's DataDir);
	// empty means every file.
	PathPrefix string
}

// Install installs f, replacing any fault installed before, and returns a
// function that removes it and reports whether the fault fired. Set by
// package storage.
var Install func(f Fault) (remove func() (fired bool))

// Ops are the kinds of operation a Fault can name.
var Ops = []string{"write", "sync", "rename", "truncate", "read", "create", "remove", "commit"}
