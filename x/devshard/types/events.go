package types

import (
	"encoding/json"
	"strconv"

	abci "github.com/cometbft/cometbft/abci/types"

	sdk "github.com/cosmos/cosmos-sdk/types"
)

// A settlement emits one EventEscrowPayout per host it pays and one
// EventEscrowSettled, and a block may carry a thousand settlements. The SDK
// turns a typed event into attributes through its JSON form, by
// reflection, which cost a fifth of a settlement's execution. AsEvent
// builds the same attributes directly: each field's JSON value (strings
// quoted and escaped as encoding/json does, 64-bit integers as quoted
// decimals, every field present), keys in sorted order, exactly what
// sdk.TypedEventToEvent returns (TestEventsAsTypedEvents). Clients parse
// them with sdk.ParseTypedEvent as before.

// AsEvent is sdk.TypedEventToEvent(e), built without reflection.
func (e *EventEscrowPayout) AsEvent() sdk.Event {
	return sdk.Event{Type: "devshard.devshard.v1.EventEscrowPayout", Attributes: []abci.EventAttribute{
		{Key: "address", Value: jsonString(e.Address)},
		{Key: "amount", Value: jsonUint(e.Amount)},
		{Key: "destination", Value: jsonString(e.Destination)},
		{Key: "escrow_id", Value: jsonUint(e.EscrowId)},
		{Key: "reason", Value: jsonString(e.Reason)},
	}}
}

// AsEvent is sdk.TypedEventToEvent(e), built without reflection.
func (e *EventEscrowSettled) AsEvent() sdk.Event {
	return sdk.Event{Type: "devshard.devshard.v1.EventEscrowSettled", Attributes: []abci.EventAttribute{
		{Key: "escrow_id", Value: jsonUint(e.EscrowId)},
		{Key: "nonce", Value: jsonUint(e.Nonce)},
		{Key: "paid", Value: jsonUint(e.Paid)},
		{Key: "refund", Value: jsonUint(e.Refund)},
		{Key: "sender", Value: jsonString(e.Sender)},
	}}
}

// jsonUint is a uint64 as protobuf's JSON mapping writes it: a quoted
// decimal.
func jsonUint(v uint64) string {
	b := make([]byte, 0, 22)
	b = append(b, '"')
	b = strconv.AppendUint(b, v, 10)
	return string(append(b, '"'))
}

// jsonString is s as a JSON string, escaped as encoding/json escapes it.
func jsonString(s string) string {
	if plainJSON(s) {
		return `"` + s + `"`
	}
	b, _ := json.Marshal(s) // a string always marshals
	return string(b)
}

// plainJSON reports whether s needs no escaping: printable ASCII without
// the characters encoding/json escapes (", \, and <, >, & for HTML).
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}
