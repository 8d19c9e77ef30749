package session_test

import (
	"math/rand"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
)

type oneGrant struct {
	holder, signer signing.Address
	kind           session.Kind
}

func (g oneGrant) MayActFor(holder, signer signing.Address, kind session.Kind) bool {
	return holder == g.holder && signer == g.signer && kind == g.kind
}

// Who may call a host's routes about an escrow: the creator (or a key it
// granted for diffs), and for most routes a member (or a key it granted for
// state signatures). A grant of another kind admits nothing.
func TestActsForCreatorAndMember(t *testing.T) {
	t.Parallel()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	warm, err := signing.GenerateKey(rand.New(rand.NewSource(9)))
	require.NoError(t, err)
	gw, host := f.Gateway.Address(), f.Hosts[1].Address()

	require.True(t, session.ActsForCreator(f.Snapshot, gw, nil))
	require.False(t, session.ActsForCreator(f.Snapshot, host, nil))
	require.True(t, session.ActsForMember(f.Snapshot, host, nil))
	require.False(t, session.ActsForMember(f.Snapshot, gw, nil))
	require.False(t, session.ActsForCreator(f.Snapshot, warm.Address(), nil))

	require.True(t, session.ActsForCreator(f.Snapshot, warm.Address(), oneGrant{gw, warm.Address(), session.KindDiff}))
	require.False(t, session.ActsForCreator(f.Snapshot, warm.Address(), oneGrant{gw, warm.Address(), session.KindState}))
	require.False(t, session.ActsForMember(f.Snapshot, warm.Address(), oneGrant{gw, warm.Address(), session.KindDiff}))
	require.True(t, session.ActsForMember(f.Snapshot, warm.Address(), oneGrant{host, warm.Address(), session.KindState}))
	require.False(t, session.ActsForMember(f.Snapshot, warm.Address(), oneGrant{host, warm.Address(), session.KindFinish}))
}

// Includable says why a tx cannot be carried, with a typed reason.
func TestIncludableSaysWhy(t *testing.T) {
	t.Parallel()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	seq := f.Sequencer()
	_, err := seq.Next(sessiontest.Start(1, 10, 50))
	require.NoError(t, err)
	exec := seq.Replica.Executor(1)
	voter := (exec + 1) % 3
	s := seq.Replica

	require.NoError(t, s.Includable(f.Confirm(exec, 1, 5)))
	err = s.Includable(f.Finish(exec, 99, 1, 1))
	require.ErrorIs(t, err, session.ReasonStatus)
	require.ErrorContains(t, err, "inference 99 is not live in this session")
	err = s.Includable(f.Validate(voter, 1, true))
	require.ErrorIs(t, err, session.ReasonStatus)
	require.ErrorContains(t, err, "inference 1 is INFERENCE_STATUS_PENDING; a Validation applies only to one that is")
	_, err = seq.Next(f.Timeout(voter, 1))
	require.NoError(t, err)
	err = s.Includable(f.Timeout(voter, 1))
	require.ErrorIs(t, err, session.ReasonDuplicate)
	outside := f.Confirm(exec, 1, 5)
	outside.Slot = 7
	require.ErrorIs(t, s.Includable(outside), session.ReasonMalformed)
	require.ErrorIs(t, s.Includable(&sessionpb.Tx{Body: &sessionpb.Tx_Start{Start: &sessionpb.StartInference{InferenceId: 2}}}), session.ReasonMalformed)
}
