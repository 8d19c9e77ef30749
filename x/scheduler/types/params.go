package types

import "fmt"

// DefaultParams retries a failing task three times, one block apart.
func DefaultParams() Params {
	return Params{MaxRetries: 3, RetryDelay: 1}
}

// Validate checks the parameters are usable.
func (p Params) Validate() error {
	if p.RetryDelay < 1 {
		return fmt.Errorf("%w: retry_delay is %d blocks; it must be at least 1", ErrInvalidParams, p.RetryDelay)
	}
	return nil
}
