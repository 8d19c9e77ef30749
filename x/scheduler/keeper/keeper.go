// Package keeper holds the scheduler's state and runs due tasks.
package keeper

import (
	"cosmossdk.io/collections"
	"cosmossdk.io/collections/indexes"
	"cosmossdk.io/core/store"

	"github.com/cosmos/cosmos-sdk/codec"

	"github.com/devshard/devshard/x/scheduler/types"
)

// TaskIndexes index scheduled tasks by due height and by type. The due index
// is what keeps a block's cost proportional to the tasks due in it: the block
// iterates the (due height, id) keys up to its own height and no further.
type TaskIndexes struct {
	Due  *indexes.Multi[int64, uint64, types.Task]
	Type *indexes.Multi[string, uint64, types.Task]
}

// IndexesList implements collections.Indexes.
func (i TaskIndexes) IndexesList() []collections.Index[uint64, types.Task] {
	return []collections.Index[uint64, types.Task]{i.Due, i.Type}
}

// Keeper is the scheduler's keeper. Copies share the task type registry, so
// types registered on the app's keeper are seen by the module's copy.
type Keeper struct {
	authority string
	registry  *Registry

	Schema collections.Schema
	Params collections.Item[types.Params]
	// NextID is the id the next scheduled task gets.
	NextID collections.Sequence
	// Tasks are the scheduled tasks by id.
	Tasks *collections.IndexedMap[uint64, types.Task, TaskIndexes]
	// Failed are the tasks that ran out of retries, by id.
	Failed collections.Map[uint64, types.Task]
}

// NewKeeper returns a keeper whose governance messages must be signed by
// authority (the gov module account).
func NewKeeper(cdc codec.BinaryCodec, storeService store.KVStoreService, authority string) Keeper {
	sb := collections.NewSchemaBuilder(storeService)
	taskValue := codec.CollValue[types.Task](cdc)
	k := Keeper{
		authority: authority,
		registry:  NewRegistry(),
		Params:    collections.NewItem(sb, types.ParamsKey, "params", codec.CollValue[types.Params](cdc)),
		NextID:    collections.NewSequence(sb, types.NextIDKey, "next_id"),
		Tasks: collections.NewIndexedMap(sb, types.TasksKey, "tasks", collections.Uint64Key, taskValue, TaskIndexes{
			Due: indexes.NewMulti(sb, types.DueIndexKey, "tasks_by_due_height", collections.Int64Key, collections.Uint64Key,
				func(_ uint64, t types.Task) (int64, error) { return t.DueHeight, nil }),
			Type: indexes.NewMulti(sb, types.TypeIndexKey, "tasks_by_type", collections.StringKey, collections.Uint64Key,
				func(_ uint64, t types.Task) (string, error) { return t.Type, nil }),
		}),
		Failed: collections.NewMap(sb, types.FailedKey, "failed", collections.Uint64Key, taskValue),
	}
	schema, err := sb.Build()
	if err != nil {
		panic(err)
	}
	k.Schema = schema
	return k
}

// Authority is the address that may send the governance messages.
func (k Keeper) Authority() string { return k.authority }

// Register adds task types. Call it while wiring the app, then Seal once every
// module has registered.
func (k Keeper) Register(defs ...types.TaskDefinition) error { return k.registry.Register(defs...) }

// Seal fixes the run order of the registered types; see Registry.Seal.
func (k Keeper) Seal() error { return k.registry.Seal() }

// TaskTypes lists the registered types in run order.
func (k Keeper) TaskTypes() []types.TaskType { return k.registry.Types() }
