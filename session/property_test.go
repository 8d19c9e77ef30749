package session_test

import (
	"bytes"
	"fmt"
	"math"
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
			ValidationRateBps: []uint32{0, 3000, 10000}[seed%3],
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
	st := s.State()
	require.NoError(t, planMatches(f.Snapshot, plan, st.Balance, st.Reserved, st.Fees, st.HostStats))
	fees, ok := session.ExpectedFees(f.Snapshot, st.ActiveNonces)
	require.True(t, ok)
	require.Equal(t, fees, plan.Fees)
}

// planMatches checks a plan against the books it settles. amount == Σ payouts
// + refund alone proves nothing, since the plan derives its refund from what
// it paid; so each part is checked on its own: every slot is paid exactly the
// cost its stats record, the fee shares are equal to within one coin and sum
// to the fees, and the refund is exactly what the books leave unspent
// (balance + reserved).
func planMatches(snap *sessionpb.EscrowSnapshot, plan *session.Plan, balance, reserved, fees uint64, stats []*sessionpb.HostStats) error {
	if len(plan.Slots) != len(stats) {
		return fmt.Errorf("plan pays %d slots, the books have %d", len(plan.Slots), len(stats))
	}
	if plan.Fees != fees {
		return fmt.Errorf("plan fees %d, the books say %d", plan.Fees, fees)
	}
	var shares uint64
	lo, hi := uint64(math.MaxUint64), uint64(0)
	for i, p := range plan.Slots {
		if p.Slot != uint32(i) || !bytes.Equal(p.Address[:], snap.Group[i]) {
			return fmt.Errorf("payout %d is for slot %d (%s), not slot %d of the group", i, p.Slot, p.Address, i)
		}
		if p.Cost != stats[i].Cost || p.Finished != stats[i].Finished {
			return fmt.Errorf("slot %d paid cost %d for %d finished, its stats say %d for %d", i, p.Cost, p.Finished, stats[i].Cost, stats[i].Finished)
		}
		shares += p.FeeShare
		lo, hi = min(lo, p.FeeShare), max(hi, p.FeeShare)
	}
	if shares != fees || hi-lo > 1 {
		return fmt.Errorf("fee shares sum to %d (from %d to %d each), the fees are %d", shares, lo, hi, fees)
	}
	if plan.Refund != balance+reserved {
		return fmt.Errorf("refund %d, the books leave %d unspent (balance %d + reserved %d)", plan.Refund, balance+reserved, balance, reserved)
	}
	total := plan.Refund
	for _, p := range plan.Slots {
		total += p.Total()
	}
	if total != snap.Amount {
		return fmt.Errorf("plan pays %d of the amount %d", total, snap.Amount)
	}
	return nil
}
