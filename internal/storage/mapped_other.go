//go:build !linux

package storage

// releaseMapped does nothing outside Linux: there is no /proc/self/maps to
// find the mappings in. See mapped_linux.go.
func releaseMapped(path string, addr uintptr) error { return nil }
