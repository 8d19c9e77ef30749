package scheduler

import (
	autocliv1 "cosmossdk.io/api/cosmos/autocli/v1"

	"github.com/devshard/devshard/x/scheduler/types"
)

// AutoCLIOptions names the generated query and tx commands.
func (AppModule) AutoCLIOptions() *autocliv1.ModuleOptions {
	return &autocliv1.ModuleOptions{
		Query: &autocliv1.ServiceCommandDescriptor{
			Service: types.Query_serviceDesc.ServiceName,
			RpcCommandOptions: []*autocliv1.RpcCommandOptions{
				{RpcMethod: "Params", Use: "params", Short: "Show the scheduler's parameters"},
				{
					RpcMethod: "Task", Use: "task [id]", Short: "Show one task, scheduled or failed",
					PositionalArgs: []*autocliv1.PositionalArgDescriptor{{ProtoField: "id"}},
				},
				{RpcMethod: "Tasks", Use: "tasks", Short: "List the scheduled tasks by id"},
				{
					RpcMethod: "TasksByType", Use: "tasks-by-type [type]", Short: "List the scheduled tasks of one type",
					PositionalArgs: []*autocliv1.PositionalArgDescriptor{{ProtoField: "type"}},
				},
				{
					RpcMethod: "TasksByDueHeight", Use: "tasks-by-due-height [height]", Short: "List the tasks due at one height",
					PositionalArgs: []*autocliv1.PositionalArgDescriptor{{ProtoField: "height"}},
				},
				{RpcMethod: "FailedTasks", Use: "failed-tasks", Short: "List the tasks that ran out of retries"},
				{RpcMethod: "TaskTypes", Use: "task-types", Short: "List the registered task types in the order they run"},
			},
		},
		Tx: &autocliv1.ServiceCommandDescriptor{
			Service: types.Msg_serviceDesc.ServiceName,
			RpcCommandOptions: []*autocliv1.RpcCommandOptions{
				{
					RpcMethod: "UpdateParams", Use: "update-params [params-json]",
					Short:          "Propose new parameters (the full Params message as JSON)",
					PositionalArgs: []*autocliv1.PositionalArgDescriptor{{ProtoField: "params"}},
					GovProposal:    true,
				},
				{
					RpcMethod: "RetryFailedTask", Use: "retry-failed-task [id]", Short: "Propose to put a failed task back on the schedule",
					PositionalArgs: []*autocliv1.PositionalArgDescriptor{{ProtoField: "id"}},
					GovProposal:    true,
				},
				{
					RpcMethod: "DropFailedTask", Use: "drop-failed-task [id]", Short: "Propose to drop a failed task",
					PositionalArgs: []*autocliv1.PositionalArgDescriptor{{ProtoField: "id"}},
					GovProposal:    true,
				},
			},
		},
	}
}
