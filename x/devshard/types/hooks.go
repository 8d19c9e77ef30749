package types

import "context"

// EpochHooks lets other modules act on epoch transitions: accounting on the
// move to ACCOUNTING, expiring escrows on the move to CLOSED, refunds on
// CANCELLED. The hook runs as part of the transition's action, before the new
// state is stored: returning an error fails the transition, which leaves the
// epoch where it was and makes the scheduler retry it.
type EpochHooks interface {
	OnEpochTransition(ctx context.Context, epoch Epoch, from, to EpochState) error
}
