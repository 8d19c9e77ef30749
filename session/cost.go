package session

import "fmt"

// Reservation is what a StartInference holds back from the escrow: the
// prompt's tokens plus the most the answer may use, at the session's token
// price. An amount past uint64 is an error wrapping ReasonOverflow. Gateway
// and session both price a request with it.
func Reservation(inputTokens, maxTokens, price uint64) (uint64, error) {
	tokens, ok := add(inputTokens, maxTokens)
	var cost uint64
	if ok {
		cost, ok = mul(tokens, price)
	}
	if !ok {
		return 0, fmt.Errorf("%w: reservation (%d + %d tokens) × price %d overflows", ReasonOverflow, inputTokens, maxTokens, price)
	}
	return cost, nil
}

// Charge is what a finished inference costs: the tokens it used at the
// token price, capped at its reservation. An amount past uint64 is past
// any reservation, so it charges the reservation.
func Charge(inputTokens, outputTokens, price, reserved uint64) uint64 {
	used, ok := add(inputTokens, outputTokens)
	var cost uint64
	if ok {
		cost, ok = mul(used, price)
	}
	if !ok || cost > reserved {
		return reserved
	}
	return cost
}
