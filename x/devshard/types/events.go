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
	return typedEvent("devshard.devshard.v1.EventEscrowPayout", "address", jsonString(e.Address), "amount", jsonUint(e.Amount),
		"destination", jsonString(e.Destination), "escrow_id", jsonUint(e.EscrowId), "reason", jsonString(e.Reason))
}

// AsEvent is sdk.TypedEventToEvent(e), built without reflection.
func (e *EventEscrowSettled) AsEvent() sdk.Event {
	return typedEvent("devshard.devshard.v1.EventEscrowSettled", "escrow_id", jsonUint(e.EscrowId), "nonce", jsonUint(e.Nonce),
		"paid", jsonUint(e.Paid), "refund", jsonUint(e.Refund), "sender", jsonString(e.Sender))
}

// typedEvent is an event of type name whose attributes are the pairs of
// kv (key, JSON value), given in sorted key order.
func typedEvent(name string, kv ...string) sdk.Event {
	attrs := make([]abci.EventAttribute, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		attrs = append(attrs, abci.EventAttribute{Key: kv[i], Value: kv[i+1]})
	}
	return sdk.Event{Type: name, Attributes: attrs}
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
