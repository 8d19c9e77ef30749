package session

import (
	"bytes"
	"fmt"

	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
)

// Kind names what a signature is for. It is the domain tag of the signed
// bytes, so a signature made for one kind never verifies as another.
type Kind string

// Signed message kinds.
const (
	KindDiff       Kind = "devshard/v1/diff"
	KindConfirm    Kind = "devshard/v1/tx/confirm"
	KindFinish     Kind = "devshard/v1/tx/finish"
	KindValidation Kind = "devshard/v1/tx/validation"
	KindTimeout    Kind = "devshard/v1/tx/timeout"
	KindState      Kind = "devshard/v1/state"
)

// Authorizer lets a caller accept a warm (operational) key for an account.
// MayActFor reports whether signer may sign messages of kind for holder. The
// chain backs it with x/authz grants, the host with a cache of them. A nil
// Authorizer accepts only the holder's own key.
type Authorizer interface {
	MayActFor(holder, signer signing.Address, kind Kind) bool
}

// signBytes is the domain-separated message: tag, chain id, escrow id,
// payload. The chain id keeps a signature made on one network (a testnet, a
// fork, a restarted chain that reuses escrow ids) from verifying on another.
func signBytes(kind Kind, chainID string, escrowID uint64, payload func(*encoder)) []byte {
	e := encoder{b: make([]byte, 0, 160+len(chainID))}
	e.domain(string(kind))
	e.bytes([]byte(chainID))
	e.u64(escrowID)
	payload(&e)
	return e.b
}

// DiffSignBytes are the bytes the gateway signs for a diff on chain chainID:
// the nonce, every tx's canonical bytes (without host signatures) and the
// post-state root.
func DiffSignBytes(chainID string, d *sessionpb.Diff) []byte {
	return signBytes(KindDiff, chainID, d.EscrowId, func(e *encoder) {
		e.u64(d.Nonce)
		e.u32(uint32(len(d.Txs)))
		for _, tx := range d.Txs {
			encodeTx(e, tx)
		}
		e.bytes(d.PostStateRoot)
	})
}

// TxSignBytes are the bytes a host signs for one of its txs in escrow
// escrowID on chain chainID.
func TxSignBytes(chainID string, escrowID uint64, tx *sessionpb.Tx) ([]byte, error) {
	if !hasBody(tx) {
		return nil, fmt.Errorf("tx has no body")
	}
	kind, err := hostTxKind(tx)
	if err != nil {
		return nil, err
	}
	return signBytes(kind, chainID, escrowID, func(e *encoder) { encodeTx(e, tx) }), nil
}

// StateSignBytes are the bytes a host signs to attest a root.
func StateSignBytes(chainID string, escrowID, nonce uint64, root []byte) []byte {
	return signBytes(KindState, chainID, escrowID, func(e *encoder) {
		e.u64(nonce)
		e.bytes(root)
	})
}

func hostTxKind(tx *sessionpb.Tx) (Kind, error) {
	switch tx.Body.(type) {
	case *sessionpb.Tx_Confirm:
		return KindConfirm, nil
	case *sessionpb.Tx_Finish:
		return KindFinish, nil
	case *sessionpb.Tx_Validation:
		return KindValidation, nil
	case *sessionpb.Tx_Timeout:
		return KindTimeout, nil
	default:
		return "", fmt.Errorf("tx of type %T is not signed by a host", tx.Body)
	}
}

// SignDiff sets d.UserSig with the gateway's key, for chain chainID. Set
// PostStateRoot first.
func SignDiff(s signing.Signer, chainID string, d *sessionpb.Diff) error {
	sig, err := sign(s, DiffSignBytes(chainID, d))
	if err != nil {
		return fmt.Errorf("sign diff %d: %w", d.Nonce, err)
	}
	d.UserSig = sig
	return nil
}

// SignTx sets tx.Sig with a host's key, for escrow escrowID on chain
// chainID. Set tx.Slot first.
func SignTx(s signing.Signer, chainID string, escrowID uint64, tx *sessionpb.Tx) error {
	msg, err := TxSignBytes(chainID, escrowID, tx)
	if err != nil {
		return err
	}
	sig, err := sign(s, msg)
	if err != nil {
		return fmt.Errorf("sign tx: %w", err)
	}
	tx.Sig = sig
	return nil
}

// SignState returns a host's signature over (chain, escrow, nonce, root)
// for slot.
func SignState(s signing.Signer, chainID string, escrowID, nonce uint64, root []byte, slot uint32) (*sessionpb.StateSignature, error) {
	sigs, err := SignStateSlots(s, chainID, escrowID, nonce, root, []uint32{slot})
	if err != nil {
		return nil, err
	}
	return sigs[0], nil
}

// SignStateSlots returns a host's state signatures for each of the slots it
// holds. The signed bytes name no slot, so one signature serves them all:
// the key signs once, whatever the number of slots.
func SignStateSlots(s signing.Signer, chainID string, escrowID, nonce uint64, root []byte, slots []uint32) ([]*sessionpb.StateSignature, error) {
	sig, err := sign(s, StateSignBytes(chainID, escrowID, nonce, root))
	if err != nil {
		return nil, fmt.Errorf("sign state %d: %w", nonce, err)
	}
	out := make([]*sessionpb.StateSignature, 0, len(slots))
	for _, slot := range slots {
		out = append(out, &sessionpb.StateSignature{
			EscrowId:  escrowID,
			Nonce:     nonce,
			StateRoot: append([]byte(nil), root...),
			Slot:      slot,
			Sig:       &sessionpb.Signature{PubKey: bytes.Clone(sig.PubKey), Sig: bytes.Clone(sig.Sig)},
		})
	}
	return out, nil
}

func sign(s signing.Signer, msg []byte) (*sessionpb.Signature, error) {
	sig, err := s.Sign(msg)
	if err != nil {
		return nil, err
	}
	pub := s.PubKey()
	return &sessionpb.Signature{PubKey: pub[:], Sig: sig}, nil
}

// checkSig verifies sig over msg and that its key may act for holder. It
// returns the reason and a sentence on failure.
func checkSig(sig *sessionpb.Signature, msg []byte, holder signing.Address, kind Kind, auth Authorizer, memo *signing.Memo) (Reason, string) {
	if sig == nil || len(sig.PubKey) == 0 || len(sig.Sig) == 0 {
		return ReasonSignature, "unsigned"
	}
	if len(sig.PubKey) != signing.PubKeySize {
		return ReasonSignature, fmt.Sprintf("public key must be %d bytes, got %d", signing.PubKeySize, len(sig.PubKey))
	}
	var pub signing.PubKey
	copy(pub[:], sig.PubKey)
	signer := pub.Address()
	if signer != holder && (auth == nil || !auth.MayActFor(holder, signer, kind)) {
		return ReasonUnauthorized, fmt.Sprintf("signer %s may not sign %s for %s", signer, kind, holder)
	}
	if err := memo.Verify(sig.PubKey, msg, sig.Sig); err != nil {
		return ReasonSignature, fmt.Sprintf("signature by %s: %v", signer, err)
	}
	return "", ""
}

// VerifyStateSignature checks a host's state signature against the group of
// the escrow in snap: the slot exists, and its holder (or a warm key it
// granted) signed (snap's chain, escrow, nonce, root).
func VerifyStateSignature(snap *sessionpb.EscrowSnapshot, ss *sessionpb.StateSignature, auth Authorizer) error {
	if ss.EscrowId != snap.EscrowId {
		return fmt.Errorf("%w: state signature is for escrow %d, expected %d", ReasonEscrow, ss.EscrowId, snap.EscrowId)
	}
	if int(ss.Slot) >= len(snap.Group) {
		return fmt.Errorf("%w: slot %d is outside the group of %d", ReasonMalformed, ss.Slot, len(snap.Group))
	}
	holder, err := signing.AddressFromBytes(snap.Group[ss.Slot])
	if err != nil {
		return fmt.Errorf("%w: group slot %d: %v", ReasonMalformed, ss.Slot, err)
	}
	if reason, detail := checkSig(ss.Sig, StateSignBytes(snap.ChainId, ss.EscrowId, ss.Nonce, ss.StateRoot), holder, KindState, auth, nil); reason != "" {
		return fmt.Errorf("%w: slot %d state signature at nonce %d: %s", reason, ss.Slot, ss.Nonce, detail)
	}
	return nil
}

// VerifyHostTx checks a host tx outside a diff, as gossip carries it: the
// slot exists in the escrow's group and the tx is signed by the slot's holder
// (or a warm key it granted). It does not check the tx against any state.
func VerifyHostTx(snap *sessionpb.EscrowSnapshot, tx *sessionpb.Tx, auth Authorizer) error {
	return VerifyHostTxWith(snap, tx, auth, nil)
}

// VerifyHostTxWith is VerifyHostTx through memo: a tx checked when it
// arrives is then checked in a diff by a session using the same memo
// (Session.UseMemo) at the cost of a hash.
func VerifyHostTxWith(snap *sessionpb.EscrowSnapshot, tx *sessionpb.Tx, auth Authorizer, memo *signing.Memo) error {
	if !hasBody(tx) {
		return fmt.Errorf("%w: tx has no body", ReasonMalformed)
	}
	kind, err := hostTxKind(tx)
	if err != nil {
		return fmt.Errorf("%w: %v", ReasonMalformed, err)
	}
	if int(tx.Slot) >= len(snap.Group) {
		return fmt.Errorf("%w: slot %d is outside the group of %d", ReasonMalformed, tx.Slot, len(snap.Group))
	}
	holder, err := signing.AddressFromBytes(snap.Group[tx.Slot])
	if err != nil {
		return fmt.Errorf("%w: group slot %d: %v", ReasonMalformed, tx.Slot, err)
	}
	msg, _ := TxSignBytes(snap.ChainId, snap.EscrowId, tx)
	if reason, detail := checkSig(tx.Sig, msg, holder, kind, auth, memo); reason != "" {
		return fmt.Errorf("%w: slot %d: %s", reason, tx.Slot, detail)
	}
	return nil
}

// TxKey identifies a tx by its canonical bytes: two txs with the same key
// have the same effect, whoever carries them.
func TxKey(tx *sessionpb.Tx) string {
	e := encoder{}
	encodeTx(&e, tx)
	return string(e.b)
}

// TxEffectKey identifies what a host tx does: its kind, its slot and the
// inference it names. Of the host txs that share an effect key at most one
// ever applies (a record leaves the status a confirm or a finish needs, and
// a slot votes once), and only the slot's holder can sign one. A mempool
// that keeps one tx per effect key cannot be filled with variants of one
// tx that are bound to fail.
func TxEffectKey(tx *sessionpb.Tx) string {
	e := encoder{b: make([]byte, 0, 13)}
	switch tx.Body.(type) {
	case *sessionpb.Tx_Confirm:
		e.u8(kindConfirm)
	case *sessionpb.Tx_Finish:
		e.u8(kindFinish)
	case *sessionpb.Tx_Validation:
		e.u8(kindValidation)
	case *sessionpb.Tx_Timeout:
		e.u8(kindTimeout)
	default:
		return TxKey(tx) // not a host tx: only its own bytes say what it does
	}
	e.u32(tx.Slot)
	e.u64(txInferenceID(tx))
	return string(e.b)
}
