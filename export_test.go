package kv

// SetRestoreHook makes Restore on s call fn before it proposes each chunk
// ("chunk", its number from 0) and the commit ("commit", 0). Set it before
// Restore runs.
func SetRestoreHook(s *Store, fn func(step string, n int)) { s.restoreHook = fn }

// SetRestoreChunkSize sets the size of the chunk entries of Restore on s.
func SetRestoreChunkSize(s *Store, n int) { s.restoreChunk = n }
