package session_test

import (
	"math/rand"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
)

// stateBytes is everything a session holds, for comparing two of them.
func stateBytes(t *testing.T, s *session.Session) []byte {
	t.Helper()
	raw, err := s.State().Marshal()
	require.NoError(t, err)
	return raw
}

// diffs builds n diffs of inferences run to the end, on the bundle's
// gateway replica only.
func (b *bundle) diffs(t *testing.T, n int) []*sessionpb.Diff {
	t.Helper()
	var out []*sessionpb.Diff
	next := func(txs ...*sessionpb.Tx) {
		d, err := b.gw.Next(txs...)
		require.NoError(t, err)
		out = append(out, d)
	}
	for len(out) < n {
		id := b.gw.Replica.Nonce() + 1
		exec := b.gw.Replica.Executor(id)
		next(sessiontest.Start(id, 10, 20))
		next(b.f.Confirm(exec, id, sessiontest.Timestamp(id)), b.f.Finish(exec, id, 10, 5))
	}
	return out[:n]
}

// DESIGN invariant 4: a staged run changes nothing until it is committed,
// and then the session is where applying the diffs one by one leads.
func TestRunChangesNothingUntilCommit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ds := b.diffs(t, 5)
	s := b.replicas[0]
	before, root := stateBytes(t, s), s.Root()

	run := s.NewRun()
	for _, d := range ds {
		p, err := run.Prepare(d)
		require.NoError(t, err, "diff %d", d.Nonce)
		require.Equal(t, d.PostStateRoot, p.Result().Root[:], "diff %d is checked on the diffs before it", d.Nonce)
		require.Equal(t, before, stateBytes(t, s), "staging diff %d changes nothing", d.Nonce)
		require.Equal(t, root, s.Root())
		require.Zero(t, s.Nonce())
	}
	require.NoError(t, run.Commit())
	one := b.replicas[1]
	for _, d := range ds {
		_, err := one.Apply(d)
		require.NoError(t, err)
	}
	require.Equal(t, one.Root(), s.Root())
	require.Equal(t, stateBytes(t, one), stateBytes(t, s))
	require.Error(t, run.Commit(), "a run commits once")
}

func TestRunDiscardedChangesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ds := b.diffs(t, 4)
	s := b.replicas[0]
	before := stateBytes(t, s)
	run := s.NewRun()
	for _, d := range ds {
		_, err := run.Prepare(d)
		require.NoError(t, err)
	}
	// The run is dropped, as a host drops it when its write fails.
	require.Equal(t, before, stateBytes(t, s))
	require.Zero(t, s.Nonce())
	// The same diffs then apply as if never staged.
	for _, d := range ds {
		_, err := s.Apply(d)
		require.NoError(t, err)
	}
	require.Equal(t, ds[3].PostStateRoot, rootBytes(s))
}

// A refused diff is not added to the run; the diffs before it still commit.
func TestRunKeepsTheDiffsBeforeARefusal(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ds := b.diffs(t, 3)
	s := b.replicas[0]
	run := s.NewRun()
	_, err := run.Prepare(ds[0])
	require.NoError(t, err)
	_, err = run.Prepare(ds[2])
	require.ErrorIs(t, err, session.ReasonNonce, "a gap in the run")
	require.ErrorContains(t, err, "nonce must be 2 (latest+1), got 3")
	bad := *ds[1]
	bad.PostStateRoot = sessiontest.Hash("forged")
	require.NoError(t, session.SignDiff(b.f.Gateway, b.f.Snapshot.ChainId, &bad))
	_, err = run.Prepare(&bad)
	require.ErrorIs(t, err, session.ReasonRoot)
	_, err = run.Prepare(ds[1])
	require.NoError(t, err, "the refusals left the run as it was")
	require.NoError(t, run.Commit())
	require.Equal(t, uint64(2), s.Nonce())
	require.Equal(t, ds[1].PostStateRoot, rootBytes(s))
}

func TestRunRefusesToCommitOnAMovedSession(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ds := b.diffs(t, 2)
	s := b.replicas[0]
	run := s.NewRun()
	first, err := run.Prepare(ds[0])
	require.NoError(t, err)
	second, err := run.Prepare(ds[1])
	require.NoError(t, err)
	require.ErrorContains(t, second.Commit(), "diff 2 is staged on diff 1, which is not committed")

	_, err = s.Apply(ds[0]) // the session moves under the run
	require.NoError(t, err)
	before := stateBytes(t, s)
	err = run.Commit()
	require.ErrorIs(t, err, session.ReasonNonce)
	require.ErrorContains(t, err, "session moved to nonce 1 after this diff was prepared on nonce 0")
	require.Equal(t, before, stateBytes(t, s), "a refused commit changes nothing")
	require.Error(t, first.Commit())
}

// Pending's questions about the state a staged diff leads to see through
// the diffs staged before it.
func TestRunPendingSeesTheRun(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ds := b.diffs(t, 2) // inference 1: started, then finished
	s := b.replicas[0]
	run := s.NewRun()
	_, err := run.Prepare(ds[0])
	require.NoError(t, err)
	last, err := run.Prepare(ds[1])
	require.NoError(t, err)
	exec := b.gw.Replica.Executor(1)
	voter := (exec + 1) % 3
	vote := b.f.Validate(voter, 1, true)
	require.NoError(t, last.CheckHostTx(vote), "inference 1 is FINISHED after the run")
	require.True(t, last.MayInclude(vote))
	require.Error(t, s.CheckHostTx(vote), "the session has not started it yet")
}

// Random sessions staged in runs of random length, the closing FinalizeRounds
// among them, reach every root and seal every record that applying the same
// diffs one by one does.
func TestPropertyRunsAgreeWithApply(t *testing.T) {
	t.Parallel()
	seeds := int64(20)
	if testing.Short() {
		seeds = 4
	}
	for seed := int64(1); seed <= seeds; seed++ {
		rng := rand.New(rand.NewSource(seed))
		holders := [][]int{{0, 1, 2}, {0, 0, 1}, {0, 1, 2, 3}, {0}}[seed%4]
		f := sessiontest.New(seed, sessiontest.Options{
			EscrowID: uint64(seed), Amount: uint64(20_000 + rng.Intn(200_000)), Holders: holders,
			TokenPrice: uint64(1 + rng.Intn(5)), FeePerNonce: uint64(rng.Intn(7)),
			MaxNonce: 1000, SealGraceNonces: uint64(rng.Intn(6)), SealGraceSeconds: uint64(rng.Intn(10)),
			ValidationRateBps: []uint32{0, 3000, 10000}[seed%3],
		})
		gw := f.Sequencer()
		var ds []*sessionpb.Diff
		for range 20 + rng.Intn(60) {
			d, err := gw.RandomStep(rng)
			require.NoError(t, err)
			ds = append(ds, d)
		}
		for range 2 {
			d, err := gw.Next(sessiontest.Finalize())
			require.NoError(t, err)
			ds = append(ds, d)
		}
		one, runs := f.NewSession(nil), f.NewSession(nil)
		for len(ds) > 0 {
			n := min(len(ds), 1+rng.Intn(6))
			run := runs.NewRun()
			for _, d := range ds[:n] {
				p, err := run.Prepare(d)
				require.NoError(t, err, "seed %d nonce %d", seed, d.Nonce)
				res, err := one.Apply(d)
				require.NoError(t, err)
				require.Equal(t, sealedIDs(res.Sealed), sealedIDs(p.Result().Sealed), "seed %d nonce %d", seed, d.Nonce)
			}
			require.NoError(t, run.Commit())
			require.Equal(t, one.Root(), runs.Root(), "seed %d nonce %d", seed, runs.Nonce())
			require.Equal(t, stateBytes(t, one), stateBytes(t, runs))
			ds = ds[n:]
		}
		require.Equal(t, sessionpb.Phase_PHASE_SETTLEMENT, runs.Phase())
		require.Zero(t, runs.LiveCount())
	}
}

func sealedIDs(rs []*sessionpb.InferenceRecord) []uint64 {
	ids := []uint64{}
	for _, r := range rs {
		ids = append(ids, r.Id)
	}
	return ids
}

func rootBytes(s *session.Session) []byte {
	root := s.Root()
	return root[:]
}
