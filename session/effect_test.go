package session_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
)

// Host txs with one effect key are variants of which at most one applies:
// after one of them, every other is refused. Txs with other keys differ in
// kind, slot or inference.
func TestTxEffectKeyGroupsTxsOfWhichOneApplies(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.step(t, sessiontest.Start(1, 10, 10))
	exec := b.gw.Replica.Executor(1)
	voter := (exec + 1) % 3
	b.step(t, b.f.Confirm(exec, 1, 5), b.f.Finish(exec, 1, 10, 5))

	vote := func(valid bool, hash byte) *sessionpb.Tx {
		h := make([]byte, 32)
		h[0] = hash
		return b.f.Signed(voter, &sessionpb.Tx{Body: &sessionpb.Tx_Validation{Validation: &sessionpb.Validation{InferenceId: 1, Valid: valid, ResponseHash: h}}})
	}
	a, c := vote(true, 1), vote(false, 2)
	require.NotEqual(t, session.TxKey(a), session.TxKey(c))
	require.Equal(t, session.TxEffectKey(a), session.TxEffectKey(c), "two votes of one slot on one inference")
	b.step(t, a)
	_, err := b.gw.Next(c)
	require.ErrorIs(t, err, session.ReasonDuplicate, "the other variant no longer applies")

	for _, other := range []*sessionpb.Tx{
		b.f.Validate((voter+1)%3, 1, true), // another slot
		b.f.Validate(voter, 2, true),       // another inference
		b.f.Timeout(voter, 1),              // another kind
	} {
		require.NotEqual(t, session.TxEffectKey(a), session.TxEffectKey(other))
	}
}

// HostTxKind names the four host txs and nothing else: the gateway's start
// and finalize are not host txs, whatever slot they carry.
func TestHostTxKindNamesOnlyHostTxs(t *testing.T) {
	for want, tx := range map[string]*sessionpb.Tx{
		"confirm":    {Body: &sessionpb.Tx_Confirm{Confirm: &sessionpb.ConfirmStart{}}},
		"finish":     {Body: &sessionpb.Tx_Finish{Finish: &sessionpb.FinishInference{}}},
		"validation": {Body: &sessionpb.Tx_Validation{Validation: &sessionpb.Validation{}}},
		"timeout":    {Body: &sessionpb.Tx_Timeout{Timeout: &sessionpb.TimeoutInference{}}},
	} {
		require.Equal(t, want, session.HostTxKind(tx))
	}
	for _, tx := range []*sessionpb.Tx{
		{Body: &sessionpb.Tx_Start{Start: &sessionpb.StartInference{}}, Slot: 1},
		{Body: &sessionpb.Tx_Finalize{Finalize: &sessionpb.FinalizeRound{}}, Slot: 1},
		{},
	} {
		require.Empty(t, session.HostTxKind(tx), "%v", tx)
	}
}
