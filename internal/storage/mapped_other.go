//go:build !linux

package storage

// releaseMapped does nothing outside Linux: there is no /proc/self/maps to
// find the mappings in. See mapped_linux.go.
func releaseMapped(path string, addr uintptr) error { return nil }

// readAheadMapped does nothing outside Linux. See mapped_linux.go.
func readAheadMapped(path string, addr uintptr) (restore func()) { return func() {} }
