package kv

import "github.com/cohortkv/kv/storage"

// SetBoltOptions makes the Stores opened from now on open their data files
// with opts, until the returned function restores the defaults. Tests only;
// not safe while Stores are being opened.
func SetBoltOptions(opts storage.BoltOptions) (restore func()) {
	old := boltOptions
	boltOptions = opts
	return func() { boltOptions = old }
}
