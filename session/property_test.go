package session_test

import (
	"math/rand"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
)

// Invariant 1 and 2: random valid sessions give identical roots on two
// replicas, one of them saved and restored midway, and every settlement
// plan conserves the escrow amount exactly.
func TestPropertyReplicasAgreeAndPlansConserve(t *testing.T) {
	t.Parallel()
	seeds := int64(40)
	if testing.Short() {
		seeds = 6 // -race runs in short mode: concurrency matters there, not volume
	}
	for seed := int64(1); seed <= seeds; seed++ {
		rng := rand.New(rand.NewSource(seed))
		holders := [][]int{{0, 1, 2}, {0, 0, 1}, {0, 1, 2, 3}, {0, 0, 0, 1}, {0}}[seed%5]
		f := sessiontest.New(seed, sessiontest.Options{
			EscrowID: uint64(seed), Amount: uint64(20_000 + rng.Intn(200_000)), Holders: holders,
			TokenPrice: uint64(1 + rng.Intn(5)), CreationFee: uint64(rng.Intn(500)), FeePerNonce: uint64(rng.Intn(7)),
			MaxNonce: 1000, SealGraceNonces: uint64(rng.Intn(12)), SealGraceSeconds: uint64(rng.Intn(10)),
		})
		gw := f.Sequencer()
		a, b := f.NewSession(nil), f.NewSession(nil)
		steps := 20 + rng.Intn(100)
		restoreAt := rng.Intn(steps)
		apply := func(d *sessionpb.Diff) {
			for _, s := range []*session.Session{a, b} {
				_, err := s.Apply(d)
				require.NoError(t, err, "seed %d nonce %d", seed, d.Nonce)
			}
			require.Equal(t, a.Root(), b.Root(), "seed %d nonce %d", seed, d.Nonce)
		}
		for i := range steps {
			d, err := gw.RandomStep(rng)
			require.NoError(t, err, "seed %d", seed)
			apply(d)
			if i == restoreAt {
				raw, err := b.State().Marshal()
				require.NoError(t, err)
				var st sessionpb.SessionState
				require.NoError(t, st.Unmarshal(raw))
				b, err = session.Restore(f.Snapshot, &st, nil)
				require.NoError(t, err, "seed %d", seed)
				require.Equal(t, a.Root(), b.Root())
			}
			// Settlement can happen from any phase (hosts settle a stalled
			// session): every intermediate plan must conserve.
			if i%7 == 0 {
				requireConserves(t, f, a)
			}
		}
		for range 2 {
			d, err := gw.Next(sessiontest.Finalize())
			require.NoError(t, err)
			apply(d)
		}
		require.Zero(t, a.LiveCount())
		requireConserves(t, f, a)
	}
}

func requireConserves(t *testing.T, f *sessiontest.Fixture, s *session.Session) {
	t.Helper()
	plan, err := session.VerifySettlement(f.Snapshot, f.Settle(s, f.AllSlots()...), nil)
	require.NoError(t, err)
	total := plan.Refund
	for _, p := range plan.Slots {
		total += p.Total()
	}
	require.Equal(t, f.Snapshot.Amount, total, "amount == Σ payouts + refund")
	fees, ok := session.ExpectedFees(f.Snapshot, s.State().ActiveNonces)
	require.True(t, ok)
	require.Equal(t, fees, plan.Fees)
}
