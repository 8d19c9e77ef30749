package store_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/store"
)

func TestShouldSnapshot(t *testing.T) {
	t.Parallel()
	active, settled := sessionpb.Phase_PHASE_ACTIVE, sessionpb.Phase_PHASE_SETTLEMENT
	for _, tc := range []struct {
		every, nonce uint64
		phase        sessionpb.Phase
		want         bool
	}{
		{0, 500, active, true}, // default K = 500
		{0, 499, active, false},
		{0, 1000, active, true},
		{0, 0, active, false},
		{0, 7, settled, true}, // at settlement, whatever the nonce
		{10, 20, active, true},
		{10, 25, active, false},
	} {
		require.Equal(t, tc.want, store.SnapshotPolicy{Every: tc.every}.ShouldSnapshot(tc.nonce, tc.phase), "%+v", tc)
	}
	require.True(t, store.ShouldSnapshot(500, active))
}

func TestErrorsMatchTheirKind(t *testing.T) {
	t.Parallel()
	fork := store.NewForkError(7, 41, []byte("a"), []byte("b"))
	require.ErrorIs(t, fork, store.ErrFork)
	require.Contains(t, fork.Error(), "diff 41 of escrow 7 refused")
	gap := &store.GapError{EscrowID: 7, Nonce: 45, Last: 41}
	require.ErrorIs(t, gap, store.ErrNonceGap)
	require.Equal(t, "diff 45 of escrow 7 refused: the store holds nonces 1..41, so the next diff must be 42", gap.Error())
	wrapped := store.Wrap(store.ErrUnavailable, errors.New("connection refused"), "escrow %d is stored in Postgres", 42)
	require.ErrorIs(t, wrapped, store.ErrUnavailable)
	require.NotErrorIs(t, wrapped, store.ErrNotFound)
	require.Equal(t, "escrow 42 is stored in Postgres: connection refused", wrapped.Error())

	batch := store.BatchResult([]error{nil, gap, nil, fork})
	require.ErrorIs(t, batch, store.ErrFork)
	require.ErrorIs(t, batch, store.ErrNonceGap)
	require.Equal(t, []error{nil, gap, nil, fork}, store.DiffErrors(batch, 4))
	require.NoError(t, store.BatchResult([]error{nil, nil}))
	whole := errors.New("disk on fire")
	require.Equal(t, []error{whole, whole}, store.DiffErrors(whole, 2))
}
