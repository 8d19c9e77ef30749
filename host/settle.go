package host

import (
	"context"

	"github.com/devshard/devshard/session/sessionpb"
)

// Settleable is one loaded session as a host would settle it itself: the
// escrow's snapshot and the unsigned settlement of the host's latest state.
type Settleable struct {
	Snapshot   *sessionpb.EscrowSnapshot
	Settlement *sessionpb.Settlement
}

// Settleables lists the sessions this host has loaded, at their latest
// nonce. A host settles one itself when the gateway has not by the
// escrow's settlement deadline (DESIGN.md: a gateway must not hold the
// hosts' pay hostage).
func (e *Engine) Settleables() []Settleable {
	var out []Settleable
	for _, en := range e.entries() {
		en.mu.Lock()
		if en.loaded {
			out = append(out, Settleable{Snapshot: en.snap, Settlement: en.s.Settlement()})
		}
		en.mu.Unlock()
	}
	return out
}

// OwnSignatures are the state signatures this host stored for escrow at
// nonce, decoded.
func (e *Engine) OwnSignatures(ctx context.Context, escrow, nonce uint64) ([]*sessionpb.StateSignature, error) {
	raws, err := e.cfg.Store.Signatures(ctx, escrow, nonce)
	if err != nil {
		return nil, err
	}
	out := make([]*sessionpb.StateSignature, 0, len(raws))
	for _, r := range raws {
		var ss sessionpb.StateSignature
		if err := ss.Unmarshal(r.Data); err != nil {
			return nil, err
		}
		out = append(out, &ss)
	}
	return out, nil
}
