package chainclient_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	sdkmath "cosmossdk.io/math"
	sdk "github.com/cosmos/cosmos-sdk/types"
	txtypes "github.com/cosmos/cosmos-sdk/types/tx"
	"github.com/cosmos/cosmos-sdk/x/authz"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/chain/node"
	"github.com/devshard/devshard/chaincfg"
	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

func addr(a sdk.AccAddress) signing.Address {
	var s signing.Address
	copy(s[:], a)
	return s
}

// Against a real node: the current epoch, epoch changes from new blocks, and
// a warm-key grant seen through the cached authorizer.
func TestClientAgainstARealNode(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	params := devshardtypes.DefaultParams()
	params.EpochLength = 6
	funds := sdk.NewCoins(sdk.NewCoin(chaincfg.Denom, sdkmath.NewInt(100_000_000)))
	n, err := node.Start(ctx, node.Config{BlockTime: 200 * time.Millisecond, Params: &params,
		Accounts: []node.Account{{Name: "cold", Coins: funds}, {Name: "warm", Coins: funds}}})
	require.NoError(t, err)
	defer func() { require.NoError(t, n.Close()) }()

	c, err := chainclient.Dial(chainclient.Config{GRPC: n.GRPCAddress, RPC: n.RPCAddress, GrantTTL: 200 * time.Millisecond})
	require.NoError(t, err)
	defer c.Close()

	first, err := c.CurrentEpoch(ctx)
	require.NoError(t, err)
	require.GreaterOrEqual(t, first, uint64(1))
	chainclient.EpochQueries(c).Store(0)

	// Follow epochs over the websocket until two changes were seen.
	var mu sync.Mutex
	var seen []uint64
	fctx, fcancel := context.WithCancel(ctx)
	go func() {
		_ = c.FollowEpochs(fctx, time.Minute, func(e uint64) {
			mu.Lock()
			seen = append(seen, e)
			mu.Unlock()
		})
	}()
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) >= 4
	}, 30*time.Second, 50*time.Millisecond, "epochs change every 6 blocks of 200 ms; polling is 1 min, so changes came from the websocket")
	fcancel()
	mu.Lock()
	require.Less(t, seen[0], seen[1])
	require.Less(t, seen[1], seen[2])
	require.Less(t, seen[2], seen[3])
	// Two whole epochs of 6 blocks passed between the first and the third
	// change; blocks below an epoch's end height cost no query.
	require.LessOrEqual(t, chainclient.EpochQueries(c).Load(), int64(len(seen)+2), "about one query per epoch, not one per block")
	mu.Unlock()

	cold, warm := n.Accounts[0], n.Accounts[1]
	auth := c.Authorizer()
	require.False(t, auth.MayActFor(addr(cold.Address), addr(warm.Address), session.KindFinish))
	grant, err := authz.NewGrant(time.Now(), authz.NewGenericAuthorization(sdk.MsgTypeURL(&devshardtypes.MsgSignSession{})), nil)
	require.NoError(t, err)
	_, err = n.TxClient().Send(ctx, cold.Key, &authz.MsgGrant{Granter: cold.Address.String(), Grantee: warm.Address.String(), Grant: grant})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return auth.MayActFor(addr(cold.Address), addr(warm.Address), session.KindFinish)
	}, 5*time.Second, 50*time.Millisecond, "the cached answer expires and the grant is seen")
	require.Equal(t, cold.Address.String(), c.Address(addr(cold.Address)))
}

// settleNet is a real node with three registered hosts and a funded
// gateway account: what a test of sending escrows and settlements needs.
type settleNet struct {
	n      *node.Node
	params devshardtypes.Params
	hosts  []node.Account
	gw     node.Account
	keys   *sessiontest.Fixture // the gateway's and the hosts' keys
}

// startSettleNet starts the node (blocks of 200 ms, epochs of 8, groups of
// 4; tune changes the rest), funds each account with funds and registers
// the hosts. The hosts serve from the next epoch (waitServing).
func startSettleNet(t *testing.T, ctx context.Context, funds int64, tune func(*devshardtypes.Params)) *settleNet {
	t.Helper()
	return startSettleNetOf(t, ctx, funds, tune, 0)
}

// startSettleNetOf is startSettleNet with blocks of at most maxGas (0: the
// default).
func startSettleNetOf(t *testing.T, ctx context.Context, funds int64, tune func(*devshardtypes.Params), maxGas int64) *settleNet {
	t.Helper()
	params := devshardtypes.DefaultParams()
	params.EpochLength = 8
	params.GroupSize = 4
	params.MinCollateral = sdk.NewCoin(chaincfg.Denom, sdkmath.NewInt(1_000_000))
	tune(&params)
	coins := sdk.NewCoins(sdk.NewCoin(chaincfg.Denom, sdkmath.NewInt(funds)))
	cfg := node.Config{BlockTime: 200 * time.Millisecond, Params: &params, BlockMaxGas: maxGas}
	for i := range 3 {
		cfg.Accounts = append(cfg.Accounts, node.Account{Name: fmt.Sprintf("host%d", i), Coins: coins})
	}
	cfg.Accounts = append(cfg.Accounts, node.Account{Name: "gateway", Coins: coins})
	n, err := node.Start(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, n.Close()) })
	s := &settleNet{n: n, params: params, hosts: n.Accounts[:3], gw: n.Accounts[3], keys: &sessiontest.Fixture{}}
	s.keys.Gateway, err = signing.PrivKeyFromBytes(s.gw.Key.Key)
	require.NoError(t, err)
	for i, h := range s.hosts {
		k, err := signing.PrivKeyFromBytes(h.Key.Key)
		require.NoError(t, err)
		s.keys.Hosts = append(s.keys.Hosts, k)
		_, err = n.TxClient().Send(ctx, h.Key, &devshardtypes.MsgRegisterParticipant{
			Participant: h.Address.String(), Url: fmt.Sprintf("https://host%d.example/", i), Collateral: params.MinCollateral,
		})
		require.NoError(t, err)
	}
	return s
}

// waitServing waits, through c, for the epoch after the hosts registered.
func (s *settleNet) waitServing(t *testing.T, ctx context.Context, c *chainclient.Client) {
	t.Helper()
	registered, err := c.CurrentEpoch(ctx)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		id, state, err := c.Epoch(ctx)
		return err == nil && id > registered && state == devshardtypes.EpochActive
	}, 30*time.Second, 100*time.Millisecond)
}

// finished is escrow snap's session with two finalizing rounds played,
// and the fixture that signs for its group.
func (s *settleNet) finished(t *testing.T, snap *sessionpb.EscrowSnapshot) (*sessiontest.Fixture, *sessiontest.Sequencer) {
	t.Helper()
	f := &sessiontest.Fixture{Gateway: s.keys.Gateway, Hosts: s.keys.Hosts, Snapshot: snap}
	for _, a := range snap.Group {
		for i, h := range s.hosts {
			if h.Address.Equals(sdk.AccAddress(a)) {
				f.Holders = append(f.Holders, i)
			}
		}
	}
	seq := f.Sequencer()
	for range 2 {
		_, err := seq.Next(sessiontest.Finalize())
		require.NoError(t, err)
	}
	return f, seq
}

// Against a real node: a gateway's account locks an escrow and settles it
// through the client, and every refusal on the way is told by its code: an
// escrow the account cannot lock is ErrInsufficientFunds, a settlement
// without quorum is session.ReasonQuorum, a second settlement of a settled
// escrow is success with the first one's hash.
func TestClientSendsAgainstARealNode(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const funds = 100_000_000
	net := startSettleNet(t, ctx, funds, func(p *devshardtypes.Params) {
		p.ApprovedVersions = []devshardtypes.ApprovedVersion{
			{Name: "v1", Url: "https://example.org/v1", Sha256: strings.Repeat("ab", 32)},
			{Name: "v2", Url: "https://example.org/v2", Sha256: strings.Repeat("cd", 32)},
		}
	})
	n, hosts, gw, keys := net.n, net.hosts, net.gw, net.keys

	// No ChainID: the client asks the node at its first send.
	c, err := chainclient.Dial(chainclient.Config{GRPC: n.GRPCAddress, RPC: n.RPCAddress, Key: keys.Gateway})
	require.NoError(t, err)
	defer c.Close()

	url, err := c.HostURL(ctx, addr(hosts[1].Address))
	require.NoError(t, err)
	require.Equal(t, "https://host1.example", url)
	_, err = c.HostURL(ctx, addr(gw.Address))
	require.Error(t, err, "the gateway is no participant")

	// The hosts serve from the next epoch on.
	net.waitServing(t, ctx, c)

	candidates, err := c.CandidateURLs(ctx)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"https://host0.example", "https://host1.example", "https://host2.example"}, candidates)

	// The escrow sequence, read from the node's store: no escrow yet, so
	// the next gets id 1.
	next, err := c.NextEscrowID(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1), next)
	_, err = c.CreateEscrow(ctx, funds+1)
	require.ErrorIs(t, err, chainclient.ErrInsufficientFunds)
	var refused *chainclient.TxError
	require.ErrorAs(t, err, &refused)
	_, err = c.CreateEscrowUnder(ctx, 1_000_000, "v3")
	require.ErrorIs(t, err, chainclient.ErrUnapprovedVersion)

	const amount = 2_000_000
	snap, err := c.CreateEscrow(ctx, amount)
	require.NoError(t, err)
	require.Equal(t, uint64(amount), snap.Amount)
	require.Equal(t, "v2", snap.RuntimeVersion, "the newest approved version")
	next, err = c.NextEscrowID(ctx)
	require.NoError(t, err)
	require.Equal(t, snap.EscrowId+1, next, "the next id is past the escrow just made")
	bal, err := c.Balance(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(funds-amount), bal)

	f, seq := net.finished(t, snap)

	// One slot's signature is no quorum: the chain refuses it in simulation,
	// and the client reads the protocol's reason from the code.
	lone := f.Settle(seq.Replica, f.AllSlots()[0])
	var want session.Reason
	_, verr := session.VerifySettlement(f.Snapshot, lone, nil)
	require.ErrorAs(t, verr, &want)
	_, err = c.SettleEscrow(ctx, lone)
	require.ErrorIs(t, err, want)
	require.ErrorAs(t, err, &refused)

	good := f.Settle(seq.Replica, f.AllSlots()...)
	hash, err := c.SettleEscrow(ctx, good)
	require.NoError(t, err)
	require.NotEmpty(t, hash)
	closed, by, err := c.Closed(ctx, snap.EscrowId)
	require.NoError(t, err)
	require.True(t, closed)
	require.Equal(t, hash, by)
	// The node indexes what the client searches by (chain.IndexedEvents),
	// not every attribute: a payout is not found by its escrow id.
	for event, want := range map[string]int{"EventEscrowSettled": 1, "EventEscrowPayout": 0} {
		res, err := txtypes.NewServiceClient(n.Conn()).GetTxsEvent(ctx, &txtypes.GetTxsEventRequest{
			Query: fmt.Sprintf(`devshard.devshard.v1.%s.escrow_id='"%d"'`, event, snap.EscrowId), Limit: 1,
		})
		require.NoError(t, err)
		require.Len(t, res.TxResponses, want, event)
	}
	again, err := c.SettleEscrow(ctx, good)
	require.NoError(t, err, "an escrow already settled is success")
	require.Equal(t, hash, again)

	ro, err := chainclient.Dial(chainclient.Config{GRPC: n.GRPCAddress, RPC: n.RPCAddress})
	require.NoError(t, err)
	defer ro.Close()
	_, err = ro.CreateEscrow(ctx, 1)
	require.True(t, errors.Is(err, chainclient.ErrReadOnly), "%v", err)
}

// Against a real node: settlements asked for together share txs (a
// gateway settles as many escrows per block as are due, not one), and a
// settlement the chain refuses fails alone, with its own reason, while the
// others in its tx land.
func TestSettlementsShareATx(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	net := startSettleNet(t, ctx, 100_000_000, func(*devshardtypes.Params) {})
	c, err := chainclient.Dial(chainclient.Config{GRPC: net.n.GRPCAddress, RPC: net.n.RPCAddress, Key: net.keys.Gateway})
	require.NoError(t, err)
	defer c.Close()
	net.waitServing(t, ctx, c)

	// Escrows, each with a finished session; the fourth's settlement
	// carries one slot's signature, no quorum.
	const escrows, bad = 7, 3
	settlements := func() []*sessionpb.Settlement {
		out := make([]*sessionpb.Settlement, escrows)
		for i := range out {
			snap, err := c.CreateEscrow(ctx, 2_000_000)
			require.NoError(t, err)
			f, seq := net.finished(t, snap)
			slots := f.AllSlots()
			if i == bad {
				slots = slots[:1]
			}
			out[i] = f.Settle(seq.Replica, slots...)
		}
		return out
	}
	// checkSettled requires every settlement but the bad one settled by
	// the tx its call returned, the bad one refused for its own reason,
	// and returns the txs that carried them.
	checkSettled := func(ms []*sessionpb.Settlement, hashes []string, errs []error) map[string]bool {
		txs := map[string]bool{}
		for i, m := range ms {
			if i == bad {
				require.ErrorIs(t, errs[i], session.ReasonQuorum, "the refused settlement fails with its own reason")
				continue
			}
			require.NoError(t, errs[i], "escrow %d", m.EscrowId)
			closed, by, err := c.Closed(ctx, m.EscrowId)
			require.NoError(t, err)
			require.True(t, closed)
			require.Equal(t, hashes[i], by)
			txs[hashes[i]] = true
		}
		return txs
	}

	// In one batch: the chain names the refused one by its index, and the
	// six others go again, together.
	ms := settlements()
	hashes, errs := chainclient.SettleTogether(ctx, c, ms)
	require.Len(t, checkSettled(ms, hashes, errs), 1, "the six good settlements share one tx")

	// Asked for at once: the first tx goes at once; everything asked for
	// while it waits goes in the next. One by one they would take six.
	ms = settlements()
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Go(func() { hashes[i], errs[i] = c.SettleEscrow(ctx, m) })
	}
	wg.Wait()
	require.LessOrEqual(t, len(checkSettled(ms, hashes, errs)), 2, "six settlements asked for at once land in at most two txs, not one each")
}

// Against a real node: a host and the gateway settle one escrow past its
// deadline at once, and a block holds only one of the two txs. Both pass CheckTx, the
// block takes one, and the recheck after it drops the other from the
// mempool (its escrow is settled now), so no block ever includes it. Its
// sender learns so from sending it again, and reports the escrow settled
// by the other's tx at once, not after the minute's wait for a block,
// which held the account's next tx (a rewards claim) until its window
// closed.
func TestASettlementTheMempoolDroppedEndsItsWait(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	net := startSettleNetOf(t, ctx, 100_000_000, func(p *devshardtypes.Params) {
		p.SettlementWindowEpochs = 1
		p.ExpiryEpochs = 50
	}, blockGasForOneSettlement)
	gw, err := chainclient.Dial(chainclient.Config{GRPC: net.n.GRPCAddress, RPC: net.n.RPCAddress, Key: net.keys.Gateway})
	require.NoError(t, err)
	defer gw.Close()
	net.waitServing(t, ctx, gw)
	snap, err := gw.CreateEscrow(ctx, 2_000_000)
	require.NoError(t, err)
	f, seq := net.finished(t, snap)
	m := f.Settle(seq.Replica, f.AllSlots()...)

	// Past the deadline any member may settle.
	require.Eventually(t, func() bool {
		esc, err := gw.Escrow(ctx, snap.EscrowId)
		require.NoError(t, err)
		cur, err := gw.CurrentEpoch(ctx)
		return err == nil && cur >= esc.DeadlineEpoch
	}, 60*time.Second, 100*time.Millisecond)

	host, err := chainclient.Dial(chainclient.Config{GRPC: net.n.GRPCAddress, RPC: net.n.RPCAddress, Key: net.keys.Hosts[f.Holders[0]]})
	require.NoError(t, err)
	defer host.Close()
	hashes, took := make([]string, 2), make([]time.Duration, 2)
	var wg sync.WaitGroup
	for i, c := range []*chainclient.Client{host, gw} {
		wg.Go(func() {
			began := time.Now()
			var err error
			hashes[i], err = c.SettleEscrow(ctx, m)
			took[i] = time.Since(began)
			require.NoError(t, err, "sender %d", i)
		})
	}
	wg.Wait()
	require.NotEmpty(t, hashes[0])
	require.Equal(t, hashes[0], hashes[1], "one tx settled the escrow; the other was dropped")
	res, err := txtypes.NewServiceClient(net.n.Conn()).GetTx(ctx, &txtypes.GetTxRequest{Hash: hashes[0]})
	require.NoError(t, err)
	t.Logf("the settling tx wanted %d gas (used %d); the calls took %v", res.TxResponse.GasWanted, res.TxResponse.GasUsed, took)
	require.Greater(t, 2*res.TxResponse.GasWanted, int64(blockGasForOneSettlement), "a block holds one of the two txs, not both")
	require.Less(t, max(took[0], took[1]), 20*time.Second, "the dropped tx's wait ended when it was sent again")
}

// blockGasForOneSettlement is a block gas limit that holds one settlement
// tx of TestASettlementTheMempoolDroppedEndsItsWait's group (its gas limit
// is 1.5 × what it uses) but not two, and every other tx of its setup. The
// chain draws the group's 4 slots from 3 hosts; the cheapest settlement,
// all 4 slots one host's (one signature, one payout), wanted 121,743 gas,
// so two of them want more than this.
const blockGasForOneSettlement = 230_000
