package session_test

import (
	"bytes"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
)

// sigSetup is a fixture of n slots, each held by its own participant, and
// the root the tests collect signatures over.
type sigSetup struct {
	f     *sessiontest.Fixture
	nonce uint64
	root  []byte
}

func newSigSetup(t *testing.T, n int) *sigSetup {
	t.Helper()
	o := sessiontest.DefaultOptions()
	o.Holders = make([]int, n)
	for i := range o.Holders {
		o.Holders[i] = i
	}
	return &sigSetup{f: sessiontest.New(1, o), nonce: 12, root: sessiontest.Hash("root", 12)}
}

func (s *sigSetup) set() *session.SignatureSet {
	return session.NewSignatureSet(s.f.Snapshot, s.nonce, s.root, nil)
}

// sig is slot's honest signature over the setup's root.
func (s *sigSetup) sig(t *testing.T, slot uint32) *sessionpb.StateSignature {
	t.Helper()
	ss, err := session.SignState(s.f.SlotKey(slot), s.f.Snapshot.ChainId, s.f.Snapshot.EscrowId, s.nonce, s.root, slot)
	require.NoError(t, err)
	return ss
}

func TestSignatureSetAddRefusesOtherStates(t *testing.T) {
	t.Parallel()
	s := newSigSetup(t, 3)
	set := s.set()
	esc := s.sig(t, 0)
	esc.EscrowId++
	nonce := s.sig(t, 0)
	nonce.Nonce++
	root, err := session.SignState(s.f.SlotKey(0), s.f.Snapshot.ChainId, s.f.Snapshot.EscrowId, s.nonce, sessiontest.Hash("other"), 0)
	require.NoError(t, err)
	outside := s.sig(t, 0)
	outside.Slot = 3
	for _, tc := range []struct {
		name   string
		ss     *sessionpb.StateSignature
		reason session.Reason
		detail string
	}{
		{"nil", nil, session.ReasonMalformed, "no signature"},
		{"another escrow", esc, session.ReasonEscrow, "for escrow 8, expected 7"},
		{"another nonce", nonce, session.ReasonNonce, "at nonce 13, collecting nonce 12"},
		{"another root", root, session.ReasonRoot, "over another root at nonce 12"},
		{"slot outside the group", outside, session.ReasonMalformed, "slot 3 is outside the group of 3"},
	} {
		err := set.Add(tc.ss)
		require.ErrorIs(t, err, tc.reason, tc.name)
		require.ErrorContains(t, err, tc.detail, tc.name)
	}
	require.Zero(t, set.Len(), "nothing refused is kept")
	require.False(t, set.Has(0))
}

func TestSignatureSetKeepsTheFirstPerSlot(t *testing.T) {
	t.Parallel()
	s := newSigSetup(t, 3)
	set := s.set()
	require.NoError(t, set.Add(s.sig(t, 1)))
	require.NoError(t, set.Add(s.sig(t, 1)), "a second signature for a slot is no error")
	require.Equal(t, 1, set.Len())
	require.True(t, set.Has(1))
	require.False(t, set.Has(0))
}

// An invalid signature passes Add's cheap checks but not Quorum's
// verification: it is dropped, reported, and its slot can be filled again.
func TestSignatureSetDropsInvalidOnQuorum(t *testing.T) {
	t.Parallel()
	s := newSigSetup(t, 3)
	set := s.set()
	var dropped []uint32
	set.Dropped = func(slot uint32, err error) {
		require.ErrorIs(t, err, session.ReasonUnauthorized)
		dropped = append(dropped, slot)
	}
	forged, err := session.SignState(s.f.SlotKey(1), s.f.Snapshot.ChainId, s.f.Snapshot.EscrowId, s.nonce, s.root, 0)
	require.NoError(t, err)
	require.NoError(t, set.Add(forged), "slot 1's key signing for slot 0 passes the cheap checks")
	require.NoError(t, set.Add(s.sig(t, 1)))
	require.NoError(t, set.Add(s.sig(t, 2)))
	require.Equal(t, 3, set.Len())

	require.False(t, set.Quorum(), "2 valid of 3 is no quorum")
	require.Equal(t, []uint32{0}, dropped)
	require.False(t, set.Has(0), "the forged signature is gone")
	require.Equal(t, 2, set.Len())

	require.NoError(t, set.Add(s.sig(t, 0)), "slot 0 can be filled again")
	require.True(t, set.Quorum())
	require.Equal(t, []uint32{0}, dropped, "valid signatures are never dropped")
}

// Quorum is more than 2/3 of the group's slots (DESIGN: settlement quorum),
// checked at both sides of the boundary for several group sizes.
func TestSignatureSetQuorumBoundaries(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ signed, group int }{
		{1, 1}, {1, 2}, {2, 2}, {2, 3}, {3, 3}, {2, 4}, {3, 4},
		{4, 6}, {5, 6}, {4, 7}, {5, 7}, {6, 9}, {7, 9},
	} {
		want := 3*tc.signed > 2*tc.group
		require.Equal(t, want, session.HasQuorum(tc.signed, tc.group), "%d of %d", tc.signed, tc.group)
		s := newSigSetup(t, tc.group)
		set := s.set()
		for slot := range uint32(tc.signed) {
			require.NoError(t, set.Add(s.sig(t, slot)))
		}
		require.Equal(t, want, set.Quorum(), "%d of %d signed", tc.signed, tc.group)
	}
	for _, tc := range []struct{ signed, group int }{{2, 3}, {4, 6}} {
		require.False(t, session.HasQuorum(tc.signed, tc.group), "%d of %d is exactly 2/3: not more", tc.signed, tc.group)
	}
	for _, tc := range []struct{ signed, group int }{{3, 4}, {5, 7}} {
		require.True(t, session.HasQuorum(tc.signed, tc.group), "%d of %d", tc.signed, tc.group)
	}
}

func TestQuorumSizeIsTheLeastQuorum(t *testing.T) {
	t.Parallel()
	for n := 1; n <= session.MaxGroupSize; n++ {
		q := session.QuorumSize(n)
		require.True(t, session.HasQuorum(q, n), "group %d", n)
		require.False(t, session.HasQuorum(q-1, n), "group %d", n)
	}
}

func TestSignatureSetAttachInSlotOrder(t *testing.T) {
	t.Parallel()
	s := newSigSetup(t, 4)
	set := s.set()
	for _, slot := range []uint32{3, 0, 2} {
		require.NoError(t, set.Add(s.sig(t, slot)))
	}
	m := &sessionpb.Settlement{Nonce: s.nonce, StateRoot: s.root}
	require.NoError(t, set.Attach(m))
	require.Empty(t, m.Signatures, "nothing is verified before Quorum")

	require.True(t, set.Quorum())
	require.NoError(t, set.Attach(m))
	var slots []uint32
	for _, sig := range m.Signatures {
		slots = append(slots, sig.Slot)
		require.True(t, bytes.Equal(s.sig(t, sig.Slot).Sig.Sig, sig.Sig.Sig), "slot %d carries its own signature", sig.Slot)
	}
	require.Equal(t, []uint32{0, 2, 3}, slots)

	err := set.Attach(&sessionpb.Settlement{Nonce: s.nonce + 1, StateRoot: s.root})
	require.ErrorIs(t, err, session.ReasonRoot, "another nonce")
	err = set.Attach(&sessionpb.Settlement{Nonce: s.nonce, StateRoot: sessiontest.Hash("other")})
	require.ErrorIs(t, err, session.ReasonRoot, "another root")
}

func TestSignatureSetReset(t *testing.T) {
	t.Parallel()
	s := newSigSetup(t, 3)
	set := s.set()
	for slot := range uint32(3) {
		require.NoError(t, set.Add(s.sig(t, slot)))
	}
	require.True(t, set.Quorum())
	s.nonce, s.root = 13, sessiontest.Hash("root", 13)
	set.Reset(s.nonce, s.root)
	require.Equal(t, uint64(13), set.Nonce())
	require.Zero(t, set.Len())
	require.False(t, set.Quorum())
	require.ErrorIs(t, set.Add(newSigSetup(t, 3).sig(t, 0)), session.ReasonNonce, "a signature of the old nonce")
	require.NoError(t, set.Add(s.sig(t, 0)))
}

func TestReservation(t *testing.T) {
	t.Parallel()
	got, err := session.Reservation(10, 20, 3)
	require.NoError(t, err)
	require.Equal(t, uint64(90), got)
	for _, tc := range []struct{ in, max, price uint64 }{
		{math.MaxUint64, 1, 1},      // the token count overflows
		{math.MaxUint64 / 2, 1, 3},  // the product overflows
		{1 << 32, 1 << 32, 1 << 32}, // both large
		{math.MaxUint64, 0, 2},      // one side alone
		{0, math.MaxUint64, math.MaxUint64},
	} {
		_, err := session.Reservation(tc.in, tc.max, tc.price)
		require.ErrorIs(t, err, session.ReasonOverflow, "%+v", tc)
		require.ErrorContains(t, err, "overflows")
	}
	got, err = session.Reservation(math.MaxUint64-1, 1, 1)
	require.NoError(t, err, "exactly MaxUint64 fits")
	require.Equal(t, uint64(math.MaxUint64), got)
}

func TestCharge(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name                     string
		in, out, price, reserved uint64
		want                     uint64
	}{
		{"under the reservation", 10, 5, 3, 90, 45},
		{"at the reservation", 10, 20, 3, 90, 90},
		{"capped at the reservation", 10, 50, 3, 90, 90},
		{"token count overflows", math.MaxUint64, 1, 1, 90, 90},
		{"cost overflows", math.MaxUint64 / 2, 1, 3, 90, 90},
		{"nothing used", 0, 0, 3, 90, 0},
	} {
		require.Equal(t, tc.want, session.Charge(tc.in, tc.out, tc.price, tc.reserved), tc.name)
	}
}
