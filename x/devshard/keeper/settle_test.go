package keeper_test

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/x/devshard/types"
	schedulertypes "github.com/devshard/devshard/x/scheduler/types"
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
	// the latest root it signed, still ACTIVE. It is paid when its
	// challenge window closes.
	fa := w.fixture(t, abandoned)
	qa := fa.Sequencer()
	infer(t, qa, 3)
	latest := fa.Settle(qa.Replica, fa.AllSlots()...)
	require.Equal(t, sessionpb.Phase_PHASE_ACTIVE, latest.Phase)
	res, err = w.settle(sdk.AccAddress(abandoned.Snapshot.Group[0]), latest)
	require.NoError(t, err)
	require.True(t, res.Pending)
	require.Equal(t, types.EscrowOpen, mustEscrow(t, w, abandoned.Id).Status)
	w.advanceTo(t, res.WindowEndHeight)
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

// Item 8 of the review (stale root after the deadline): after the deadline
// any member may settle any quorum-signed root. A gateway that also holds a
// slot withholds finalization and, as a member, settles the earliest root of
// the session, paying for 1 of 21 inferences. A root that is not finalized
// now waits out a challenge window, in which an honest member replaces it
// with the latest root; the hosts are paid for all 21.
//
// Checked on the unfixed keeper with this scenario: the early root was
// paid at once (154 of 100,000 for 1 inference) and the honest member's
// latest root was refused, the escrow being SETTLED.
func TestAttackStaleRootAfterDeadline(t *testing.T) {
	t.Parallel()
	w := newWorld(t, func(p *types.Params) { p.GroupSize = 8 })
	esc := w.create(t, 100_000)
	gatewayHost := sdk.AccAddress(esc.Snapshot.Group[0]) // the gateway's own slot
	var honest sdk.AccAddress
	for _, a := range esc.Snapshot.Group {
		if !gatewayHost.Equals(sdk.AccAddress(a)) {
			honest = a
			break
		}
	}
	require.NotNil(t, honest, "the group has a host besides the gateway's")

	f := w.fixture(t, esc)
	q := f.Sequencer()
	infer(t, q, 1)
	early := f.Settle(q.Replica, f.AllSlots()...)
	infer(t, q, 20)
	latest := f.Settle(q.Replica, f.AllSlots()...) // never finalized
	w.advanceTo(t, 6)                              // epoch 2: past the deadline
	module, gw := w.bal(moduleAddr()), w.bal(w.gw)

	res, err := w.settle(gatewayHost, early)
	require.NoError(t, err)
	require.True(t, res.Pending, "a root that is not finalized is not paid at once")
	require.Zero(t, res.Paid)
	end := res.WindowEndHeight
	require.Equal(t, w.ctx.BlockHeight()+3, end)
	require.Equal(t, module, w.bal(moduleAddr()), "no coin moved")
	require.Equal(t, types.EscrowOpen, mustEscrow(t, w, esc.Id).Status)
	w.conserved(t)

	// An honest member answers inside the window with the latest root.
	w.advanceTo(t, end-1)
	w.block(end)
	res, err = w.settle(honest, latest)
	require.NoError(t, err)
	require.True(t, res.Pending)
	require.Equal(t, end, res.WindowEndHeight, "replacing does not move the window")
	pending := mustEscrow(t, w, esc.Id).Pending
	require.Equal(t, latest.Nonce, pending.Settlement.Nonce)
	require.Equal(t, honest.String(), pending.Sender)

	// The stale root cannot come back, nor can the same nonce again.
	for _, m := range []*sessionpb.Settlement{early, latest} {
		_, err = w.settle(gatewayHost, m)
		require.ErrorIs(t, err, types.ErrSettlement)
		require.ErrorIs(t, err, session.ReasonStale)
	}
	require.Equal(t, module, w.bal(moduleAddr()), "nothing paid before the window closes")

	// The window closes at the end of its block, after epoch 1's accounting
	// in the same block: the latest root is paid into the summaries.
	w.endBlock(t)
	require.Equal(t, types.EpochAccounting, w.state(t, 1))
	want := plan(t, esc, latest)
	require.Equal(t, types.EscrowSettled, mustEscrow(t, w, esc.Id).Status)
	require.Nil(t, mustEscrow(t, w, esc.Id).Pending)
	require.Equal(t, gw+want.Refund, w.bal(w.gw))
	var finished uint64
	for _, h := range w.hosts {
		require.Equal(t, payouts(want)[h.String()], w.summary(t, 1, h).Rewarded, "summary of %s", h)
		finished += w.summary(t, 1, h).Stats.Finished
	}
	require.Equal(t, uint64(21), finished, "the hosts are paid for all 21 inferences")
	w.conserved(t)
}

// A pending settlement is paid when its window closes, even when the
// escrow's expiry epoch begins during the window: expiry must not refund
// coins the window is about to pay, nor pay them twice.
func TestSettlementWindowOutlastsExpiry(t *testing.T) {
	t.Parallel()
	w := newWorld(t, func(p *types.Params) { p.SettlementChallengeBlocks = 6 })
	esc := w.create(t, 100_000)
	f := w.fixture(t, esc)
	q := f.Sequencer()
	infer(t, q, 4)
	latest := f.Settle(q.Replica, f.AllSlots()...)
	want := plan(t, esc, latest)
	gw := w.bal(w.gw)

	w.advanceTo(t, 7)
	w.block(8) // epoch 2; expiry epoch 3 begins at the end of block 9
	res, err := w.settle(sdk.AccAddress(esc.Snapshot.Group[1]), latest)
	require.NoError(t, err)
	require.Equal(t, int64(14), res.WindowEndHeight)
	for h := int64(8); h < 14; h++ {
		if h > 8 {
			w.block(h)
		}
		w.endBlock(t)
		require.Equal(t, types.EscrowOpen, mustEscrow(t, w, esc.Id).Status, "height %d", h)
		require.Equal(t, gw, w.bal(w.gw), "height %d: expiry refunded nothing", h)
		w.conserved(t)
	}
	w.advanceTo(t, 14)
	require.Equal(t, types.EscrowSettled, mustEscrow(t, w, esc.Id).Status)
	require.Equal(t, gw+want.Refund, w.bal(w.gw))
	w.conserved(t)
	w.advanceTo(t, 20)
	require.Equal(t, gw+want.Refund, w.bal(w.gw), "paid once")
	w.conserved(t)
}

// The creator's finalized root is the session's last: it is paid at once
// during a window, and ends it.
func TestFinalizedSettlementEndsTheWindow(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	esc := w.create(t, 100_000)
	f := w.fixture(t, esc)
	q := f.Sequencer()
	infer(t, q, 2)
	active := f.Settle(q.Replica, f.AllSlots()...)
	infer(t, q, 1)
	finalize(t, q)
	final := f.Settle(q.Replica, f.AllSlots()...)
	w.advanceTo(t, 6)

	res, err := w.settle(sdk.AccAddress(esc.Snapshot.Group[0]), active)
	require.NoError(t, err)
	require.True(t, res.Pending)
	task := mustEscrow(t, w, esc.Id).Pending.TaskId
	_, _, err = w.sched.Task(w.ctx, task)
	require.NoError(t, err, "the window's close is scheduled")

	gw := w.bal(w.gw)
	want := plan(t, esc, final)
	res, err = w.settle(w.gw, final)
	require.NoError(t, err)
	require.False(t, res.Pending)
	require.Equal(t, want.Refund, res.Refund)
	require.Equal(t, gw+want.Refund, w.bal(w.gw))
	require.Equal(t, types.EscrowSettled, mustEscrow(t, w, esc.Id).Status)
	_, _, err = w.sched.Task(w.ctx, task)
	require.ErrorIs(t, err, schedulertypes.ErrTaskNotFound, "the window is over")
	w.conserved(t)

	w.advanceTo(t, res.WindowEndHeight+10)
	require.Equal(t, gw+want.Refund, w.bal(w.gw), "nothing is paid twice")
	w.conserved(t)
}

// A signature that does not verify (here a key the slot's holder never
// granted) is ignored beside a quorum, and reported in an event.
func TestSettlementReportsIgnoredSignatures(t *testing.T) {
	t.Parallel()
	w := newWorld(t, func(p *types.Params) { p.GroupSize = 4 })
	esc := w.create(t, 100_000)
	f := w.fixture(t, esc)
	m := f.Settle(run(t, f, 2), 1, 2, 3)
	thief := sessiontest.New(99, sessiontest.DefaultOptions()).Gateway
	ss, err := session.SignState(thief, f.Snapshot.ChainId, m.EscrowId, m.Nonce, m.StateRoot, 0)
	require.NoError(t, err)
	m.Signatures = append([]*sessionpb.SlotSignature{{Slot: 0, Sig: ss.Sig}}, m.Signatures...)

	_, err = w.settle(w.gw, m)
	require.NoError(t, err)
	require.Equal(t, types.EscrowSettled, mustEscrow(t, w, esc.Id).Status)
	var ignored []string
	for _, ev := range w.ctx.EventManager().Events() {
		if ev.Type == "devshard.devshard.v1.EventSettlementSignaturesIgnored" {
			for _, a := range ev.Attributes {
				ignored = append(ignored, a.Key+"="+a.Value)
			}
		}
	}
	require.Contains(t, ignored, "slots=[0]")
	require.Len(t, ignored, 3) // escrow_id, slots, reasons
	w.conserved(t)
}
