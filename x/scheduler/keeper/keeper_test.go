package keeper_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	storetypes "cosmossdk.io/store/types"

	"github.com/cosmos/cosmos-sdk/codec"
	codectypes "github.com/cosmos/cosmos-sdk/codec/types"
	"github.com/cosmos/cosmos-sdk/runtime"
	"github.com/cosmos/cosmos-sdk/testutil"
	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/cosmos/cosmos-sdk/types/query"

	"github.com/devshard/devshard/x/scheduler/keeper"
	"github.com/devshard/devshard/x/scheduler/types"
)

const authority = "gov-authority"

// bundle is one test's scheduler: a keeper over a fresh store, and the log of
// handler runs ("type#id") in the order they happened.
type bundle struct {
	ctx  sdk.Context
	k    keeper.Keeper
	ran  *[]string
	tctx testutil.TestContext
}

// setup builds a keeper with the given task types; a nil handler records the
// run and succeeds.
func setup(t testing.TB, defs ...types.TaskDefinition) bundle {
	t.Helper()
	key := storetypes.NewKVStoreKey(types.StoreKey)
	tctx := testutil.DefaultContextWithDB(t, key, storetypes.NewTransientStoreKey("transient_test"))
	cdc := codec.NewProtoCodec(codectypes.NewInterfaceRegistry())
	k := keeper.NewKeeper(cdc, runtime.NewKVStoreService(key), authority)
	ran := &[]string{}
	for i := range defs {
		if defs[i].Handler == nil {
			defs[i].Handler = record(ran, nil)
		}
	}
	require.NoError(t, k.Register(defs...))
	require.NoError(t, k.Seal())
	ctx := tctx.Ctx.WithBlockHeight(1)
	require.NoError(t, k.InitGenesis(ctx, *types.DefaultGenesis()))
	return bundle{ctx: ctx, k: k, ran: ran, tctx: tctx}
}

// record returns a handler that logs its run and then returns err.
func record(ran *[]string, err error) types.Handler {
	return func(_ context.Context, task types.Task) error {
		*ran = append(*ran, fmt.Sprintf("%s#%d", task.Type, task.Id))
		return err
	}
}

func (b *bundle) at(height int64) {
	b.ctx = b.ctx.WithBlockHeight(height).WithEventManager(sdk.NewEventManager())
}

func (b *bundle) schedule(t *testing.T, tasks ...types.NewTask) []uint64 {
	t.Helper()
	ids, err := b.k.Schedule(b.ctx, tasks...)
	require.NoError(t, err)
	return ids
}

func (b *bundle) run(t *testing.T, height int64) {
	t.Helper()
	b.at(height)
	require.NoError(t, b.k.RunDue(b.ctx))
}

func (b *bundle) scheduledIDs(t *testing.T) []uint64 {
	t.Helper()
	var ids []uint64
	require.NoError(t, b.k.Tasks.Walk(b.ctx, nil, func(id uint64, _ types.Task) (bool, error) {
		ids = append(ids, id)
		return false, nil
	}))
	return ids
}

func def(name string, deps ...string) types.TaskDefinition {
	return types.TaskDefinition{Name: name, DependsOn: deps}
}

func TestRegistryOrdersTypesAfterTheirDependencies(t *testing.T) {
	t.Parallel()
	b := setup(t, def("a", "b"), def("b", "c"), def("c"), def("d"), def("e", "a", "d"))
	var names []string
	for _, tt := range b.k.TaskTypes() {
		names = append(names, tt.Name)
	}
	// Ties go to the smallest name, so every node derives the same order.
	require.Equal(t, []string{"c", "b", "a", "d", "e"}, names)
}

func TestRegistryRejectsBadWiring(t *testing.T) {
	t.Parallel()
	noop := func(context.Context, types.Task) error { return nil }
	cases := []struct {
		name string
		defs []types.TaskDefinition
		want string
	}{
		{
			name: "unknown dependency",
			defs: []types.TaskDefinition{{Name: "epoch/begin", DependsOn: []string{"epoch/settle"}, Handler: noop}},
			want: `task type "epoch/begin" depends on "epoch/settle", which is not registered`,
		},
		{
			name: "cycle",
			defs: []types.TaskDefinition{
				{Name: "a", DependsOn: []string{"b"}, Handler: noop},
				{Name: "b", DependsOn: []string{"c"}, Handler: noop},
				{Name: "c", DependsOn: []string{"a"}, Handler: noop},
				{Name: "x", DependsOn: []string{"a"}, Handler: noop},
			},
			want: "task types form a dependency cycle: a -> b -> c -> a",
		},
		{
			name: "self dependency",
			defs: []types.TaskDefinition{{Name: "a", DependsOn: []string{"a"}, Handler: noop}},
			want: "task types form a dependency cycle: a -> a",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := keeper.NewRegistry()
			require.NoError(t, r.Register(tc.defs...))
			require.EqualError(t, r.Seal(), tc.want)
			require.False(t, r.Sealed())
		})
	}

	r := keeper.NewRegistry()
	require.NoError(t, r.Register(types.TaskDefinition{Name: "a", Handler: noop}))
	require.EqualError(t, r.Register(types.TaskDefinition{Name: "a", Handler: noop}), `task type "a" is registered twice`)
	require.EqualError(t, r.Register(types.TaskDefinition{Name: "b"}), `task type "b" has no handler`)
	require.NoError(t, r.Seal())
	require.EqualError(t, r.Register(types.TaskDefinition{Name: "c", Handler: noop}),
		"task types cannot be registered after the scheduler is sealed")
}

func TestDueTasksRunInDependencyOrder(t *testing.T) {
	t.Parallel()
	// "activate" depends on "settle": closing epoch N-1's active phase runs
	// before activating N, whatever order they were scheduled in.
	b := setup(t, def("activate", "settle"), def("settle"), def("later"))
	b.schedule(t,
		types.NewTask{Type: "activate", DueHeight: 5}, // id 1
		types.NewTask{Type: "later", DueHeight: 6},    // id 2
		types.NewTask{Type: "settle", DueHeight: 5},   // id 3
		types.NewTask{Type: "activate", DueHeight: 4}, // id 4: overdue by the time it runs
		types.NewTask{Type: "settle", DueHeight: 5},   // id 5
	)
	b.run(t, 3)
	require.Empty(t, *b.ran, "nothing is due at 3")

	b.run(t, 5)
	require.Equal(t, []string{"settle#3", "settle#5", "activate#4", "activate#1"}, *b.ran)
	require.Equal(t, []uint64{2}, b.scheduledIDs(t), "only the task due later is left")

	b.run(t, 6)
	require.Equal(t, "later#2", (*b.ran)[4])
	require.Empty(t, b.scheduledIDs(t))
}

func TestScheduleIsAtomic(t *testing.T) {
	t.Parallel()
	b := setup(t, def("a"))
	b.at(10)
	before, err := b.k.NextID.Peek(b.ctx)
	require.NoError(t, err)

	_, err = b.k.Schedule(b.ctx,
		types.NewTask{Type: "a", DueHeight: 11},
		types.NewTask{Type: "a", DueHeight: 12},
		types.NewTask{Type: "nope", DueHeight: 13},
	)
	require.ErrorIs(t, err, types.ErrUnknownTaskType)
	require.ErrorContains(t, err, `task 3 of 3 not scheduled, nor any other of the batch`)
	require.ErrorContains(t, err, `"nope" is not registered (registered: a)`)

	_, err = b.k.Schedule(b.ctx,
		types.NewTask{Type: "a", DueHeight: 11},
		types.NewTask{Type: "a", DueHeight: 9},
	)
	require.ErrorIs(t, err, types.ErrInvalidTask)
	require.ErrorContains(t, err, "a is due at height 9, which has passed (current height 10)")

	_, err = b.k.Schedule(b.ctx, types.NewTask{Type: "a", DueHeight: 11, Period: -1})
	require.ErrorIs(t, err, types.ErrInvalidTask)

	require.Empty(t, b.scheduledIDs(t), "a rejected batch leaves no task behind")
	after, err := b.k.NextID.Peek(b.ctx)
	require.NoError(t, err)
	require.Equal(t, before, after, "a rejected batch does not consume ids")

	ids := b.schedule(t, types.NewTask{Type: "a", DueHeight: 10}, types.NewTask{Type: "a", DueHeight: 11})
	require.Equal(t, []uint64{1, 2}, ids)
	require.Equal(t, ids, b.scheduledIDs(t))
}

func TestFailingTaskIsRetriedThenMovedToFailed(t *testing.T) {
	t.Parallel()
	boom := errors.New("ledger out of sync")
	var (
		ran []string
		k   keeper.Keeper
	)
	b := setup(t, types.TaskDefinition{Name: "flaky", Handler: func(ctx context.Context, task types.Task) error {
		ran = append(ran, fmt.Sprint(sdk.UnwrapSDKContext(ctx).BlockHeight()))
		// A failing handler's writes are discarded: this one must not
		// leave a task behind.
		if _, err := k.Schedule(ctx, types.NewTask{Type: "flaky", DueHeight: 1000}); err != nil {
			return err
		}
		return boom
	}})
	k = b.k
	require.NoError(t, b.k.Params.Set(b.ctx, types.Params{MaxRetries: 2, RetryDelay: 3}))
	ids := b.schedule(t, types.NewTask{Type: "flaky", DueHeight: 5})

	b.run(t, 5)
	task, failed, err := b.k.Task(b.ctx, ids[0])
	require.NoError(t, err)
	require.False(t, failed)
	require.Equal(t, uint32(1), task.Attempts)
	require.Equal(t, int64(8), task.DueHeight)
	require.Equal(t, "ledger out of sync", task.LastError)
	requireEvent(t, b.ctx, "devshard.scheduler.v1.EventTaskRetry")

	b.run(t, 6) // not due again yet
	b.run(t, 8)
	b.run(t, 11)
	require.Equal(t, []string{"5", "8", "11"}, ran, "one run and max_retries retries")

	task, failed, err = b.k.Task(b.ctx, ids[0])
	require.NoError(t, err)
	require.True(t, failed)
	require.Equal(t, uint32(3), task.Attempts)
	require.Equal(t, int64(11), task.FailedHeight)
	requireEvent(t, b.ctx, "devshard.scheduler.v1.EventTaskFailed")
	require.Empty(t, b.scheduledIDs(t), "the failing handler's own writes never landed")

	b.run(t, 14)
	require.Len(t, ran, 3, "a failed task does not run again by itself")
}

func TestPanickingHandlerDoesNotHaltTheBlock(t *testing.T) {
	t.Parallel()
	b := setup(t,
		types.TaskDefinition{Name: "panics", Handler: func(context.Context, types.Task) error { panic("index out of range") }},
		def("fine", "panics"),
	)
	ids := b.schedule(t, types.NewTask{Type: "panics", DueHeight: 2}, types.NewTask{Type: "fine", DueHeight: 2})
	b.run(t, 2)
	require.Equal(t, []string{fmt.Sprintf("fine#%d", ids[1])}, *b.ran, "the next task still runs")
	task, _, err := b.k.Task(b.ctx, ids[0])
	require.NoError(t, err)
	require.Equal(t, "handler panicked: index out of range", task.LastError)
}

func TestGovernanceRetriesOrDropsFailedTasks(t *testing.T) {
	t.Parallel()
	fail := true
	b := setup(t, types.TaskDefinition{Name: "x", Handler: func(context.Context, types.Task) error {
		if fail {
			return errors.New("not yet")
		}
		return nil
	}})
	require.NoError(t, b.k.Params.Set(b.ctx, types.Params{MaxRetries: 0, RetryDelay: 1}))
	ids := b.schedule(t, types.NewTask{Type: "x", DueHeight: 2}, types.NewTask{Type: "x", DueHeight: 2})
	b.run(t, 2)
	failedList, err := keeper.NewQueryServer(b.k).FailedTasks(b.ctx, &types.QueryFailedTasksRequest{})
	require.NoError(t, err)
	require.Len(t, failedList.Tasks, 2)

	srv := keeper.NewMsgServer(b.k)
	_, err = srv.RetryFailedTask(b.ctx, &types.MsgRetryFailedTask{Authority: "someone", Id: ids[0]})
	require.ErrorIs(t, err, types.ErrInvalidAuthority)
	_, err = srv.RetryFailedTask(b.ctx, &types.MsgRetryFailedTask{Authority: authority, Id: 99})
	require.ErrorIs(t, err, types.ErrTaskNotFound)

	b.at(7)
	_, err = srv.RetryFailedTask(b.ctx, &types.MsgRetryFailedTask{Authority: authority, Id: ids[0]})
	require.NoError(t, err)
	task, failed, err := b.k.Task(b.ctx, ids[0])
	require.NoError(t, err)
	require.False(t, failed)
	require.Equal(t, int64(7), task.DueHeight)
	require.Zero(t, task.Attempts)

	_, err = srv.DropFailedTask(b.ctx, &types.MsgDropFailedTask{Authority: authority, Id: ids[1]})
	require.NoError(t, err)
	_, _, err = b.k.Task(b.ctx, ids[1])
	require.ErrorIs(t, err, types.ErrTaskNotFound)

	fail = false
	require.NoError(t, b.k.RunDue(b.ctx))
	_, _, err = b.k.Task(b.ctx, ids[0])
	require.ErrorIs(t, err, types.ErrTaskNotFound, "the retried task ran and is done")
}

func TestPeriodicTaskRecurs(t *testing.T) {
	t.Parallel()
	b := setup(t, def("tick"))
	ids := b.schedule(t, types.NewTask{Type: "tick", DueHeight: 3, Period: 4})
	for h := int64(1); h <= 12; h++ {
		b.run(t, h)
	}
	require.Len(t, *b.ran, 3, "due at 3, 7 and 11")
	task, _, err := b.k.Task(b.ctx, ids[0])
	require.NoError(t, err)
	require.Equal(t, int64(15), task.DueHeight)

	// A periodic task that was held up skips the periods it missed.
	b.run(t, 30)
	task, _, err = b.k.Task(b.ctx, ids[0])
	require.NoError(t, err)
	require.Equal(t, int64(31), task.DueHeight)
}

func TestTaskUnscheduledByAnEarlierTaskDoesNotRun(t *testing.T) {
	t.Parallel()
	var victim uint64
	var k keeper.Keeper
	b := setup(t,
		types.TaskDefinition{Name: "cancel", Handler: func(ctx context.Context, _ types.Task) error {
			return k.Unschedule(ctx, victim, 12345)
		}},
		def("victim", "cancel"),
	)
	k = b.k
	ids := b.schedule(t, types.NewTask{Type: "victim", DueHeight: 2}, types.NewTask{Type: "cancel", DueHeight: 2})
	victim = ids[0]
	b.run(t, 2)
	require.Empty(t, *b.ran)
	require.Empty(t, b.scheduledIDs(t))
}

func TestQueriesByTypeDueHeightAndPage(t *testing.T) {
	t.Parallel()
	b := setup(t, def("a"), def("b"))
	for i := int64(0); i < 5; i++ {
		b.schedule(t, types.NewTask{Type: "a", DueHeight: 10 + i%2}, types.NewTask{Type: "b", DueHeight: 10})
	}
	q := keeper.NewQueryServer(b.k)

	byType, err := q.TasksByType(b.ctx, &types.QueryTasksByTypeRequest{Type: "a", Pagination: &query.PageRequest{Limit: 2, CountTotal: true}})
	require.NoError(t, err)
	require.Equal(t, []uint64{1, 3}, taskIDs(byType.Tasks))
	require.Equal(t, uint64(5), byType.Pagination.Total)
	var all []uint64
	all = append(all, taskIDs(byType.Tasks)...)
	for next := byType.Pagination.NextKey; next != nil; {
		page, err := q.TasksByType(b.ctx, &types.QueryTasksByTypeRequest{Type: "a", Pagination: &query.PageRequest{Key: next, Limit: 2}})
		require.NoError(t, err)
		all = append(all, taskIDs(page.Tasks)...)
		next = page.Pagination.NextKey
	}
	require.Equal(t, []uint64{1, 3, 5, 7, 9}, all)

	due, err := q.TasksByDueHeight(b.ctx, &types.QueryTasksByDueHeightRequest{Height: 11})
	require.NoError(t, err)
	require.Equal(t, []uint64{3, 7}, taskIDs(due.Tasks))

	everything, err := q.Tasks(b.ctx, &types.QueryTasksRequest{})
	require.NoError(t, err)
	require.Len(t, everything.Tasks, 10)

	typesRes, err := q.TaskTypes(b.ctx, &types.QueryTaskTypesRequest{})
	require.NoError(t, err)
	require.Len(t, typesRes.Types, 2)
}

func taskIDs(tasks []types.Task) []uint64 {
	ids := make([]uint64, len(tasks))
	for i, t := range tasks {
		ids[i] = t.Id
	}
	return ids
}

func TestGenesisRoundTrip(t *testing.T) {
	t.Parallel()
	b := setup(t, types.TaskDefinition{Name: "a", Handler: func(context.Context, types.Task) error { return errors.New("no") }})
	require.NoError(t, b.k.Params.Set(b.ctx, types.Params{MaxRetries: 0, RetryDelay: 2}))
	b.schedule(t, types.NewTask{Type: "a", DueHeight: 2}, types.NewTask{Type: "a", DueHeight: 9, Period: 3, Payload: []byte{7}})
	b.run(t, 2)
	gs, err := b.k.ExportGenesis(b.ctx)
	require.NoError(t, err)
	require.NoError(t, gs.Validate())
	require.Len(t, gs.Tasks, 1)
	require.Len(t, gs.Failed, 1)
	require.Equal(t, uint64(3), gs.NextId)

	other := setup(t, def("a"))
	require.NoError(t, other.k.InitGenesis(other.ctx, *gs))
	again, err := other.k.ExportGenesis(other.ctx)
	require.NoError(t, err)
	require.Equal(t, gs, again)

	unknown := setup(t, def("b"))
	require.ErrorContains(t, unknown.k.InitGenesis(unknown.ctx, *gs), `genesis task 2 has type "a", which this binary does not register`)
}

func requireEvent(t *testing.T, ctx sdk.Context, typ string) {
	t.Helper()
	for _, e := range ctx.EventManager().Events() {
		if e.Type == typ {
			return
		}
	}
	t.Fatalf("no %s event among %v", typ, ctx.EventManager().Events())
}
