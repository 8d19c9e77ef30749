package gateway

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
)

// stateSig is the state signature of slot over root at nonce, made with
// key k, as a host answers it.
func stateSig(t *testing.T, f *sessiontest.Fixture, k signing.Signer, slot uint32, nonce uint64, root []byte) []byte {
	t.Helper()
	ss, err := session.SignState(k, f.Snapshot.ChainId, f.Snapshot.EscrowId, nonce, root, slot)
	require.NoError(t, err)
	raw, err := ss.Marshal()
	require.NoError(t, err)
	return raw
}

func rootOf(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

// Only signatures over the latest sequenced root are kept: a new nonce
// forgets the old ones, the same nonce keeps them, and answers to older
// diffs or over another root are ignored.
func TestSignaturesKeepOnlyTheLatestRoot(t *testing.T) {
	t.Parallel()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	s := newSignatures(f.Snapshot, nil, 0, nil, slog.New(slog.DiscardHandler))

	s.expect(1, rootOf(1))
	s.absorb(1, [][]byte{stateSig(t, f, f.SlotKey(0), 0, 1, rootOf(1))})
	require.Equal(t, 1, s.signed())
	s.expect(1, rootOf(1)) // the diff, once stored
	require.Equal(t, 1, s.signed(), "the same nonce keeps what arrived")

	s.expect(2, rootOf(2))
	require.Zero(t, s.signed(), "a new nonce forgets the old root's signatures")
	s.absorb(1, [][]byte{stateSig(t, f, f.SlotKey(1), 1, 1, rootOf(1))})
	s.absorb(2, [][]byte{
		{0xff}, // does not decode
		stateSig(t, f, f.SlotKey(1), 1, 2, rootOf(1)), // another root
	})
	require.Zero(t, s.signed(), "answers to an older diff, or over another root, are ignored")

	s.absorb(2, [][]byte{stateSig(t, f, f.SlotKey(0), 0, 2, rootOf(2)), stateSig(t, f, f.SlotKey(1), 1, 2, rootOf(2))})
	require.False(t, s.quorum(), "2 of 3 slots are no quorum")
	s.absorb(2, [][]byte{stateSig(t, f, f.SlotKey(2), 2, 2, rootOf(2))})
	require.True(t, s.quorum())
}

// A forged signature is dropped when a quorum is asked for, and logged;
// the settlement lists the good ones in slot order.
func TestSignaturesDropForgedAndAttachInSlotOrder(t *testing.T) {
	t.Parallel()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	var logged bytes.Buffer
	s := newSignatures(f.Snapshot, nil, 0, nil, slog.New(slog.NewTextHandler(&logged, nil)))
	root := rootOf(5)
	s.expect(5, root)
	s.absorb(5, [][]byte{
		stateSig(t, f, f.SlotKey(2), 2, 5, root),
		stateSig(t, f, f.SlotKey(1), 0, 5, root), // slot 1's key claiming slot 0
		stateSig(t, f, f.SlotKey(1), 1, 5, root),
	})
	require.Equal(t, 3, s.signed())
	require.False(t, s.quorum())
	require.Equal(t, 2, s.signed(), "the forged signature is dropped")
	require.Contains(t, logged.String(), "dropped a bad state signature")

	s.absorb(5, [][]byte{stateSig(t, f, f.SlotKey(0), 0, 5, root)})
	require.True(t, s.quorum(), "a dropped slot may be filled again")
	m := &sessionpb.Settlement{EscrowId: f.Snapshot.EscrowId, Nonce: 5, StateRoot: root}
	require.NoError(t, s.attach(m))
	var slots []uint32
	for _, sig := range m.Signatures {
		slots = append(slots, sig.Slot)
	}
	require.Equal(t, []uint32{0, 1, 2}, slots)

	other := &sessionpb.Settlement{EscrowId: f.Snapshot.EscrowId, Nonce: 4, StateRoot: root}
	require.ErrorIs(t, s.attach(other), session.ReasonRoot, "the signatures are over nonce 5 only")
}
