package chainclient

import (
	"fmt"
	"time"
)

// StalledError is a chain whose latest block is older than its reader
// allows: its validators make no blocks, so no tx can land until they do.
// Reads still answer, from the last block.
type StalledError struct {
	// Height and Time are the latest block's.
	Height int64
	Time   time.Time
	// Age is how old that block was when it was asked for.
	Age time.Duration
}

func (e *StalledError) Error() string {
	at := e.Time.UTC().Format("15:04:05")
	if e.Age >= 24*time.Hour {
		at = e.Time.UTC().Format("2006-01-02 15:04:05")
	}
	return fmt.Sprintf("the chain has made no block for %s (last height %d at %s UTC): its validators may have lost their quorum",
		e.Age.Round(time.Second), e.Height, at)
}

// Stalled is a *StalledError when the latest block, at height and made at
// t, is more than after old at now; nil while the chain keeps up. A block
// time ahead of now (clocks apart) is no stall.
func Stalled(height int64, t, now time.Time, after time.Duration) error {
	if age := now.Sub(t); age > after {
		return &StalledError{Height: height, Time: t, Age: age}
	}
	return nil
}
