package artifacts

import "fmt"

// PrepareError is a preparation that failed: the class "preparation" of
// DESIGN.md. It says nothing about the work the artifact was for, so a
// validator must not vote on it.
type PrepareError struct {
	ID  string
	Err error
}

func (e *PrepareError) Error() string {
	return fmt.Sprintf("prepare artifact %q: %v", e.ID, e.Err)
}

func (e *PrepareError) Unwrap() error { return e.Err }

// Class is the error class of DESIGN.md "Runtime versions and artifacts".
func (e *PrepareError) Class() string { return "preparation" }

// FullError is an artifact that does not fit under the byte bound, even
// after evicting every artifact no one holds.
type FullError struct {
	ID       string
	Size     int64 // the artifact and its checksum file
	Pinned   int64 // bytes held by artifacts in use and preparations being installed
	MaxBytes int64
}

func (e *FullError) Error() string {
	if e.Size > e.MaxBytes {
		return fmt.Sprintf("artifact %q is %d bytes, more than the cache's bound of %d bytes", e.ID, e.Size, e.MaxBytes)
	}
	return fmt.Sprintf("artifact %q (%d bytes) does not fit: %d of the cache's %d bytes are held by artifacts in use; release some or raise the bound",
		e.ID, e.Size, e.Pinned, e.MaxBytes)
}

// IDError is an artifact id refused because it is not a safe file name.
type IDError struct {
	ID     string
	Reason string
}

func (e *IDError) Error() string { return fmt.Sprintf("artifact id %q refused: %s", e.ID, e.Reason) }
