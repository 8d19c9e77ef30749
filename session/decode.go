package session

import (
	"bytes"
	"fmt"

	"github.com/devshard/devshard/session/sessionpb"
)

// Signatures cover the fixed layout of docs/protocol.md, not protobuf bytes,
// so one signed message has many protobuf encodings: unknown fields,
// non-minimal varints, fields out of order or repeated. Whoever sees a diff
// first could post another encoding of it, and a host comparing bytes would
// then take the genuine one for a fork. The decoders below accept only the
// canonical encoding (what Marshal writes), so bytes taken from another
// party are the bytes this package would write for the same message.

// protoMessage is a generated message.
type protoMessage interface {
	Marshal() ([]byte, error)
	Unmarshal([]byte) error
}

// DecodeDiff decodes a diff sent by another party. It refuses bytes that
// do not decode (ReasonMalformed) or are not the canonical encoding
// (ReasonEncoding).
func DecodeDiff(raw []byte) (*sessionpb.Diff, error) {
	var d sessionpb.Diff
	if err := decodeCanonical("diff", raw, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// DecodeTx decodes a host tx sent by another party, as DecodeDiff does.
func DecodeTx(raw []byte) (*sessionpb.Tx, error) {
	var tx sessionpb.Tx
	if err := decodeCanonical("tx", raw, &tx); err != nil {
		return nil, err
	}
	return &tx, nil
}

// DecodeStateSignature decodes a state signature sent by another party, as
// DecodeDiff does.
func DecodeStateSignature(raw []byte) (*sessionpb.StateSignature, error) {
	var ss sessionpb.StateSignature
	if err := decodeCanonical("state signature", raw, &ss); err != nil {
		return nil, err
	}
	return &ss, nil
}

// decodeCanonical unmarshals raw into m and checks that marshalling m gives
// raw back.
func decodeCanonical(what string, raw []byte, m protoMessage) error {
	if err := m.Unmarshal(raw); err != nil {
		return fmt.Errorf("%w: %s does not decode: %v", ReasonMalformed, what, err)
	}
	again, err := m.Marshal()
	if err != nil {
		return fmt.Errorf("%w: %s does not encode again: %v", ReasonMalformed, what, err)
	}
	if !bytes.Equal(again, raw) {
		at := 0
		for at < len(raw) && at < len(again) && raw[at] == again[at] {
			at++
		}
		return fmt.Errorf("%w: %s is not in canonical protobuf form: its %d bytes differ from the %d of its canonical encoding at offset %d "+
			"(unknown fields, a non-minimal varint, a default value written out, or a field out of order or repeated); send the bytes Marshal writes",
			ReasonEncoding, what, len(raw), len(again), at)
	}
	return nil
}

// SameDiff reports whether a and b are one diff: they commit to the same
// content (DiffSignBytes: escrow, nonce, each tx's canonical bytes and the
// post-state root). Signature bytes are left out. The gateway signs that
// content, not the protobuf, and a signer can sign the same bytes again
// with other valid bytes, so two copies of one signed diff may differ only
// in their signatures and both lead to the same root. A diff at a stored
// nonce that is the same diff is a replay; any other is a fork.
// Both copies belong to one session, so one chain: its id, a prefix common
// to both, is left out of the comparison.
func SameDiff(a, b *sessionpb.Diff) bool {
	return bytes.Equal(DiffSignBytes("", a), DiffSignBytes("", b))
}
