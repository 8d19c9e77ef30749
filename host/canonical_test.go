package host

import (
	"crypto/sha256"
	"net/http"
	"testing"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/store"
)

// signWithNonce signs msg with key as ECDSA does, but with nonce k instead
// of RFC 6979's: another valid, low-S signature over the same bytes. Any
// holder of a key can make as many as it likes.
func signWithNonce(t *testing.T, key *signing.PrivKey, msg []byte, k uint32) []byte {
	t.Helper()
	var d, kk, e, r, s secp256k1.ModNScalar
	require.False(t, d.SetByteSlice(key.Bytes()))
	kk.SetInt(k)
	h := sha256.Sum256(msg)
	e.SetByteSlice(h[:])
	var R secp256k1.JacobianPoint
	secp256k1.ScalarBaseMultNonConst(&kk, &R)
	R.ToAffine()
	R.X.Normalize()
	r.SetByteSlice(R.X.Bytes()[:])
	s.Mul2(&r, &d).Add(&e).Mul(new(secp256k1.ModNScalar).InverseValNonConst(&kk))
	if s.IsOverHalfOrder() {
		s.Negate()
	}
	out := make([]byte, signing.SignatureSize)
	r.PutBytesUnchecked(out[:32])
	s.PutBytesUnchecked(out[32:])
	pub := key.PubKey()
	require.NoError(t, signing.Verify(pub[:], msg, out))
	return out
}

// Item 3 of the review: whoever sees a diff first (a co-member, anything on
// the path) appends an unknown protobuf field and posts it to a host. The
// gateway's signature covers the fixed layout, not the protobuf bytes, so
// the tampered copy verified and was stored; the gateway's genuine diff was
// then a fork (409) at that nonce forever, and the host was out of the
// session. Now the host decodes only the canonical encoding: the tampered
// copy is refused, and the genuine diff is taken after it.
//
// Checked against the old code (ApplyDiffs with a plain Unmarshal): the
// tampered diff answered 200 and the genuine one 409.
func TestAttackUnknownFieldDiffIsRefused(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.next(t, nil) // nonce 1 everywhere
	d, err := b.gw.Next()
	require.NoError(t, err)
	genuine, err := d.Marshal()
	require.NoError(t, err)
	// Field 127, varint 1: unknown to sessionpb.Diff, skipped by Unmarshal.
	tampered := append(append([]byte(nil), genuine...), 0xf8, 0x07, 0x01)

	status, body := signedPost(t, b.urls[0]+"/v1/sessions/7/diffs", b.f.Gateway, to(b.hosts[0].Address()), hostapi.DiffRequest{Diff: tampered})
	require.Equal(t, http.StatusBadRequest, status, string(body))
	require.Contains(t, string(body), "not in canonical protobuf form")
	_, err = b.hosts[0].ApplyDiff(t.Context(), 7, tampered, nil)
	require.ErrorIs(t, err, session.ReasonEncoding)
	require.ErrorIs(t, err, ErrBadInput)

	status, resp, body2 := b.send(t, 0, d, nil)
	require.Equal(t, http.StatusOK, status, body2)
	root := b.gw.Replica.Root()
	require.Equal(t, d.PostStateRoot, root[:])
	require.NotEmpty(t, resp.Signatures, "the host signs the gateway's root")
	b.deliver(t, d, 1, 2)
	b.next(t, nil) // and takes the next diffs as every other host does
}

// Item 3, second variant: the gateway's signature covers each host tx
// without the host's own signature, so a co-member re-signs its own tx in
// the gateway's diff (another valid signature over the same bytes) and
// posts that diff to a host first. Both copies are valid and lead to the
// same root; the host stored the first and took the gateway's for a fork.
// Now a diff at a stored nonce is judged by what it commits to
// (session.SameDiff): the gateway's diff is a replay and answers as the
// first copy did.
//
// Checked against the old code (replay comparing raw bytes): the gateway's
// diff answered 409.
func TestAttackResignedTxDiffIsAReplay(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req := request(1)
	// Inference 1 runs on slot 1, held by host 1: its txs are host 1's.
	b.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	confirm := b.f.Confirm(1, 1, 5)
	d, err := b.gw.Next(confirm)
	require.NoError(t, err)

	// Host 1 re-signs its ConfirmStart inside the gateway's diff.
	msg, err := session.TxSignBytes(b.f.Snapshot.ChainId, 7, confirm)
	require.NoError(t, err)
	forked := cloneDiff(t, d)
	forked.Txs[0].Sig.Sig = signWithNonce(t, b.f.Hosts[1], msg, 12345)
	require.NotEqual(t, d.Txs[0].Sig.Sig, forked.Txs[0].Sig.Sig)
	status, first, body := b.send(t, 0, forked, nil)
	require.Equal(t, http.StatusOK, status, body, "the re-signed copy is valid")

	status, again, body := b.send(t, 0, d, nil)
	require.Equal(t, http.StatusOK, status, body, "the gateway's diff is the same diff: a replay, not a fork")
	require.Equal(t, first.Root, again.Root)
	require.Equal(t, first.Signatures, again.Signatures, "a replay answers as the first copy did")

	// Another content at the nonce is still a fork.
	other := cloneDiff(t, d)
	other.Txs = []*sessionpb.Tx{b.f.Confirm(1, 1, 6)}
	require.NoError(t, session.SignDiff(b.f.Gateway, b.f.Snapshot.ChainId, other))
	status, _, body = b.send(t, 0, other, nil)
	require.Equal(t, http.StatusConflict, status, body)
	require.ErrorIs(t, b.applyErr(t, 0, other), store.ErrFork)
	b.deliver(t, d, 1, 2)
	b.next(t, nil)
}

// deliver sends d to hosts, each of which must take it.
func (b *hostBundle) deliver(t *testing.T, d *sessionpb.Diff, hosts ...int) {
	t.Helper()
	for _, i := range hosts {
		status, _, body := b.send(t, i, d, nil)
		require.Equal(t, http.StatusOK, status, body)
	}
}

// applyErr is host i's error for d, taken without HTTP.
func (b *hostBundle) applyErr(t *testing.T, i int, d *sessionpb.Diff) error {
	t.Helper()
	raw, err := d.Marshal()
	require.NoError(t, err)
	_, err = b.hosts[i].ApplyDiff(t.Context(), d.EscrowId, raw, nil)
	return err
}

func cloneDiff(t *testing.T, d *sessionpb.Diff) *sessionpb.Diff {
	t.Helper()
	raw, err := d.Marshal()
	require.NoError(t, err)
	var out sessionpb.Diff
	require.NoError(t, out.Unmarshal(raw))
	return &out
}
