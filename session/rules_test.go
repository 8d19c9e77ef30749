package session_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
)

// Start reserves (input + max tokens) × price; Finish charges the actual
// tokens capped at the reservation and refunds the surplus.
func TestReserveChargeRefund(t *testing.T) {
	t.Parallel()
	b := setup(t)
	s := b.gw.Replica
	bal0 := s.Balance() // amount - creation fee
	b.step(t, sessiontest.Start(1, 10, 100))
	require.Equal(t, bal0-3-1100, s.Balance(), "fee per nonce and reservation leave the balance")
	require.Equal(t, uint64(1100), s.State().Reserved)

	b.step(t, b.f.Confirm(1, 1, 100), b.f.Finish(1, 1, 10, 40))
	require.Equal(t, bal0-6-500, s.Balance(), "surplus of the reservation is refunded")
	require.Zero(t, s.State().Reserved)
	st := s.State().HostStats[1]
	require.Equal(t, uint64(500), st.Cost)
	require.Equal(t, uint64(1), st.Finished)

	// An executor over-reporting tokens is charged the reservation at most.
	b.step(t, sessiontest.Start(3, 10, 100))
	b.step(t, b.f.Confirm(0, 3, 101), b.f.Finish(0, 3, 10, 5000))
	require.Equal(t, uint64(1100), s.State().HostStats[0].Cost)
}

// Votes are counted by slot over the eligible slots; a strict majority
// invalidates, a tie keeps the executor's work.
func TestChallengeResolvesByEligibleMajority(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *sessiontest.Options) { o.Holders = []int{0, 1, 2, 3} })
	id := b.inference(t, 10, 10, 10) // executor slot 1; eligible: 0, 2, 3
	b.step(t, b.f.Validate(0, id, false))
	r, ok := b.gw.Replica.Record(id)
	require.True(t, ok)
	require.Equal(t, sessionpb.InferenceStatus_INFERENCE_STATUS_CHALLENGED, r.Status)
	b.step(t, b.f.Validate(2, id, true))
	_, ok = b.gw.Replica.Record(id)
	require.True(t, ok, "1 invalid, 1 valid of 3 eligible: unresolved")
	bal := b.gw.Replica.Balance()
	b.step(t, b.f.Validate(3, id, false))
	_, ok = b.gw.Replica.Record(id)
	require.False(t, ok, "2 of 3 eligible voted invalid: invalidated and sealed")
	st := b.gw.Replica.State()
	require.Equal(t, uint64(1), st.HostStats[1].Invalid)
	require.Zero(t, st.HostStats[1].Cost)
	require.Equal(t, bal-3+200, b.gw.Replica.Balance(), "the charged cost goes back to the escrow")
	for _, v := range []int{0, 2, 3} {
		require.Equal(t, uint64(1), st.HostStats[v].ValidationsDone)
	}

	// With two eligible slots a 1-1 split keeps the executor's work.
	b = setup(t)
	id = b.inference(t, 10, 10, 10) // executor slot 1; eligible: 0, 2
	b.step(t, b.f.Validate(0, id, false))
	b.step(t, b.f.Validate(2, id, true))
	_, ok = b.gw.Replica.Record(id)
	require.False(t, ok)
	require.Equal(t, uint64(1), b.gw.Replica.State().HostStats[1].Validated)
}

// warmKeys is a test Authorizer: warm[signer] = holder.
type warmKeys map[signing.Address]signing.Address

func (w warmKeys) MayActFor(holder, signer signing.Address, _ session.Kind) bool {
	return w[signer] == holder
}

func TestWarmKeyThroughAuthorizer(t *testing.T) {
	t.Parallel()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	warm, err := signing.GenerateKey(sessiontestRand(5))
	require.NoError(t, err)
	auth := warmKeys{warm.Address(): f.SlotKey(1).Address()}
	gw := f.Sequencer()
	with := f.NewSession(auth)
	without := f.NewSession(nil)

	d, err := gw.Next(sessiontest.Start(1, 1, 1))
	require.NoError(t, err)
	for _, s := range []*session.Session{with, without} {
		_, err := s.Apply(d)
		require.NoError(t, err)
	}
	// The gateway replica needs the authorizer too to compute the root.
	gw.Replica, err = session.Restore(f.Snapshot, gw.Replica.State(), auth)
	require.NoError(t, err)
	d, err = gw.Next(f.SignedBy(warm, 1, confirmTx(1, 100)))
	require.NoError(t, err)
	_, err = with.Apply(d)
	require.NoError(t, err, "a granted warm key signs for its holder")
	requireRejected(t, without, d, session.ReasonUnauthorized, "may not sign devshard/v1/tx/confirm")
}

// Sealing waits for both the grace nonces and, by the state clock, the grace
// seconds; terminal records take the short path.
func TestSealingGraceAndClock(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *sessiontest.Options) {
		o.SealGraceNonces = 4
		o.SealGraceSeconds = 100
		o.Holders = []int{0, 1, 2}
	})
	s := b.gw.Replica
	const t0 = 1_000_000
	// Three inferences, all confirmed at t0: the clock is t0.
	for id := uint64(1); id <= 3; id++ {
		b.step(t, sessiontest.Start(id, 1, 1))
	}
	b.step(t, b.f.Confirm(1, 1, t0), b.f.Finish(1, 1, 1, 1), b.f.Confirm(2, 2, t0), b.f.Finish(2, 2, 1, 1), b.f.Confirm(0, 3, t0), b.f.Finish(0, 3, 1, 1))
	require.Equal(t, int64(t0), s.Clock())
	for range 10 {
		b.step(t)
	}
	require.Equal(t, 3, s.LiveCount(), "past the grace nonces, but the clock has not moved")

	// One executor claims a time far ahead: the median does not follow it.
	b.step(t, sessiontest.Start(15, 1, 1)) // executor slot 0
	b.step(t, b.f.Confirm(0, 15, t0+10_000))
	require.Equal(t, int64(t0), s.Clock())
	require.Equal(t, 4, s.LiveCount())

	// A second slot moves on: the median reaches t0+100 and 1..3 seal.
	b.step(t, sessiontest.Start(17, 1, 1)) // executor slot 2
	b.step(t, b.f.Confirm(2, 17, t0+100))
	require.Equal(t, int64(t0+100), s.Clock())
	_, live1 := s.Record(1)
	require.False(t, live1)
	require.Equal(t, 2, s.LiveCount(), "15 and 17 stay: still open")
	require.Equal(t, uint64(3), s.State().Sealed.Count)

	// A validated record seals at once, inside its grace, once every
	// sampled slot (here both eligible ones) agreed.
	b.step(t, b.f.Finish(2, 17, 1, 1))
	_, live := s.Record(17)
	require.True(t, live)
	b.step(t, b.f.Validate(0, 17, true))
	_, live = s.Record(17)
	require.True(t, live, "slot 1 was sampled too and has not voted")
	b.step(t, b.f.Validate(1, 17, true))
	_, live = s.Record(17)
	require.False(t, live, "short path")
}

// The live set stays bounded by the grace window however long the session
// runs, so per-diff work does not grow with history.
func TestLiveSetStaysBounded(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *sessiontest.Options) {
		o.SealGraceNonces = 20
		o.SealGraceSeconds = 0
	})
	n := 300
	if testing.Short() {
		n = 60
	}
	for range n {
		b.inference(t, 1, 1, 1)
		require.LessOrEqual(t, b.gw.Replica.LiveCount(), 12)
	}
	require.Greater(t, b.gw.Replica.State().Sealed.Count, uint64(n-20))
}

// Entering SETTLEMENT seals everything: open reservations go back to the
// balance without blame, open challenges resolve by the votes cast under
// the session's threshold, so one unanswered challenge keeps the work.
func TestSettlementPhaseClosesTheBooks(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *sessiontest.Options) { o.Holders = []int{0, 1, 2, 3} })
	b.step(t, sessiontest.Start(1, 10, 10)) // stays pending
	id := b.inference(t, 10, 10, 10)        // id 2, executor slot 2
	b.step(t, b.f.Validate(0, id, false))   // challenged, 1 invalid vote
	b.step(t, sessiontest.Finalize())       // FINALIZING
	bal := b.gw.Replica.Balance()
	b.step(t, sessiontest.Finalize()) // SETTLEMENT
	s := b.gw.Replica
	require.Zero(t, s.LiveCount())
	st := s.State()
	require.Zero(t, st.Reserved)
	require.Equal(t, bal+200, st.Balance, "the pending reservation returns; the challenged work stays charged")
	require.Zero(t, st.HostStats[2].Invalid, "1 invalid vote of 3 eligible slots is below the threshold")
	require.Equal(t, uint64(1), st.HostStats[2].Validated)
	require.Zero(t, st.HostStats[1].Missed, "no timeout votes, no blame")
	requireRejected(t, s, b.forge(t), session.ReasonPhase, "accepts no more diffs")
}

// Prepare changes nothing until Commit, so a caller can persist first and
// publish after (attack 5 at the protocol seam).
func TestPrepareCommitsOnlyOnCommit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	d, err := b.gw.Next(sessiontest.Start(1, 10, 10))
	require.NoError(t, err)
	s := b.replicas[0]
	before, err := s.State().Marshal()
	require.NoError(t, err)
	p, err := s.Prepare(d)
	require.NoError(t, err)
	after, err := s.State().Marshal()
	require.NoError(t, err)
	require.Equal(t, before, after, "prepare leaves the session as it was")
	require.Equal(t, uint64(0), s.Nonce())

	// A caller whose storage failed drops p; the same diff applies later.
	p2, err := s.Prepare(d)
	require.NoError(t, err)
	require.NoError(t, p2.Commit())
	require.Equal(t, b.gw.Replica.Root(), s.Root())
	require.ErrorContains(t, p2.Commit(), "already committed")
	require.ErrorIs(t, p.Commit(), session.ReasonNonce, "a stale prepared diff cannot land")
	require.Equal(t, p2.Result().Root, s.Root())
}

// Sampling follows the snapshot's rate and is the same on every replica.
func TestSampledFollowsRate(t *testing.T) {
	t.Parallel()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	for _, bps := range []uint32{0, 1000, 5000, 10000} {
		f.Snapshot.ValidationRateBps = bps
		hits := 0
		for id := uint64(1); id <= 4000; id++ {
			if session.Sampled(f.Snapshot, sessiontest.Hash("root", id), id, uint32(id%3)) {
				hits++
			}
		}
		want := 4000 * int(bps) / 10000
		require.InDelta(t, want, hits, 150, "rate %d bps", bps)
	}
	f.Snapshot.ValidationRateBps = 5000
	a := session.Sampled(f.Snapshot, sessiontest.Hash("r"), 9, 1)
	require.Equal(t, a, session.Sampled(f.Snapshot, sessiontest.Hash("r"), 9, 1))
}

// Attack 12: MayVote is the rule apply enforces on every vote. A slot may
// vote on an inference unless its participant executes it, through any of
// its slots; here participant 0 holds slots 0 and 1.
func TestMayVoteIsWhatApplyEnforces(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *sessiontest.Options) { o.Holders = []int{0, 0, 1, 2} })
	s := b.gw.Replica
	for id := uint64(1); id <= 4; id++ {
		b.step(t, sessiontest.Start(id, 1, 1)) // a pending inference of each slot
	}
	for id := uint64(1); id <= 4; id++ {
		exec := s.Executor(id)
		for slot := range uint32(4) {
			want := b.f.Holders[slot] != b.f.Holders[exec]
			require.Equal(t, want, s.MayVote(exec, slot), "slot %d on slot %d's work", slot, exec)
			_, err := b.gw.Build(b.f.Timeout(slot, id))
			if want {
				require.NoError(t, err, "slot %d votes on slot %d's work", slot, exec)
			} else {
				require.ErrorIs(t, err, session.ReasonSelfVote, "slot %d on slot %d's work", slot, exec)
			}
		}
	}
	require.False(t, s.MayVote(0, 4), "a slot outside the group")
	require.False(t, s.MayVote(4, 0), "an executor outside the group")
}
