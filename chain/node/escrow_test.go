package node_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	sdkmath "cosmossdk.io/math"

	sdk "github.com/cosmos/cosmos-sdk/types"
	authtypes "github.com/cosmos/cosmos-sdk/x/auth/types"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"
	distrtypes "github.com/cosmos/cosmos-sdk/x/distribution/types"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/chain/node"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// Coins flow on a real chain: three hosts serve epoch 2; a gateway locks
// three escrows; a session built with the protocol package settles into the
// ledgers; one host is punished at accounting; the later settlements cross
// the epoch boundary (the punished host's pay goes back to the gateway, an
// honest host's into its summary, or straight to it once it claimed). Every
// balance is checked exactly at every step (gas is free on this node).
func TestChainSettlesEscrowsAndPaysRewards(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	const epochLength = 10 // epoch N starts at 1 + (N-1)*10
	params := devshardtypes.DefaultParams()
	params.EpochLength = epochLength
	params.AccountingEpochs = 0 // epoch 2: ACCOUNTING and CLAIMABLE at the end of 31, CLOSED at 41
	params.ClaimableEpochs = 1
	params.MinCollateral = sdk.NewCoin(chain.Denom, sdkmath.NewInt(1_000_000))
	params.GroupSize = 16
	params.ExpiryEpochs = 4
	params.MaxInvalidRatioBps = 0     // a single invalidated inference punishes
	params.ValidationRateBps = 10_000 // every eligible slot may open a challenge
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
	distr := distrtypes.NewQueryClient(n.Conn())
	module := authtypes.NewModuleAddress(devshardtypes.ModuleName)
	send := func(acct node.Account, msg sdk.Msg) *sdk.TxResponse {
		t.Helper()
		res, err := n.TxClient().Send(ctx, acct.Key, msg)
		require.NoError(t, err)
		return res
	}
	bal := func(addr sdk.AccAddress) int64 {
		t.Helper()
		res, err := bank.Balance(ctx, &banktypes.QueryBalanceRequest{Address: addr.String(), Denom: chain.Denom})
		require.NoError(t, err)
		return res.Balance.Amount.Int64()
	}
	pool := func() int64 {
		t.Helper()
		res, err := distr.CommunityPool(ctx, &distrtypes.QueryCommunityPoolRequest{})
		require.NoError(t, err)
		return res.Pool.AmountOf(chain.Denom).TruncateInt64()
	}
	conserved := func() {
		t.Helper()
		res, err := q.Conservation(ctx, &devshardtypes.QueryConservationRequest{})
		require.NoError(t, err)
		require.Equal(t, res.Balance, res.Owed, "module account: %+v", res)
	}
	want := map[string]int64{} // expected balance of every account we follow
	check := func(step string) {
		t.Helper()
		for addr, amount := range want {
			require.Equal(t, amount, bal(sdk.MustAccAddressFromBech32(addr)), "%s: balance of %s", step, addr)
		}
		conserved()
	}

	// Signing keys of the hosts and the gateway for the session protocol.
	keys := &sessiontest.Fixture{}
	var err2 error
	keys.Gateway, err2 = signing.PrivKeyFromBytes(gateway.Key.Key)
	require.NoError(t, err2)
	for _, h := range hosts {
		k, err := signing.PrivKeyFromBytes(h.Key.Key)
		require.NoError(t, err)
		require.Equal(t, h.Address, sdk.AccAddress(k.Address().Bytes()))
		keys.Hosts = append(keys.Hosts, k)
	}
	fixture := func(esc devshardtypes.Escrow) *sessiontest.Fixture {
		snap := esc.Snapshot
		f := &sessiontest.Fixture{Gateway: keys.Gateway, Hosts: keys.Hosts, Snapshot: &snap}
		for _, a := range snap.Group {
			for i, h := range hosts {
				if h.Address.Equals(sdk.AccAddress(a)) {
					f.Holders = append(f.Holders, i)
				}
			}
		}
		require.Len(t, f.Holders, len(snap.Group))
		return f
	}

	// Epoch 1 (cancelled, nobody registered): the hosts register.
	for i, h := range hosts {
		collateral := int64(i+1) * 1_000_000
		send(h, &devshardtypes.MsgRegisterParticipant{
			Participant: h.Address.String(), Url: fmt.Sprintf("https://host%d.example", i),
			Collateral: sdk.NewCoin(chain.Denom, sdkmath.NewInt(collateral)),
		})
		want[h.Address.String()] = 100_000_000 - collateral
	}
	want[gateway.Address.String()] = 100_000_000
	want[module.String()] = 6_000_000
	check("registered")

	require.NoError(t, n.WaitForHeight(ctx, 12)) // epoch 2 ACTIVE
	var escrows []devshardtypes.Escrow
	for _, amount := range []uint64{2_000_000, 3_000_000, 4_000_000} {
		res := send(gateway, &devshardtypes.MsgCreateEscrow{Creator: gateway.Address.String(), Amount: amount})
		var id uint64
		for _, ev := range res.Events {
			if ev.Type == "devshard.devshard.v1.EventEscrowCreated" {
				for _, a := range ev.Attributes {
					if a.Key == "escrow_id" {
						_, err := fmt.Sscanf(trimQuotes(a.Value), "%d", &id)
						require.NoError(t, err)
					}
				}
			}
		}
		require.NotZero(t, id)
		e, err := q.Escrow(ctx, &devshardtypes.QueryEscrowRequest{Id: id})
		require.NoError(t, err)
		require.Equal(t, uint64(2), e.Escrow.Snapshot.Epoch)
		escrows = append(escrows, e.Escrow)
		want[gateway.Address.String()] -= int64(amount)
		want[module.String()] += int64(amount)
	}
	check("escrows created")

	// Groups are drawn from the header hash, so the roles are picked from the
	// groups drawn: the punished host executes in escrow A beside others who
	// can invalidate it (they hold at least a third of its slots: the
	// threshold against an executor needs that), and holds slots of escrow
	// B; the claimer is another
	// host holding slots of escrow C.
	slotsOf := func(esc devshardtypes.Escrow, h int) int {
		n := 0
		for _, a := range esc.Snapshot.Group {
			if hosts[h].Address.Equals(sdk.AccAddress(a)) {
				n++
			}
		}
		return n
	}
	punished, claimerIdx := -1, -1
	for _, h := range []int{2, 1, 0} { // the heaviest first
		if n, g := slotsOf(escrows[0], h), len(escrows[0].Snapshot.Group); n > 0 && 3*(g-n) >= g && slotsOf(escrows[1], h) > 0 {
			punished = h
			break
		}
	}
	require.NotEqual(t, -1, punished, "no host can be punished in escrow A and paid in escrow B")
	for _, h := range []int{1, 0, 2} {
		if h != punished && slotsOf(escrows[2], h) > 0 {
			claimerIdx = h
			break
		}
	}
	require.NotEqual(t, -1, claimerIdx, "no honest host holds slots of escrow C")

	// The punished host executes an inference the others invalidate.
	fa := fixture(escrows[0])
	holder := func(f *sessiontest.Fixture, slot uint32) int { return f.Holders[slot] }
	seq := fa.Sequencer()
	// The executor is the inference id modulo the group size: empty diffs
	// step the nonce to a slot the punished host holds, at most one lap.
	for holder(fa, seq.Replica.Executor(seq.Replica.Nonce()+1)) != punished {
		_, err := seq.Next()
		require.NoError(t, err)
	}
	invalidated := false
	for range 12 {
		id := seq.Replica.Nonce() + 1
		_, err := seq.Next(sessiontest.Start(id, 10, 100))
		require.NoError(t, err)
		exec := seq.Replica.Executor(id)
		_, err = seq.Next(fa.Confirm(exec, id, sessiontest.Timestamp(id)), fa.Finish(exec, id, 10, 40))
		require.NoError(t, err)
		if holder(fa, exec) == punished && !invalidated {
			for _, s := range fa.AllSlots() {
				if _, live := seq.Replica.Record(id); !live {
					break
				}
				if holder(fa, s) != punished {
					_, _ = seq.Next(fa.Validate(s, id, false))
				}
			}
			_, live := seq.Replica.Record(id)
			require.False(t, live, "inference %d resolved", id)
			invalidated = true
		}
	}
	require.True(t, invalidated)
	for range 2 {
		_, err := seq.Next(sessiontest.Finalize())
		require.NoError(t, err)
	}
	settlement := fa.Settle(seq.Replica, fa.AllSlots()...)
	planA, err := session.VerifySettlement(fa.Snapshot, settlement, nil)
	require.NoError(t, err)
	send(gateway, &devshardtypes.MsgSettleEscrow{Sender: gateway.Address.String(), Settlement: settlement})
	want[gateway.Address.String()] += int64(planA.Refund)
	want[module.String()] -= int64(planA.Refund)
	check("escrow A settled into the ledgers") // hosts' coins stay in the module
	ledgers := map[string]int64{}
	for _, a := range planA.ByAddress() {
		ledgers[sdk.AccAddress(a.Address[:]).String()] += int64(a.Cost + a.FeeShare)
	}
	members, err := q.EpochMembers(ctx, &devshardtypes.QueryEpochMembersRequest{EpochId: 2})
	require.NoError(t, err)
	for _, m := range members.Members {
		require.Equal(t, ledgers[m.Address], int64(m.Earned), "ledger of %s", m.Address)
	}

	// Epoch 2 is accounted and claimable at the end of block 31.
	pool0 := pool()
	require.NoError(t, n.WaitForHeight(ctx, 32))
	punishedAddr := hosts[punished].Address.String()
	sum := func(addr string) devshardtypes.EpochPerformanceSummary {
		res, err := q.Summary(ctx, &devshardtypes.QuerySummaryRequest{EpochId: 2, Address: addr})
		require.NoError(t, err)
		return res.Summary
	}
	require.True(t, sum(punishedAddr).Punished)
	require.Equal(t, pool0+ledgers[punishedAddr], pool(), "the punished host's work went to the community pool")
	want[module.String()] -= ledgers[punishedAddr]
	check("accounted")

	// Cross-epoch settlement: the punished host's pay back to the gateway,
	// the honest hosts' into their summaries.
	settleHonest := func(esc devshardtypes.Escrow) map[string]int64 {
		f := fixture(esc)
		s := f.Sequencer()
		for range 6 {
			id := s.Replica.Nonce() + 1
			_, err := s.Next(sessiontest.Start(id, 10, 100))
			require.NoError(t, err)
			exec := s.Replica.Executor(id)
			_, err = s.Next(f.Confirm(exec, id, sessiontest.Timestamp(id)), f.Finish(exec, id, 10, 40))
			require.NoError(t, err)
		}
		for range 2 {
			_, err := s.Next(sessiontest.Finalize())
			require.NoError(t, err)
		}
		m := f.Settle(s.Replica, f.AllSlots()...)
		plan, err := session.VerifySettlement(f.Snapshot, m, nil)
		require.NoError(t, err)
		res := send(gateway, &devshardtypes.MsgSettleEscrow{Sender: gateway.Address.String(), Settlement: m})
		t.Logf("escrow %d: %d-slot settlement tx used %d gas (%d bytes)", esc.Id, len(esc.Snapshot.Group), res.GasUsed, len(res.Tx.GetValue()))
		pay := map[string]int64{"refund": int64(plan.Refund)}
		for _, a := range plan.ByAddress() {
			pay[sdk.AccAddress(a.Address[:]).String()] += int64(a.Cost + a.FeeShare)
		}
		return pay
	}
	rewarded := map[string]int64{}
	for _, h := range hosts {
		rewarded[h.Address.String()] = int64(sum(h.Address.String()).Rewarded)
	}
	payB := settleHonest(escrows[1])
	require.Positive(t, payB[punishedAddr], "the punished host holds slots of escrow B")
	want[gateway.Address.String()] += payB["refund"] + payB[punishedAddr]
	want[module.String()] -= payB["refund"] + payB[punishedAddr]
	check("escrow B settled across epochs")
	for _, h := range hosts {
		addr := h.Address.String()
		if addr == punishedAddr {
			require.Zero(t, sum(addr).Rewarded)
			continue
		}
		require.Equal(t, rewarded[addr]+payB[addr], int64(sum(addr).Rewarded), "summary of %s", addr)
		rewarded[addr] += payB[addr]
	}

	// An honest host claims; the punished one cannot.
	claimer := hosts[claimerIdx]
	send(claimer, &devshardtypes.MsgClaimRewards{Participant: claimer.Address.String(), EpochId: 2})
	want[claimer.Address.String()] += rewarded[claimer.Address.String()]
	want[module.String()] -= rewarded[claimer.Address.String()]
	check("claimed")
	_, err = n.TxClient().Send(ctx, claimer.Key, &devshardtypes.MsgClaimRewards{Participant: claimer.Address.String(), EpochId: 2})
	require.ErrorContains(t, err, "already claimed epoch 2")

	// After the claim, the claimer's share of a cross-epoch settlement is
	// sent straight to it.
	payC := settleHonest(escrows[2])
	require.Positive(t, payC[claimer.Address.String()], "the claimer holds slots of escrow C")
	want[gateway.Address.String()] += payC["refund"] + payC[punishedAddr]
	want[claimer.Address.String()] += payC[claimer.Address.String()]
	want[module.String()] -= payC["refund"] + payC[punishedAddr] + payC[claimer.Address.String()]
	check("escrow C settled after the claim")
}

func trimQuotes(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return s[1 : len(s)-1]
	}
	return s
}
