package host

import (
	"context"
	"fmt"

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

// SignLatest signs the escrow's latest stored root if this host has not: a
// delivery's run signs only its last diff, and a run cut short by a
// refused diff signs none. An own tx overdue for inclusion still withholds
// the signature. It is for settling without the gateway, once the host has
// caught up from its peers (ApplyDiffs with their stored diffs).
func (e *Engine) SignLatest(ctx context.Context, escrowID uint64) error {
	en, err := e.session(ctx, escrowID)
	if err != nil {
		return err
	}
	defer en.mu.Unlock()
	n := en.s.Nonce()
	if n == 0 {
		return nil
	}
	stored, err := e.cfg.Store.Diffs(ctx, escrowID, n, 1)
	if err != nil {
		return err
	}
	if len(stored) == 0 || stored[0].Nonce != n {
		return fmt.Errorf("diff %d of escrow %d is applied but not stored", n, escrowID)
	}
	var d sessionpb.Diff
	if err := d.Unmarshal(stored[0].Data); err != nil {
		return err
	}
	_, err = e.replay(ctx, en, &d, stored[0].Data)
	return err
}
