package types

import (
	"fmt"
	"strings"
)

// Symbol is an input to an epoch's state machine.
type Symbol string

// The symbols of the epoch lifecycle; docs/chain.md has the table.
const (
	SymActivate   Symbol = "activate"
	SymSettle     Symbol = "settle"
	SymAccount    Symbol = "account"
	SymOpenClaims Symbol = "open_claims"
	SymClose      Symbol = "close"
	SymCancel     Symbol = "cancel"
)

// EpochStates lists the states an epoch can be in, in lifecycle order.
var EpochStates = []EpochState{EpochPlanned, EpochActive, EpochSettling, EpochAccounting, EpochClaimable, EpochClosed, EpochCancelled}

// Symbols lists every symbol.
var Symbols = []Symbol{SymActivate, SymSettle, SymAccount, SymOpenClaims, SymClose, SymCancel}

// IsFinal reports whether s accepts no further symbol.
func (s EpochState) IsFinal() bool { return s == EpochClosed || s == EpochCancelled }

// ParseEpochState accepts "ACTIVE", "active" or "EPOCH_STATE_ACTIVE".
func ParseEpochState(s string) (EpochState, error) {
	name := strings.ToUpper(strings.TrimSpace(s))
	if !strings.HasPrefix(name, "EPOCH_STATE_") {
		name = "EPOCH_STATE_" + name
	}
	v, ok := EpochState_value[name]
	if !ok || v == 0 {
		return 0, fmt.Errorf("unknown epoch state %q; use one of planned, active, settling, accounting, claimable, closed, cancelled", s)
	}
	return EpochState(v), nil
}

// Short is the state's name without the enum prefix: "ACTIVE".
func (s EpochState) Short() string { return strings.TrimPrefix(s.String(), "EPOCH_STATE_") }
