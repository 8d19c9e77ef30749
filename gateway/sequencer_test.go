package gateway

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
)

func vote(id uint64) *sessionpb.Tx {
	return &sessionpb.Tx{Body: &sessionpb.Tx_Validation{Validation: &sessionpb.Validation{InferenceId: id, Valid: true}}}
}

// rejectVotes is a fake replica: the diff is refused at its first
// Validation naming an inference in bad, as a vote after the one that
// resolved its record is.
func rejectVotes(bad map[uint64]bool) func([]*sessionpb.Tx) (*sessionpb.Diff, *session.Pending, error) {
	return func(txs []*sessionpb.Tx) (*sessionpb.Diff, *session.Pending, error) {
		for i, tx := range txs {
			if v, ok := tx.Body.(*sessionpb.Tx_Validation); ok && bad[v.Validation.InferenceId] {
				return nil, nil, &session.DiffError{Nonce: 1, Tx: i, Reason: session.ReasonStatus, Detail: "resolved"}
			}
		}
		return &sessionpb.Diff{Nonce: 1, Txs: txs}, nil, nil
	}
}

// A diff whose carried txs mostly no longer apply (a challenge resolved by
// its first votes in a group of 16, the rest of the votes behind it) still
// goes out with the ones that do. It once gave up after dropping half.
func TestAssembleDropsEveryStaleCarriedTx(t *testing.T) {
	start := &sessionpb.Tx{Body: &sessionpb.Tx_Start{Start: &sessionpb.StartInference{InferenceId: 100}}}
	var carried []*sessionpb.Tx
	bad := map[uint64]bool{}
	for id := uint64(1); id <= 12; id++ {
		carried = append(carried, vote(id))
		if id > 3 {
			bad[id] = true
		}
	}
	var dropped []uint64
	d, _, err := assemble([]*sessionpb.Tx{start}, carried, true, rejectVotes(bad), func(tx *sessionpb.Tx, err error) {
		require.ErrorIs(t, err, session.ReasonStatus)
		dropped = append(dropped, tx.GetValidation().InferenceId)
	})
	require.NoError(t, err)
	require.Equal(t, []uint64{4, 5, 6, 7, 8, 9, 10, 11, 12}, dropped)
	require.Len(t, d.Txs, 1+3+1, "the start, the three votes that apply and the finalize")
	require.Same(t, start, d.Txs[0])
	for i, id := range []uint64{1, 2, 3} {
		require.Equal(t, id, d.Txs[1+i].GetValidation().InferenceId)
	}
	require.NotNil(t, d.Txs[4].GetFinalize())
	require.Len(t, carried, 12, "the caller's slice is left as it was")
}

// Only a carried tx is dropped: an error in the gateway's own start or in
// anything that is not a DiffError comes back as it is.
func TestAssembleReturnsOtherErrors(t *testing.T) {
	start := &sessionpb.Tx{Body: &sessionpb.Tx_Start{Start: &sessionpb.StartInference{InferenceId: 100}}}
	noDrop := func(*sessionpb.Tx, error) { t.Fatal("nothing should be dropped") }

	startErr := &session.DiffError{Nonce: 1, Tx: 0, Reason: session.ReasonFunds, Detail: "too poor"}
	_, _, err := assemble([]*sessionpb.Tx{start}, []*sessionpb.Tx{vote(1)}, false, func([]*sessionpb.Tx) (*sessionpb.Diff, *session.Pending, error) {
		return nil, nil, startErr
	}, noDrop)
	require.ErrorIs(t, err, startErr)

	other := errors.New("disk on fire")
	_, _, err = assemble(nil, []*sessionpb.Tx{vote(1)}, false, func([]*sessionpb.Tx) (*sessionpb.Diff, *session.Pending, error) {
		return nil, nil, other
	}, noDrop)
	require.ErrorIs(t, err, other)

	finErr := &session.DiffError{Nonce: 1, Tx: 1, Reason: session.ReasonPhase, Detail: "no"}
	_, _, err = assemble(nil, []*sessionpb.Tx{vote(1)}, true, func([]*sessionpb.Tx) (*sessionpb.Diff, *session.Pending, error) {
		return nil, nil, finErr
	}, noDrop)
	require.ErrorIs(t, err, finErr, "an error in the finalize is not blamed on a carried tx")
}
