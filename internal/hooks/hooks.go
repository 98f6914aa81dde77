// Package hooks connects package kv to its test support (kvtest) without
// widening kv's public API: kv fills in the functions at init.
package hooks

// Crash stops a *kv.Store as abruptly as an in-process stop can: its
// connections are cut first, with no leadership hand-off, no draining of
// forwarded calls and no gossip leave, as if the process had died. Set by
// package kv.
var Crash func(store any) error

// LeaseExists says whether lease id exists in the applied state of a
// *kv.Store (its own data, no round trip): false once this member has
// applied the lease's expiry or revocation, and with it the deletion of its
// keys. Set by package kv.
var LeaseExists func(store any, id int64) (bool, error)
