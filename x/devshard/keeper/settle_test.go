package keeper_test

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/x/devshard/types"
)

// Known attack (stale root): hosts co-sign every root, so a gateway holds a
// quorum-signed settlement for every nonce it ran. A malicious one would
// settle an early, cheaper root and keep the pay for the later work as its
// refund. The creator settles only the finalized root (phase SETTLEMENT,
// after which a session takes no more diffs), before or after the deadline.
// A host settling after the deadline for a gateway that vanished uses its
// latest root, whatever the phase.
func TestAttackStaleRootSettlement(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	esc, abandoned := w.create(t, 100_000), w.create(t, 100_000)
	module := w.bal(moduleAddr())

	// The gateway's session of esc: every root along the way is signed.
	f := w.fixture(t, esc)
	q := f.Sequencer()
	infer(t, q, 1)
	stale := f.Settle(q.Replica, f.AllSlots()...)
	infer(t, q, 4)
	finalize(t, q)
	final := f.Settle(q.Replica, f.AllSlots()...)
	require.Less(t, plan(t, esc, final).Refund, plan(t, esc, stale).Refund, "the stale root is cheaper for the gateway")

	refused := func() {
		t.Helper()
		_, err := w.settle(w.gw, stale)
		require.ErrorIs(t, err, types.ErrSettlement)
		require.ErrorContains(t, err, "may settle only a finalized session: expected phase PHASE_SETTLEMENT, the settlement is at phase PHASE_ACTIVE")
		require.Equal(t, module, w.bal(moduleAddr()), "no coin moved")
		require.Equal(t, types.EscrowOpen, mustEscrow(t, w, esc.Id).Status)
	}
	refused()
	w.advanceTo(t, 6) // epoch 2: past the deadline of both escrows
	refused()

	// The honest gateway settles the final root and pays for all five.
	want := plan(t, esc, final)
	res, err := w.settle(w.gw, final)
	require.NoError(t, err)
	require.Equal(t, want.Refund, res.Refund)
	w.conserved(t)

	// The gateway of the other escrow vanished mid-session; a host settles
	// the latest root it signed, still ACTIVE.
	fa := w.fixture(t, abandoned)
	qa := fa.Sequencer()
	infer(t, qa, 3)
	latest := fa.Settle(qa.Replica, fa.AllSlots()...)
	require.Equal(t, sessionpb.Phase_PHASE_ACTIVE, latest.Phase)
	_, err = w.settle(sdk.AccAddress(abandoned.Snapshot.Group[0]), latest)
	require.NoError(t, err)
	require.Equal(t, types.EscrowSettled, mustEscrow(t, w, abandoned.Id).Status)
	w.conserved(t)
}

// Every settled figure is overflow-checked (DESIGN.md, Settlement rules).
// validated and validations_done are attested by the quorum; one settlement
// cannot carry them past the work counts (session.VerifySettlement), but
// sums over many settlements are still checked: a sum that would wrap on a
// ledger or on an accounted epoch's summary is refused with ErrOverflow
// before any coin or stat moves.
func TestSettleRefusesStatsOverflow(t *testing.T) {
	t.Parallel()
	w := newWorldN(t, 1, func(p *types.Params) { p.ExpiryEpochs = 6 }) // one host holds every slot
	host := w.hosts[0]
	inflated := func(esc types.Escrow, validationsDone ...uint64) *sessionpb.Settlement {
		f := w.fixture(t, esc)
		m := f.Settle(run(t, f, 1))
		for slot, v := range validationsDone {
			m.HostStats[slot].ValidationsDone = v
		}
		return f.Resign(m, f.AllSlots()...)
	}
	refused := func(esc types.Escrow, m *sessionpb.Settlement, want string) {
		t.Helper()
		module := w.bal(moduleAddr())
		_, err := w.settle(w.gw, m)
		require.ErrorIs(t, err, types.ErrOverflow)
		require.ErrorContains(t, err, want)
		require.Equal(t, module, w.bal(moduleAddr()), "no coin moved")
		require.Equal(t, types.EscrowOpen, mustEscrow(t, w, esc.Id).Status)
		w.conserved(t)
	}
	const wrap = "inference stats overflow: validations_done 18446744073709551615 + 1 exceeds uint64"
	inOne, onLedger, onSummary := w.create(t, 10_000), w.create(t, 10_000), w.create(t, 10_000)

	// One settlement cannot carry a count near the top any more: a slot's
	// validations are bounded by the other slots' finished inferences.
	module := w.bal(moduleAddr())
	_, err := w.settle(w.gw, inflated(inOne, math.MaxUint64, 1))
	require.ErrorIs(t, err, types.ErrSettlement)
	require.ErrorContains(t, err, "slot 0: 18446744073709551615 validations done, more than the 1 finished inferences of other slots")
	require.Equal(t, module, w.bal(moduleAddr()), "no coin moved")
	require.Equal(t, types.EscrowOpen, mustEscrow(t, w, inOne.Id).Status)

	// Sums over many settlements are still checked: a ledger already at the
	// top (set here directly) refuses one more.
	m := w.member(t, 1, host)
	m.Stats.ValidationsDone = math.MaxUint64
	require.NoError(t, w.k.Members.Set(w.ctx, collectionsJoin(uint64(1), host), m))
	refused(onLedger, inflated(onLedger, 1), wrap)
	require.Equal(t, uint64(math.MaxUint64), w.member(t, 1, host).Stats.ValidationsDone, "the ledger's stats are unchanged")

	w.advanceTo(t, 10) // epoch 1 ACCOUNTING: the ledger moved to the summary
	require.Equal(t, uint64(math.MaxUint64), w.summary(t, 1, host).Stats.ValidationsDone)
	refused(onSummary, inflated(onSummary, 1), wrap)
}
