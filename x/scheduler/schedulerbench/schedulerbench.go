// Package schedulerbench holds the scheduler's benchmark workloads, so that
// `go test -bench` and `devshard bench scheduler` measure the same thing.
package schedulerbench

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	dbm "github.com/cosmos/cosmos-db"

	"cosmossdk.io/log"
	"cosmossdk.io/store"
	"cosmossdk.io/store/metrics"
	storetypes "cosmossdk.io/store/types"

	"github.com/cosmos/cosmos-sdk/codec"
	codectypes "github.com/cosmos/cosmos-sdk/codec/types"
	sdkruntime "github.com/cosmos/cosmos-sdk/runtime"
	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/x/scheduler/keeper"
	"github.com/devshard/devshard/x/scheduler/types"
)

const (
	// Height is the block whose end the measured RunDue plays.
	Height int64 = 1_000
	// taskType is the only registered type; its handler does nothing but
	// count its runs.
	taskType = "noop"
	// spread is how many later heights the tasks not yet due are spread
	// over, as epochs' transitions are.
	spread = 5_000
	// scheduleBatch is how many tasks one Schedule call stores while the
	// workload is built.
	scheduleBatch = 1_000
	authority     = "gov-authority"
)

// DueWorkload is a committed store holding a number of tasks, some of them
// due at Height and the rest due later. Each measured block starts from the
// committed state, so the workload can be run any number of times.
type DueWorkload struct {
	cms    store.CommitMultiStore
	k      keeper.Keeper
	ran    *int
	stored int
	due    int
	gas    uint64
}

// NewDueWorkload commits a store holding stored tasks, due of them due at
// Height and the rest spread over the heights after it, then plays one block
// to check that exactly the due tasks run and to record its gas.
func NewDueWorkload(stored, due int) (*DueWorkload, error) {
	if due < 0 || stored < due {
		return nil, fmt.Errorf("need 0 <= due <= stored, got %d due of %d", due, stored)
	}
	// The store the SDK's test context builds: an IAVL store for the module
	// and a transient one, both over one in-memory database.
	key := storetypes.NewKVStoreKey(types.StoreKey)
	db := dbm.NewMemDB()
	cms := store.NewCommitMultiStore(db, log.NewNopLogger(), metrics.NewNoOpMetrics())
	cms.MountStoreWithDB(key, storetypes.StoreTypeIAVL, db)
	cms.MountStoreWithDB(storetypes.NewTransientStoreKey("transient_bench"), storetypes.StoreTypeTransient, db)
	if err := cms.LoadLatestVersion(); err != nil {
		return nil, err
	}

	cdc := codec.NewProtoCodec(codectypes.NewInterfaceRegistry())
	k := keeper.NewKeeper(cdc, sdkruntime.NewKVStoreService(key), authority)
	ran := new(int)
	handler := func(context.Context, types.Task) error {
		*ran++
		return nil
	}
	if err := k.Register(types.TaskDefinition{Name: taskType, Handler: handler}); err != nil {
		return nil, err
	}
	if err := k.Seal(); err != nil {
		return nil, err
	}

	ctx := sdk.NewContext(cms, cmtproto.Header{Height: 1}, false, log.NewNopLogger())
	if err := k.InitGenesis(ctx, *types.DefaultGenesis()); err != nil {
		return nil, err
	}
	batch := make([]types.NewTask, 0, scheduleBatch)
	flush := func() error {
		_, err := k.Schedule(ctx, batch...)
		batch = batch[:0]
		return err
	}
	for i := range stored - due {
		batch = append(batch, types.NewTask{Type: taskType, DueHeight: Height + 1 + int64(i%spread)})
		if len(batch) == scheduleBatch {
			if err := flush(); err != nil {
				return nil, err
			}
		}
	}
	for range due {
		batch = append(batch, types.NewTask{Type: taskType, DueHeight: Height})
	}
	if err := flush(); err != nil {
		return nil, err
	}
	cms.Commit()

	w := &DueWorkload{cms: cms, k: k, ran: ran, stored: stored, due: due}
	meter := storetypes.NewInfiniteGasMeter()
	if err := w.runBlock(w.block().WithGasMeter(meter)); err != nil {
		return nil, err
	}
	w.gas = meter.GasConsumed()
	return w, nil
}

// block returns a context for the end of block Height over a cache of the
// committed state, the way a block starts.
func (w *DueWorkload) block() sdk.Context {
	return sdk.NewContext(w.cms.CacheMultiStore(), cmtproto.Header{Height: Height}, false, log.NewNopLogger())
}

// runBlock plays RunDue once and checks that exactly the due tasks ran.
func (w *DueWorkload) runBlock(ctx sdk.Context) error {
	*w.ran = 0
	if err := w.k.RunDue(ctx); err != nil {
		return err
	}
	if *w.ran != w.due {
		return fmt.Errorf("RunDue ran %d tasks, want %d", *w.ran, w.due)
	}
	return nil
}

// Stored is the number of tasks in the store.
func (w *DueWorkload) Stored() int { return w.stored }

// Due is the number of tasks due at Height.
func (w *DueWorkload) Due() int { return w.due }

// GasPerRun is the gas one RunDue consumed, measured when the workload was
// built. Unlike time, it does not depend on the machine's load.
func (w *DueWorkload) GasPerRun() uint64 { return w.gas }

// Run plays RunDue once per iteration, each time from the committed state;
// building the block's cache store is kept off the clock.
func (w *DueWorkload) Run(b *testing.B) {
	// The large store's setup garbage would otherwise be collected while
	// the timer runs.
	runtime.GC()
	b.ReportAllocs()
	ran := 0
	for b.Loop() {
		b.StopTimer()
		ctx := w.block()
		*w.ran = 0
		b.StartTimer()
		if err := w.k.RunDue(ctx); err != nil {
			b.Fatal(err)
		}
		ran += *w.ran
	}
	if want := w.due * b.N; ran != want {
		b.Fatalf("RunDue ran %d tasks over %d blocks, want %d", ran, b.N, want)
	}
}
