package session_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session/sessiontest"
)

// A vote from a slot that already voted can never apply again, so mempools
// must drop it rather than carry it forever (a host would otherwise count
// it as its own uncollected tx and withhold its signatures).
func TestMayIncludeDropsVotesFromSlotsThatVoted(t *testing.T) {
	t.Parallel()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
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
}
