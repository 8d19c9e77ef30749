package session

import (
	"bytes"

	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
)

// ActsForCreator reports whether signer is the escrow's creator (the
// gateway that sequences it) or a warm key the creator granted for diffs.
// Only the creator opens an inference stream: whoever opens it first
// receives the answer and the executor's signed txs, and the inference
// runs once.
func ActsForCreator(snap *sessionpb.EscrowSnapshot, signer signing.Address, auth Authorizer) bool {
	if bytes.Equal(signer[:], snap.Creator) {
		return true
	}
	creator, err := signing.AddressFromBytes(snap.Creator)
	return err == nil && auth != nil && auth.MayActFor(creator, signer, KindDiff)
}

// ActsForMember reports whether signer holds a slot of the escrow's group,
// or is a warm key a holder granted for state signatures. Own keys are
// matched first, so a member's request asks the Authorizer nothing.
func ActsForMember(snap *sessionpb.EscrowSnapshot, signer signing.Address, auth Authorizer) bool {
	for _, a := range snap.Group {
		if bytes.Equal(a, signer[:]) {
			return true
		}
	}
	if auth == nil {
		return false
	}
	for _, a := range snap.Group {
		if holder, err := signing.AddressFromBytes(a); err == nil && auth.MayActFor(holder, signer, KindState) {
			return true
		}
	}
	return false
}
