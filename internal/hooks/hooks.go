// Package hooks connects package kv to its test support (kvtest) without
// widening kv's public API: kv fills in the functions at init.
package hooks

// Crash stops a *kv.Store as abruptly as an in-process stop can: its
// connections are cut first, with no leadership hand-off, no draining of
// forwarded calls and no gossip leave, as if the process had died. Set by
// package kv.
var Crash func(store any) error
