package concurrency

import "errors"

// Errors of the package. Compare with errors.Is.
var (
	// ErrSessionLost is returned by a call that needs a session that has
	// ended: its lease was lost (see Session) or it was closed. A lock or
	// leadership it held is gone, or going: open a new Session.
	ErrSessionLost = errors.New("concurrency: session lost")
	// ErrLocked is returned by TryLock when another holder has the lock.
	ErrLocked = errors.New("concurrency: mutex locked by another session")
	// ErrLockReleased is returned by Unlock of a Mutex that does not hold
	// the lock (never locked, or already unlocked).
	ErrLockReleased = errors.New("concurrency: mutex not locked")
	// ErrElectionNoLeader is returned by Leader when nobody leads: no
	// candidate is campaigning.
	ErrElectionNoLeader = errors.New("concurrency: election: no leader")
	// ErrElectionNotLeader is returned by Proclaim when this Election does
	// not lead (it never won, resigned, or lost its session).
	ErrElectionNotLeader = errors.New("concurrency: election: not leader")
)
