package node_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	sdkmath "cosmossdk.io/math"

	sdk "github.com/cosmos/cosmos-sdk/types"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/chain/node"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// The stale root after the deadline on a real chain: a member that is the
// gateway's own settles the session's earliest root; an honest member
// replaces it with the latest inside the challenge window; the stale root
// cannot come back; the scheduler pays the latest when the window closes.
func TestChainChallengeWindowPaysTheLatestRoot(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	params := devshardtypes.DefaultParams()
	params.EpochLength = 10 // epoch N starts at 1 + (N-1)*10
	params.MinCollateral = sdk.NewCoin(chain.Denom, sdkmath.NewInt(1_000_000))
	params.GroupSize = 8
	params.ExpiryEpochs = 4
	params.SettlementChallengeBlocks = 6
	funds := sdk.NewCoins(sdk.NewCoin(chain.Denom, sdkmath.NewInt(100_000_000)))
	cfg := node.Config{BlockTime: 250 * time.Millisecond, Params: &params}
	for i := range 4 {
		cfg.Accounts = append(cfg.Accounts, node.Account{Name: fmt.Sprintf("acct%d", i), Coins: funds})
	}
	n, err := node.Start(ctx, cfg)
	require.NoError(t, err)
	defer func() { require.NoError(t, n.Close()) }()
	hosts, gateway := n.Accounts[:3], n.Accounts[3]
	q := devshardtypes.NewQueryClient(n.Conn())
	bank := banktypes.NewQueryClient(n.Conn())
	send := func(acct node.Account, msg sdk.Msg) (*sdk.TxResponse, error) {
		return n.TxClient().Send(ctx, acct.Key, msg)
	}
	escrow := func(id uint64) devshardtypes.Escrow {
		res, err := q.Escrow(ctx, &devshardtypes.QueryEscrowRequest{Id: id})
		require.NoError(t, err)
		return res.Escrow
	}
	balance := func(addr sdk.AccAddress) int64 {
		res, err := bank.Balance(ctx, &banktypes.QueryBalanceRequest{Address: addr.String(), Denom: chain.Denom})
		require.NoError(t, err)
		return res.Balance.Amount.Int64()
	}

	for i, h := range hosts {
		_, err := send(h, &devshardtypes.MsgRegisterParticipant{
			Participant: h.Address.String(), Url: fmt.Sprintf("https://host%d.example", i),
			Collateral: sdk.NewCoin(chain.Denom, sdkmath.NewInt(int64(i+1)*1_000_000)),
		})
		require.NoError(t, err)
	}
	require.NoError(t, n.WaitForHeight(ctx, 12)) // epoch 2 ACTIVE
	// The group is drawn by weight; the scenario needs a second host in it
	// besides the gateway's (slot 0's). A draw of 8 slots all to one host
	// is rare but happens, so such an escrow is passed over for the next.
	var esc devshardtypes.Escrow
	for id := uint64(1); ; id++ {
		_, err = send(gateway, &devshardtypes.MsgCreateEscrow{Creator: gateway.Address.String(), Amount: 2_000_000})
		require.NoError(t, err)
		esc = escrow(id)
		if distinctHolders(esc.Snapshot.Group) > 1 || id == 5 {
			break
		}
	}
	require.Equal(t, uint64(2), esc.Snapshot.Epoch)

	// Session keys; the gateway's own host holds slot 0.
	f := &sessiontest.Fixture{Snapshot: &esc.Snapshot}
	f.Gateway, err = signing.PrivKeyFromBytes(gateway.Key.Key)
	require.NoError(t, err)
	for _, h := range hosts {
		k, err := signing.PrivKeyFromBytes(h.Key.Key)
		require.NoError(t, err)
		f.Hosts = append(f.Hosts, k)
	}
	for _, a := range esc.Snapshot.Group {
		for i, h := range hosts {
			if h.Address.Equals(sdk.AccAddress(a)) {
				f.Holders = append(f.Holders, i)
			}
		}
	}
	require.Len(t, f.Holders, len(esc.Snapshot.Group))
	gatewayHost, honest := hosts[f.Holders[0]], -1
	for _, i := range f.Holders {
		if i != f.Holders[0] {
			honest = i
		}
	}
	require.NotEqual(t, -1, honest, "the group has a host besides the gateway's")

	seq := f.Sequencer()
	infer := func(k int) {
		for range k {
			id := seq.Replica.Nonce() + 1
			_, err := seq.Next(sessiontest.Start(id, 10, 100))
			require.NoError(t, err)
			exec := seq.Replica.Executor(id)
			_, err = seq.Next(f.Confirm(exec, id, sessiontest.Timestamp(id)), f.Finish(exec, id, 10, 40))
			require.NoError(t, err)
		}
	}
	infer(1)
	early := f.Settle(seq.Replica, f.AllSlots()...)
	infer(9)
	latest := f.Settle(seq.Replica, f.AllSlots()...) // never finalized
	want, err := session.VerifySettlement(f.Snapshot, latest, nil)
	require.NoError(t, err)

	require.NoError(t, n.WaitForHeight(ctx, 22)) // epoch 3: past the deadline
	gw := balance(gateway.Address)
	_, err = send(gatewayHost, &devshardtypes.MsgSettleEscrow{Sender: gatewayHost.Address.String(), Settlement: early})
	require.NoError(t, err)
	pending := escrow(esc.Id)
	require.Equal(t, devshardtypes.EscrowOpen, pending.Status)
	require.NotNil(t, pending.Pending)
	require.Equal(t, early.Nonce, pending.Pending.Settlement.Nonce)

	_, err = send(hosts[honest], &devshardtypes.MsgSettleEscrow{Sender: hosts[honest].Address.String(), Settlement: latest})
	require.NoError(t, err)
	replaced := escrow(esc.Id)
	require.Equal(t, latest.Nonce, replaced.Pending.Settlement.Nonce)
	require.Equal(t, pending.Pending.WindowEndHeight, replaced.Pending.WindowEndHeight)
	_, err = send(gatewayHost, &devshardtypes.MsgSettleEscrow{Sender: gatewayHost.Address.String(), Settlement: early})
	require.ErrorContains(t, err, "is pending in its challenge window; only a settlement of a higher nonce replaces it")
	require.Equal(t, gw, balance(gateway.Address), "nothing paid inside the window")

	require.NoError(t, n.WaitForHeight(ctx, replaced.Pending.WindowEndHeight+1))
	settled := escrow(esc.Id)
	require.Equal(t, devshardtypes.EscrowSettled, settled.Status)
	require.Equal(t, gw+int64(want.Refund), balance(gateway.Address), "the creator is refunded what the latest root leaves")
	res, err := q.Conservation(ctx, &devshardtypes.QueryConservationRequest{})
	require.NoError(t, err)
	require.Equal(t, res.Balance, res.Owed)
	members, err := q.EpochMembers(ctx, &devshardtypes.QueryEpochMembersRequest{EpochId: 2})
	require.NoError(t, err)
	var finished uint64
	for _, m := range members.Members {
		finished += m.Stats.Finished
	}
	require.Equal(t, uint64(10), finished, "the hosts are paid for all ten inferences")
}

// distinctHolders counts the accounts among a group's slots.
func distinctHolders(group [][]byte) int {
	seen := map[string]bool{}
	for _, a := range group {
		seen[string(a)] = true
	}
	return len(seen)
}
