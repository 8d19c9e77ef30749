package session_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
)

// Every protobuf message has many encodings of one content; the decoders
// take only the canonical one, so no party can make a second copy of a
// signed message that compares unequal (item 3 of the review).
func TestDecodersRefuseNonCanonicalEncodings(t *testing.T) {
	t.Parallel()
	b := setup(t)
	d := b.step(t, sessiontest.Start(1, 10, 10))
	diff, err := d.Marshal()
	require.NoError(t, err)
	tx, err := b.f.Confirm(1, 1, 5).Marshal()
	require.NoError(t, err)
	ss, err := session.SignState(b.f.SlotKey(0), b.f.Snapshot.ChainId, 7, 1, make([]byte, 32), 0)
	require.NoError(t, err)
	sig, err := ss.Marshal()
	require.NoError(t, err)

	decoders := map[string]func([]byte) error{
		"diff":            func(raw []byte) error { _, err := session.DecodeDiff(raw); return err },
		"tx":              func(raw []byte) error { _, err := session.DecodeTx(raw); return err },
		"state signature": func(raw []byte) error { _, err := session.DecodeStateSignature(raw); return err },
	}
	canonical := map[string][]byte{"diff": diff, "tx": tx, "state signature": sig}
	for name, raw := range canonical {
		require.NoError(t, decoders[name](raw), "%s: the canonical encoding is taken", name)
	}

	cat := func(parts ...[]byte) []byte {
		var out []byte
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	cases := []struct {
		name, decoder string
		raw           []byte
		want          session.Reason
	}{
		{"unknown field appended", "diff", cat(diff, []byte{0xf8, 0x07, 0x01}), session.ReasonEncoding},
		{"unknown field prepended", "tx", cat([]byte{0xf8, 0x07, 0x01}, tx), session.ReasonEncoding},
		{"unknown field", "state signature", cat(sig, []byte{0x30, 0x01}), session.ReasonEncoding},
		{"repeated field", "diff", cat(diff, []byte{0x10, 0x01}), session.ReasonEncoding},      // nonce 1 again
		{"non-minimal varint", "diff", []byte{0x10, 0x81, 0x00}, session.ReasonEncoding},       // nonce 1 in two bytes
		{"out of order", "diff", []byte{0x10, 0x01, 0x08, 0x07}, session.ReasonEncoding},       // nonce before escrow
		{"default written out", "state signature", []byte{0x08, 0x00}, session.ReasonEncoding}, // escrow 0
		{"zero slot written out", "tx", []byte{0x50, 0x00}, session.ReasonEncoding},            // slot 0
		{"truncated", "diff", diff[:len(diff)-1], session.ReasonMalformed},
		{"zero tag", "tx", []byte{0x50, 0x02, 0x00}, session.ReasonMalformed},
	}
	for _, c := range cases {
		err := decoders[c.decoder](c.raw)
		require.ErrorIs(t, err, c.want, "%s (%s)", c.name, c.decoder)
	}
}

// Two copies of one signed diff that differ only in signature bytes are
// the same diff; any change to what the gateway signed makes another.
func TestSameDiffComparesWhatIsSigned(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.step(t, sessiontest.Start(1, 10, 10))
	d := b.step(t, b.f.Confirm(1, 1, 5))
	clone := func() *sessionpb.Diff {
		raw, err := d.Marshal()
		require.NoError(t, err)
		out, err := session.DecodeDiff(raw)
		require.NoError(t, err)
		return out
	}
	resigned := clone()
	resigned.Txs[0].Sig = b.f.Validate(1, 1, true).Sig // other signature bytes, same content
	resigned.UserSig = nil
	require.True(t, session.SameDiff(d, resigned))

	for name, change := range map[string]func(*sessionpb.Diff){
		"root":  func(x *sessionpb.Diff) { x.PostStateRoot = make([]byte, 32) },
		"tx":    func(x *sessionpb.Diff) { x.Txs[0].GetConfirm().ConfirmedAt++ },
		"slot":  func(x *sessionpb.Diff) { x.Txs[0].Slot = 2 },
		"txs":   func(x *sessionpb.Diff) { x.Txs = nil },
		"nonce": func(x *sessionpb.Diff) { x.Nonce++ },
	} {
		other := clone()
		change(other)
		require.False(t, session.SameDiff(d, other), name)
	}
}
