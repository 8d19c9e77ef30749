package session_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
)

// A vote from a slot that already voted can never apply again, so mempools
// must drop it rather than carry it forever (a host would otherwise count
// it as its own uncollected tx and withhold its signatures).
func TestMayIncludeDropsVotesFromSlotsThatVoted(t *testing.T) {
	t.Parallel()
	o := sessiontest.DefaultOptions()
	o.ValidationRateBps = 10000
	f := sessiontest.New(1, o)
	seq := f.Sequencer()
	_, err := seq.Next(sessiontest.Start(1, 10, 50))
	require.NoError(t, err)
	exec := seq.Replica.Executor(1)
	voter := (exec + 1) % 3
	other := (exec + 2) % 3

	timeout := f.Timeout(voter, 1)
	require.True(t, seq.Replica.MayInclude(timeout))
	_, err = seq.Next(timeout)
	require.NoError(t, err)
	require.False(t, seq.Replica.MayInclude(f.Timeout(voter, 1)), "a second timeout vote from the same slot")
	require.True(t, seq.Replica.MayInclude(f.Timeout(other, 1)))

	_, err = seq.Next(f.Confirm(exec, 1, sessiontest.Timestamp(1)), f.Finish(exec, 1, 10, 20))
	require.NoError(t, err)
	invalid := f.Validate(voter, 1, false)
	require.True(t, seq.Replica.MayInclude(invalid))
	_, err = seq.Next(invalid) // challenged: the others may still vote
	require.NoError(t, err)
	require.False(t, seq.Replica.MayInclude(f.Validate(voter, 1, true)), "a second validation vote from the same slot")
	require.True(t, seq.Replica.MayInclude(f.Validate(other, 1, true)))
	outside := f.Validate(other, 1, true)
	outside.Slot = 7
	require.False(t, seq.Replica.MayInclude(outside), "a slot outside the group")

	// Before a challenge, a validation from a slot the sampling left out
	// can never apply.
	o.ValidationRateBps = 0
	f = sessiontest.New(1, o)
	seq = f.Sequencer()
	_, err = seq.Next(sessiontest.Start(1, 10, 50))
	require.NoError(t, err)
	_, err = seq.Next(f.Confirm(exec, 1, sessiontest.Timestamp(1)), f.Finish(exec, 1, 10, 20))
	require.NoError(t, err)
	r, _ := seq.Replica.Record(1)
	require.Empty(t, seq.Replica.SampledSlots(r))
	require.False(t, seq.Replica.MayInclude(f.Validate(voter, 1, false)), "a validation from a slot that was not sampled")
}

// A pending diff answers MayInclude for the state it leads to, before it is
// committed, exactly as the session answers once it is.
func TestPendingMayIncludeAsksTheNextState(t *testing.T) {
	t.Parallel()
	f := sessiontest.New(2, sessiontest.DefaultOptions())
	seq := f.Sequencer()
	_, err := seq.Next(sessiontest.Start(1, 10, 50))
	require.NoError(t, err)
	_, err = seq.Next(sessiontest.Start(2, 10, 50))
	require.NoError(t, err)
	exec := seq.Replica.Executor(1)
	voter := (exec + 1) % 3
	voter2 := (seq.Replica.Executor(2) + 1) % 3
	candidates := []*sessionpb.Tx{
		f.Confirm(exec, 1, sessiontest.Timestamp(1)),
		f.Finish(exec, 1, 10, 20),
		f.Timeout(voter, 1),
		f.Validate(voter, 1, true),
		f.Timeout(voter2, 2),
		f.Confirm(seq.Replica.Executor(2), 2, sessiontest.Timestamp(2)),
	}
	before := make([]bool, len(candidates))
	for i, tx := range candidates {
		before[i] = seq.Replica.MayInclude(tx)
	}

	d, err := seq.Build(f.Confirm(exec, 1, sessiontest.Timestamp(1)), f.Finish(exec, 1, 10, 20), f.Timeout(voter2, 2))
	require.NoError(t, err)
	p, err := seq.Replica.Prepare(d)
	require.NoError(t, err)
	ahead := make([]bool, len(candidates))
	for i, tx := range candidates {
		ahead[i] = p.MayInclude(tx)
		require.Equal(t, before[i], seq.Replica.MayInclude(tx), "preparing changes nothing")
	}
	require.NoError(t, p.Commit())
	changed := 0
	for i, tx := range candidates {
		require.Equal(t, seq.Replica.MayInclude(tx), ahead[i], "candidate %d", i)
		if ahead[i] != before[i] {
			changed++
		}
	}
	require.GreaterOrEqual(t, changed, 4, "the diff moved inference 1 from pending to finished and voted on 2")
}

// A memo of checked signatures changes no outcome: a diff whose host txs
// were checked on arrival applies exactly as without it, and a forged or
// altered tx is refused even when a tx like it is in the memo.
func TestMemoChangesNoOutcome(t *testing.T) {
	t.Parallel()
	f := sessiontest.New(3, sessiontest.DefaultOptions())
	seq := f.Sequencer()
	d1, err := seq.Next(sessiontest.Start(1, 10, 50))
	require.NoError(t, err)
	plain, memoed := f.NewSession(nil), f.NewSession(nil)
	memo := signing.NewMemo(64)
	memoed.UseMemo(memo)
	for _, s := range []*session.Session{plain, memoed} {
		_, err := s.Apply(d1)
		require.NoError(t, err)
	}

	exec := seq.Replica.Executor(1)
	confirm, finish := f.Confirm(exec, 1, sessiontest.Timestamp(1)), f.Finish(exec, 1, 10, 20)
	for _, tx := range []*sessionpb.Tx{confirm, finish} {
		require.NoError(t, session.VerifyHostTxWith(f.Snapshot, tx, nil, memo))
	}
	require.Equal(t, 2, memo.Len())

	raw, err := finish.Marshal()
	require.NoError(t, err)
	altered := &sessionpb.Tx{}
	require.NoError(t, altered.Unmarshal(raw))
	altered.GetFinish().OutputTokens = 21 // same signature, other bytes
	good, err := seq.Build(confirm, finish)
	require.NoError(t, err)
	bad := &sessionpb.Diff{EscrowId: good.EscrowId, Nonce: good.Nonce, Txs: []*sessionpb.Tx{confirm, altered}, PostStateRoot: good.PostStateRoot}
	require.NoError(t, session.SignDiff(f.Gateway, sessiontest.ChainID, bad))
	for _, s := range []*session.Session{plain, memoed} {
		_, err := s.Apply(bad)
		var de *session.DiffError
		require.ErrorAs(t, err, &de)
		require.Equal(t, session.ReasonSignature, de.Reason)
	}

	rp, err := plain.Apply(good)
	require.NoError(t, err)
	rm, err := memoed.Apply(good)
	require.NoError(t, err)
	require.Equal(t, rp.Root, rm.Root)
}

// A host withholds its signature over pooled txs the gateway leaves out,
// gossiped ones included, so only a tx the next diff could carry on its own
// may count: anything else would let one member stall the group with a tx
// no gateway can include. CheckHostTx answers exactly as apply would, and
// the answer matches the diff's refusal.
func TestCheckHostTxAnswersAsApplyWould(t *testing.T) {
	t.Parallel()
	f := sessiontest.New(3, sessiontest.DefaultOptions())
	seq := f.Sequencer()
	_, err := seq.Next(sessiontest.Start(1, 10, 50))
	require.NoError(t, err)
	exec := seq.Replica.Executor(1)
	voter := (exec + 1) % 3
	at := sessiontest.Timestamp(1)

	cases := []struct {
		name string
		tx   *sessionpb.Tx
		want error // nil: the next diff carries it
	}{
		{"the executor's confirm", f.Confirm(exec, 1, at), nil},
		{"a peer's timeout vote", f.Timeout(voter, 1), nil},
		{"a finish before its confirm", f.Finish(exec, 1, 10, 20), session.ReasonStatus},
		{"a confirm from another slot", f.Signed(voter, &sessionpb.Tx{Body: &sessionpb.Tx_Confirm{Confirm: &sessionpb.ConfirmStart{InferenceId: 1, ConfirmedAt: at}}}), session.ReasonUnauthorized},
		{"a confirm without a time", f.Confirm(exec, 1, 0), session.ReasonMalformed},
		{"the executor voting itself out", f.Timeout(exec, 1), session.ReasonSelfVote},
		{"an inference never started", f.Timeout(voter, 9), session.ReasonStatus},
	}
	for _, tc := range cases {
		err := seq.Replica.CheckHostTx(tc.tx)
		_, applyErr := seq.Build(tc.tx)
		if tc.want == nil {
			require.NoError(t, err, tc.name)
			require.NoError(t, applyErr, tc.name)
			continue
		}
		require.ErrorIs(t, err, tc.want, tc.name)
		require.ErrorIs(t, applyErr, tc.want, "%s: the diff refuses it the same way", tc.name)
	}

	require.True(t, seq.Replica.MayInclude(cases[2].tx), "MayInclude keeps a finish for its confirm to join")
	require.True(t, seq.Replica.MayInclude(cases[3].tx), "MayInclude does not look at the slot")
	require.ErrorIs(t, seq.Replica.CheckHostTx(sessiontest.Start(2, 10, 50)), session.ReasonMalformed, "a gateway tx is no host tx")

	// A pending diff answers for the state it leads to.
	d, err := seq.Build(f.Confirm(exec, 1, at))
	require.NoError(t, err)
	p, err := seq.Replica.Prepare(d)
	require.NoError(t, err)
	require.NoError(t, p.CheckHostTx(f.Finish(exec, 1, 10, 20)), "the finish applies once the confirm is in")
	require.ErrorIs(t, p.CheckHostTx(f.Confirm(exec, 1, at)), session.ReasonStatus)
	require.ErrorIs(t, seq.Replica.CheckHostTx(f.Finish(exec, 1, 10, 20)), session.ReasonStatus, "the session itself is unchanged")
}
