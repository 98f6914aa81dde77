package storage

import (
	"os"

	"golang.org/x/sys/unix"
)

// fdatasync flushes f's data (and only the metadata needed to read it back).
func fdatasync(f *os.File) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if err != unix.EINTR {
			return err
		}
	}
}
