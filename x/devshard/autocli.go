package devshard

import (
	autocliv1 "cosmossdk.io/api/cosmos/autocli/v1"

	"github.com/devshard/devshard/x/devshard/types"
)

// AutoCLIOptions names the generated query and tx commands.
func (AppModule) AutoCLIOptions() *autocliv1.ModuleOptions {
	return &autocliv1.ModuleOptions{
		Query: &autocliv1.ServiceCommandDescriptor{
			Service: types.Query_serviceDesc.ServiceName,
			RpcCommandOptions: []*autocliv1.RpcCommandOptions{
				{RpcMethod: "Params", Use: "params", Short: "Show the module's parameters"},
				{
					RpcMethod: "Epoch", Use: "epoch [id]", Short: "Show one epoch with its schedule and history",
					PositionalArgs: []*autocliv1.PositionalArgDescriptor{{ProtoField: "id"}},
				},
				{RpcMethod: "CurrentEpoch", Use: "current-epoch", Short: "Show the epoch whose window holds the latest block"},
				{RpcMethod: "Epochs", Use: "epochs", Short: "List every epoch"},
				{
					RpcMethod: "EpochsByState", Use: "epochs-by-state [state]",
					Short:          "List the epochs in one state (planned, active, settling, accounting, claimable, closed, cancelled)",
					PositionalArgs: []*autocliv1.PositionalArgDescriptor{{ProtoField: "state"}},
				},
				{
					RpcMethod: "Participant", Use: "participant [address]", Short: "Show one participant",
					PositionalArgs: []*autocliv1.PositionalArgDescriptor{{ProtoField: "address"}},
				},
				{RpcMethod: "Participants", Use: "participants", Short: "List every participant"},
				{
					RpcMethod: "EpochMembers", Use: "epoch-members [epoch-id]", Short: "List the participants effective in an epoch",
					PositionalArgs: []*autocliv1.PositionalArgDescriptor{{ProtoField: "epoch_id"}},
				},
				{
					RpcMethod: "MayActFor", Use: "may-act-for [holder] [signer] [kind]",
					Short:          "Check whether signer may sign session messages of kind (e.g. devshard/v1/tx/finish) for holder",
					PositionalArgs: []*autocliv1.PositionalArgDescriptor{{ProtoField: "holder"}, {ProtoField: "signer"}, {ProtoField: "kind"}},
				},
				{
					RpcMethod: "Escrow", Use: "escrow [id]", Short: "Show one escrow with its snapshot and group",
					PositionalArgs: []*autocliv1.PositionalArgDescriptor{{ProtoField: "id"}},
				},
				{
					RpcMethod: "Summary", Use: "summary [epoch-id] [address]", Short: "Show a participant's performance summary for an accounted epoch",
					PositionalArgs: []*autocliv1.PositionalArgDescriptor{{ProtoField: "epoch_id"}, {ProtoField: "address"}},
				},
				{
					RpcMethod: "Conservation", Use: "conservation",
					Short: "Compare the module account's balance with what it owes (open escrows, ledgers, unclaimed rewards, collateral)",
				},
			},
		},
		Tx: &autocliv1.ServiceCommandDescriptor{
			Service: types.Msg_serviceDesc.ServiceName,
			RpcCommandOptions: []*autocliv1.RpcCommandOptions{
				{
					RpcMethod: "RegisterParticipant", Use: "register-participant [url] [collateral]",
					Short:          "Bond collateral and join as a participant from the next epoch",
					PositionalArgs: []*autocliv1.PositionalArgDescriptor{{ProtoField: "url"}, {ProtoField: "collateral"}},
				},
				{
					RpcMethod: "UnregisterParticipant", Use: "unregister-participant",
					Short: "Leave; the collateral returns once the epochs served in are closed",
				},
				{RpcMethod: "SignSession", Skip: true}, // granted through `tx authz grant`, never sent
				{
					RpcMethod: "UpdateParams", Use: "update-params [params-json]",
					Short:          "Propose new parameters (the full Params message as JSON)",
					PositionalArgs: []*autocliv1.PositionalArgDescriptor{{ProtoField: "params"}},
					GovProposal:    true,
				},
				{
					RpcMethod: "CancelEpoch", Use: "cancel-epoch [epoch-id] [reason]", Short: "Propose to cancel an epoch that is not final",
					PositionalArgs: []*autocliv1.PositionalArgDescriptor{{ProtoField: "epoch_id"}, {ProtoField: "reason"}},
					GovProposal:    true,
				},
				{
					RpcMethod: "CreateEscrow", Use: "create-escrow [amount]",
					Short:          "Lock amount (in the collateral denom, integer) for a session in the current epoch, under --runtime-version (an approved version's name; empty only while none is approved)",
					PositionalArgs: []*autocliv1.PositionalArgDescriptor{{ProtoField: "amount"}},
				},
				{
					// Gateways and hosts build and send settlements themselves;
					// this is for an operator holding a signed settlement as JSON.
					RpcMethod: "SettleEscrow", Use: "settle-escrow [settlement-json]",
					Short:          "Settle an escrow with a signed settlement (the Settlement message as JSON)",
					PositionalArgs: []*autocliv1.PositionalArgDescriptor{{ProtoField: "settlement"}},
				},
				{
					RpcMethod: "ClaimRewards", Use: "claim-rewards [epoch-id]", Short: "Claim your reward for a CLAIMABLE epoch",
					PositionalArgs: []*autocliv1.PositionalArgDescriptor{{ProtoField: "epoch_id"}},
				},
			},
		},
	}
}
