package keeper_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	sdkmath "cosmossdk.io/math"

	"github.com/devshard/devshard/fsm"
	"github.com/devshard/devshard/x/devshard/keeper"
	"github.com/devshard/devshard/x/devshard/types"
	schedulertypes "github.com/devshard/devshard/x/scheduler/types"
)

// The table from DESIGN.md: the lifecycle in order, and CANCELLED reachable
// from every state that is not final.
func TestEpochTableIsTheDesignedLifecycle(t *testing.T) {
	t.Parallel()
	legal := map[types.EpochState]map[types.Symbol]types.EpochState{
		types.EpochPlanned:    {types.SymActivate: types.EpochActive, types.SymCancel: types.EpochCancelled},
		types.EpochActive:     {types.SymSettle: types.EpochSettling, types.SymCancel: types.EpochCancelled},
		types.EpochSettling:   {types.SymAccount: types.EpochAccounting, types.SymCancel: types.EpochCancelled},
		types.EpochAccounting: {types.SymOpenClaims: types.EpochClaimable, types.SymCancel: types.EpochCancelled},
		types.EpochClaimable:  {types.SymClose: types.EpochClosed, types.SymCancel: types.EpochCancelled},
	}
	for _, s := range types.EpochStates {
		require.Equal(t, s == types.EpochClosed || s == types.EpochCancelled, keeper.EpochTable.IsFinal(s))
		for _, y := range types.Symbols {
			next, err := keeper.EpochTable.Next(s, y)
			if want, ok := legal[s][y]; ok {
				require.NoError(t, err, "%s on %s", s, y)
				require.Equal(t, want, next, "%s on %s", s, y)
				continue
			}
			var te *fsm.TransitionError
			require.ErrorAs(t, err, &te, "%s on %s must be illegal", s, y)
			require.Equal(t, s, te.State)
			require.Equal(t, y, te.Symbol)
			require.Equal(t, s.IsFinal(), te.Final)
		}
	}
	require.Len(t, keeper.EpochTable.Transitions(), 10)
}

func TestEpochsTurnOnTheirOwnAndOverlap(t *testing.T) {
	t.Parallel()
	b := setup(t, testParams())

	b.advanceTo(t, 1)
	e1 := b.epoch(t, 1)
	require.Equal(t, types.EpochCancelled, e1.State, "epoch 1 has no participants, so it is cancelled, not activated")
	require.Equal(t, "no effective participants", e1.CancelReason)
	require.Equal(t, types.EpochPlanned, b.state(t, 2), "the next epoch is planned when this one begins")
	for _, id := range e1.TaskIds[1:] {
		_, _, err := b.sched.Task(b.ctx, id)
		require.ErrorIs(t, err, schedulertypes.ErrTaskNotFound, "a cancelled epoch's remaining transitions are unscheduled")
	}

	// Three participants register during epoch 1: upcoming, effective in 2.
	b.block(2)
	hosts := []int64{100, 200, 300}
	for i, c := range hosts {
		require.Equal(t, uint64(2), b.register(t, b.host(i, 1000), c))
	}
	b.endBlock(t)
	require.Empty(t, b.epochsIn(t, types.EpochActive))

	b.advanceTo(t, 5)
	e2 := b.epoch(t, 2)
	require.Equal(t, types.EpochActive, e2.State)
	require.Equal(t, uint32(3), e2.Participants)
	require.Equal(t, sdkmath.NewInt(600), e2.TotalWeight, "weight follows collateral")
	members, err := keeper.NewQueryServer(b.k).EpochMembers(b.ctx, &types.QueryEpochMembersRequest{EpochId: 2})
	require.NoError(t, err)
	require.Len(t, members.Members, 3)
	for i, c := range hosts {
		p := b.participant(t, hostAddr(i))
		require.Zero(t, p.UpcomingEpoch, "promoted")
		require.Equal(t, uint64(2), p.LastServedEpoch)
		require.Equal(t, sdkmath.NewInt(c), members.Members[i].Weight)
	}

	// Epoch 2's active phase closes before 3 activates, in the same block.
	b.hooks.seen = nil
	b.advanceTo(t, 9)
	require.Equal(t, []string{"2:SETTLING@9", "3:ACTIVE@9"}, b.hooks.seen)
	require.Equal(t, []uint64{3}, b.epochsIn(t, types.EpochActive))
	require.Equal(t, []uint64{2}, b.epochsIn(t, types.EpochSettling), "N is ACTIVE while N-1 is SETTLING")

	b.advanceTo(t, 13)
	require.Equal(t, []uint64{2}, b.epochsIn(t, types.EpochAccounting))
	b.advanceTo(t, 17)
	require.Equal(t, []uint64{2}, b.epochsIn(t, types.EpochClaimable))
	require.Equal(t, []uint64{3}, b.epochsIn(t, types.EpochAccounting))
	require.Equal(t, []uint64{4}, b.epochsIn(t, types.EpochSettling))
	require.Equal(t, []uint64{5}, b.epochsIn(t, types.EpochActive))
	require.Equal(t, []uint64{6}, b.epochsIn(t, types.EpochPlanned))
	b.advanceTo(t, 21)
	require.Equal(t, []uint64{2}, b.epochsIn(t, types.EpochClosed))
	require.Equal(t, []uint64{1}, b.epochsIn(t, types.EpochCancelled))

	e2 = b.epoch(t, 2)
	var path []string
	for _, h := range e2.History {
		path = append(path, h.State.Short())
	}
	require.Equal(t, []string{"PLANNED", "ACTIVE", "SETTLING", "ACCOUNTING", "CLAIMABLE", "CLOSED"}, path)
	require.Equal(t, int64(21), e2.History[5].Height)

	current, err := keeper.NewQueryServer(b.k).CurrentEpoch(b.ctx, &types.QueryCurrentEpochRequest{})
	require.NoError(t, err)
	require.Equal(t, uint64(6), current.Epoch.Id)
}

func TestSameBlockTransitionsFollowTaskDependencies(t *testing.T) {
	t.Parallel()
	p := testParams()
	p.AccountingEpochs = 0 // ACCOUNTING and CLAIMABLE in the same block
	b := setup(t, p)
	b.block(1)
	b.register(t, b.host(0, 1000), 100)
	b.endBlock(t) // epoch 1 activates with the host: start 1, end 5, accounting 9, claimable 9, close 13
	require.Equal(t, types.EpochActive, b.state(t, 1))

	b.hooks.seen = nil
	b.advanceTo(t, 9)
	require.Equal(t, []string{
		"1:SETTLING@5", "2:ACTIVE@5",
		"2:SETTLING@9", "1:ACCOUNTING@9", "3:ACTIVE@9", "1:CLAIMABLE@9",
	}, b.hooks.seen)
}

func TestFailingTransitionLeavesTheEpochAndIsRetried(t *testing.T) {
	t.Parallel()
	b := setup(t, testParams())
	b.block(1)
	b.register(t, b.host(0, 1000), 100)
	b.endBlock(t)
	b.hooks.failTo = types.EpochAccounting

	b.advanceTo(t, 9) // epoch 1's accounting is due at 9 and fails
	e := b.epoch(t, 1)
	require.Equal(t, types.EpochSettling, e.State, "a failed action leaves the state unchanged")
	task, failed, err := b.sched.Task(b.ctx, e.TaskIds[2])
	require.NoError(t, err)
	require.False(t, failed)
	require.Equal(t, uint32(1), task.Attempts)
	require.Contains(t, task.LastError, "accounting for epoch 1 is not ready")
	require.Contains(t, task.LastError, "action failed, state stays EPOCH_STATE_SETTLING")
	require.Equal(t, types.EpochActive, b.state(t, 3), "the chain carries on: epoch 3 still began")

	b.hooks.failTo = types.EpochStateUnspecified
	b.advanceTo(t, 10)
	require.Equal(t, types.EpochAccounting, b.state(t, 1), "the retry succeeds")
}

func TestGovernanceCancelsEpochs(t *testing.T) {
	t.Parallel()
	b := setup(t, testParams())
	srv := keeper.NewMsgServer(b.k)
	b.block(1)
	b.register(t, b.host(0, 1000), 100)
	b.endBlock(t)

	_, err := srv.CancelEpoch(b.ctx, &types.MsgCancelEpoch{Authority: "someone", EpochId: 1})
	require.ErrorIs(t, err, types.ErrInvalidAuthority)
	_, err = srv.CancelEpoch(b.ctx, &types.MsgCancelEpoch{Authority: authority, EpochId: 42})
	require.ErrorIs(t, err, types.ErrEpochNotFound)

	// An ACTIVE epoch: its later transitions go.
	_, err = srv.CancelEpoch(b.ctx, &types.MsgCancelEpoch{Authority: authority, EpochId: 1, Reason: "bad release"})
	require.NoError(t, err)
	e := b.epoch(t, 1)
	require.Equal(t, types.EpochCancelled, e.State)
	require.Equal(t, "bad release", e.CancelReason)
	for _, id := range e.TaskIds[1:] {
		_, _, err := b.sched.Task(b.ctx, id)
		require.ErrorIs(t, err, schedulertypes.ErrTaskNotFound)
	}

	// A final epoch accepts nothing: the error names state and symbol.
	_, err = srv.CancelEpoch(b.ctx, &types.MsgCancelEpoch{Authority: authority, EpochId: 1})
	require.ErrorIs(t, err, types.ErrIllegalTransition)
	require.ErrorContains(t, err, "state EPOCH_STATE_CANCELLED is final and accepts no symbol (got cancel)")

	// A PLANNED epoch: its window still passes and plans the next one.
	_, err = srv.CancelEpoch(b.ctx, &types.MsgCancelEpoch{Authority: authority, EpochId: 2})
	require.NoError(t, err)
	b.advanceTo(t, 5)
	require.Equal(t, types.EpochCancelled, b.state(t, 2))
	require.Equal(t, types.EpochPlanned, b.state(t, 3))
	b.advanceTo(t, 9)
	require.Equal(t, types.EpochActive, b.state(t, 3), "the participant carries over into epoch 3")
}

func TestIllegalTransitionsThroughTasksAreRejected(t *testing.T) {
	t.Parallel()
	b := setup(t, testParams())
	b.advanceTo(t, 1)
	// Epoch 2 is PLANNED: settling it is illegal, and says so.
	err := b.k.CancelEpoch(b.ctx, 99, "")
	require.ErrorIs(t, err, types.ErrEpochNotFound)
	for _, def := range b.k.TaskDefinitions() {
		if def.Name == types.TaskEpochBegin || def.Name == types.TaskSettlementWindow {
			continue // not an epoch transition
		}
		err := def.Handler(b.ctx, schedulertypes.Task{Type: def.Name, Payload: []byte{0, 0, 0, 0, 0, 0, 0, 2}})
		require.ErrorIs(t, err, types.ErrIllegalTransition, def.Name)
		require.ErrorContains(t, err, "no transition from state EPOCH_STATE_PLANNED on symbol")
	}
	require.Equal(t, types.EpochPlanned, b.state(t, 2))
}

// A begin that keeps failing past its epoch's end must not leave the next
// epoch scheduled in the past: the next one starts when the begin succeeds,
// and the late epoch's own transitions catch up through retries.
func TestLateBeginStartsTheNextEpochNow(t *testing.T) {
	t.Parallel()
	p := testParams()
	p.EpochLength = 2 // epoch 1 is [1, 3)
	b := setup(t, p)
	b.hooks.failTo = types.EpochActive
	b.block(1)
	b.register(t, b.host(0, 1000), 100)
	b.endBlock(t)
	b.advanceTo(t, 3) // begin(1) fails at 1, 2 and 3
	require.Equal(t, types.EpochPlanned, b.state(t, 1))

	b.hooks.failTo = types.EpochStateUnspecified
	b.advanceTo(t, 4)
	require.Equal(t, types.EpochActive, b.state(t, 1))
	e2 := b.epoch(t, 2)
	require.Equal(t, int64(4), e2.StartHeight, "epoch 2 was due at 3, which had passed")
	b.advanceTo(t, 5)
	// Epoch 1's retried settle and its accounting (due at 5) run in one
	// block, in dependency order.
	require.Equal(t, types.EpochAccounting, b.state(t, 1))
	require.Equal(t, types.EpochActive, b.state(t, 2))
	failed, err := b.sched.Failed.Has(b.ctx, b.epoch(t, 1).TaskIds[1])
	require.NoError(t, err)
	require.False(t, failed)
}
