package localnet_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	sdkmath "cosmossdk.io/math"

	sdk "github.com/cosmos/cosmos-sdk/types"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/chain/localnet"
	"github.com/devshard/devshard/chain/node"
)

// binary is the devshard executable the nodes run, built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "localnet-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "devshard")
	build := exec.Command("go", "build", "-o", binary, "github.com/devshard/devshard/cmd/devshard")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building devshard:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const blockTime = 400 * time.Millisecond

func coins(amount int64) sdk.Coins {
	return sdk.NewCoins(sdk.NewCoin(chain.Denom, sdkmath.NewInt(amount)))
}

// setup starts a network of validators with two funded accounts, alice
// and bob, and stops it when the test ends, failed or not.
func setup(t *testing.T, ctx context.Context, validators int, snapshots uint64) *localnet.Network {
	t.Helper()
	n, err := localnet.Start(ctx, localnet.Config{
		Home: t.TempDir(), Binary: binary, Validators: validators, BlockTime: blockTime,
		SnapshotInterval: snapshots,
		Accounts:         []node.Account{{Name: "alice", Coins: coins(1_000_000_000)}, {Name: "bob", Coins: coins(1)}},
		Progress:         t.Logf,
	})
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		require.NoError(t, n.Close(ctx))
		for _, nd := range n.Nodes {
			require.False(t, nd.Running(), "%s still runs after Close", nd.Name)
		}
	})
	return n
}

// pay sends amount ushard from alice to bob and waits for its block.
func pay(ctx context.Context, n *localnet.Network, amount int64) error {
	alice, bob := n.Accounts[0], n.Accounts[1]
	_, err := n.TxClient().Send(ctx, alice.Key, banktypes.NewMsgSend(alice.Address, bob.Address, coins(amount)))
	return err
}

func balance(t *testing.T, ctx context.Context, n *localnet.Network, a node.Account) int64 {
	t.Helper()
	res, err := banktypes.NewQueryClient(n.Conn()).Balance(ctx, &banktypes.QueryBalanceRequest{Address: a.Address.String(), Denom: chain.Denom})
	require.NoError(t, err)
	return res.Balance.Amount.Int64()
}

// requireSameAppHashes asks every node, height by height, for its app
// hash after each block from..to, and requires them all equal.
func requireSameAppHashes(t *testing.T, ctx context.Context, nodes []*localnet.Node, from, to int64) {
	t.Helper()
	for _, nd := range nodes {
		require.NoError(t, nd.WaitForHeight(ctx, to+1))
	}
	for h := from; h <= to; h++ {
		want, err := nodes[0].AppHash(ctx, h)
		require.NoError(t, err)
		require.NotEmpty(t, want)
		for _, nd := range nodes[1:] {
			got, err := nd.AppHash(ctx, h)
			require.NoError(t, err)
			require.True(t, bytes.Equal(want, got), "app hash after block %d: %s has %X, %s has %X", h, nodes[0].Name, want, nd.Name, got)
		}
	}
	t.Logf("%d nodes agree on the app hash after every block from %d to %d", len(nodes), from, to)
}

// Four validators, each its own process, make blocks together, a bank
// send lands, and all four hold the same state after every block.
func TestFourValidatorsAgreeOnEveryBlock(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := setup(t, ctx, 4, 0)
	require.Len(t, n.Validators(), 4)

	require.NoError(t, pay(ctx, n, 1000))
	require.Equal(t, int64(1001), balance(t, ctx, n, n.Accounts[1]))

	h, err := n.Height(ctx)
	require.NoError(t, err)
	requireSameAppHashes(t, ctx, n.Nodes, 1, max(h, 12))

	// Each node said at start how it runs Go's garbage collector
	// (chain/cmd/gc.go): its own default, or the GOGC it was given.
	for _, nd := range n.Nodes {
		log, err := os.ReadFile(nd.LogPath)
		require.NoError(t, err)
		require.True(t, bytes.Contains(log, []byte("garbage collector: GOGC=")), "%s logged no garbage collector settings at start (%s)", nd.Name, nd.LogPath)
	}
}

// A validator killed while txs are being sent: three of four hold more
// than 2/3 of the power, so blocks keep coming and txs keep landing (Conn
// moves to another node: the killed one is the first it uses). Restarted,
// the killed validator catches up and agrees on every block.
func TestKilledValidatorCatchesUp(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := setup(t, ctx, 4, 0)

	var landed, failed atomic.Int64
	sendCtx, stopSending := context.WithCancel(ctx)
	sending := make(chan struct{})
	go func() {
		defer close(sending)
		for sendCtx.Err() == nil {
			// A tx broadcast to the node just killed may be lost with its
			// mempool: give up on it after a while, as a client would.
			one, cancel := context.WithTimeout(sendCtx, 10*blockTime)
			err := pay(one, n, 1)
			cancel()
			switch {
			case err == nil:
				landed.Add(1)
			case sendCtx.Err() != nil:
				// Stopped while waiting for its block: it may land yet.
				failed.Add(1)
			default:
				failed.Add(1)
				t.Logf("send: %v", err) // the killed node's, or a sequence it raced
				time.Sleep(blockTime)
			}
		}
	}()
	defer func() { stopSending(); <-sending }()

	require.Eventually(t, func() bool { return landed.Load() >= 2 }, 30*time.Second, 50*time.Millisecond)
	victim := n.Nodes[0]
	victim.Kill()
	require.False(t, victim.Running())
	killedAt, err := n.Height(ctx)
	require.NoError(t, err)
	before := landed.Load()
	t.Logf("killed %s at height %d after %d txs", victim.Name, killedAt, before)

	require.NoError(t, n.WaitForHeight(ctx, killedAt+8), "three validators of four keep making blocks")
	require.Eventually(t, func() bool { return landed.Load() >= before+3 }, 30*time.Second, 50*time.Millisecond,
		"txs keep landing without %s", victim.Name)

	require.NoError(t, victim.Start())
	now, err := n.Height(ctx)
	require.NoError(t, err)
	require.NoError(t, victim.WaitForHeight(ctx, now), "%s catches up", victim.Name)
	t.Logf("%s caught up to %d", victim.Name, now)
	stopSending()
	<-sending
	requireSameAppHashes(t, ctx, n.Nodes, 1, now)
	// A send that failed may still have landed (its node died after
	// broadcasting it, or the sending stopped while it waited for its
	// block), so bob holds between the two counts.
	paid := balance(t, ctx, n, n.Accounts[1]) - 1
	require.GreaterOrEqual(t, paid, landed.Load())
	require.LessOrEqual(t, paid, landed.Load()+failed.Load())
}

// Two of four validators dead: the two left hold only half of the power,
// so the chain halts. A tx sent during the halt waits in a live node's
// mempool; one validator back, the chain resumes and the tx lands.
func TestTwoDeadValidatorsHaltTheChain(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := setup(t, ctx, 4, 0)

	n.Nodes[2].Kill()
	n.Nodes[3].Kill()
	time.Sleep(2 * blockTime) // a block already precommitted may still commit
	halted, err := n.Height(ctx)
	require.NoError(t, err)
	time.Sleep(8 * blockTime)
	still, err := n.Height(ctx)
	require.NoError(t, err)
	require.Equal(t, halted, still, "the chain halts with half of the power down")
	t.Logf("halted at %d", halted)

	sent := make(chan error, 1)
	go func() { sent <- pay(ctx, n, 500) }()
	select {
	case err := <-sent:
		t.Fatalf("a tx landed on a halted chain (%v)", err)
	case <-time.After(4 * blockTime):
	}

	require.NoError(t, n.Nodes[2].Start())
	require.NoError(t, n.WaitForHeight(ctx, halted+3), "the chain resumes with three of four")
	require.NoError(t, <-sent, "the tx sent during the halt lands")
	require.Equal(t, int64(501), balance(t, ctx, n, n.Accounts[1]))
	t.Logf("resumed; the tx sent at %d landed", halted)
}

// A fifth node, not a validator, joins late by state sync from the
// validators' snapshots, then follows new blocks with the validators'
// app hashes.
func TestLateJoinerStateSyncs(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const interval = 10
	n := setup(t, ctx, 4, interval)
	require.NoError(t, pay(ctx, n, 7))
	require.NoError(t, n.WaitForHeight(ctx, 2*interval+2), "two snapshots are taken")

	full, err := n.Join(ctx, "full0", true)
	require.NoError(t, err)
	require.False(t, full.Validator)
	h, err := n.Height(ctx)
	require.NoError(t, err)
	require.NoError(t, full.WaitForHeight(ctx, h+3), "the joiner follows new blocks")

	// A node restored from a snapshot at height s keeps blocks from s+1.
	status, err := full.Status(ctx)
	require.NoError(t, err)
	restored := status.SyncInfo.EarliestBlockHeight - 1
	require.Greater(t, restored, int64(1), "the joiner restored a snapshot instead of replaying from block 1")
	require.Zero(t, restored%interval, "the joiner restored at a snapshot height, got %d", restored)
	t.Logf("%s restored the snapshot at %d and follows the chain at %d", full.Name, restored, h+3)
	requireSameAppHashes(t, ctx, n.Nodes, restored, h+2)
}

// A network closed and started again on the same Home is the same
// network: same chain, keys and ports, the node that joined (here by
// block sync, replaying from genesis) included, and its height goes on.
func TestStartResumesTheNetworkInHome(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	home := t.TempDir()
	cfg := localnet.Config{
		Home: home, Binary: binary, Validators: 1, BlockTime: blockTime,
		Accounts: []node.Account{{Name: "alice", Coins: coins(1_000)}},
		Progress: t.Logf,
	}
	n, err := localnet.Start(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { n.Close(context.Background()) })
	full, err := n.Join(ctx, "full0", false)
	require.NoError(t, err)
	status, err := full.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(1), status.SyncInfo.EarliestBlockHeight, "block sync replays from the first block")
	before, err := n.Height(ctx)
	require.NoError(t, err)
	require.NoError(t, full.WaitForHeight(ctx, before))
	require.NoError(t, n.Close(ctx))

	cfg.Accounts = nil // the network in Home has its own
	again, err := localnet.Start(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { again.Close(context.Background()) })
	require.Equal(t, n.ChainID, again.ChainID)
	require.Len(t, again.Nodes, 2)
	for i, nd := range again.Nodes {
		was := n.Nodes[i]
		require.Equal(t, []string{was.Name, was.NodeID, was.RPCAddress, was.GRPCAddress, was.APIAddress, was.P2PAddress},
			[]string{nd.Name, nd.NodeID, nd.RPCAddress, nd.GRPCAddress, nd.APIAddress, nd.P2PAddress})
	}
	require.Equal(t, n.Nodes[0].Operator.Address, again.Nodes[0].Operator.Address)
	require.Equal(t, n.Accounts[0].Key.Key, again.Accounts[0].Key.Key)
	require.Equal(t, int64(1_000), balance(t, ctx, again, again.Accounts[0]))
	after, err := again.Height(ctx)
	require.NoError(t, err)
	require.Greater(t, after, before, "the chain goes on from where it stopped")
	requireSameAppHashes(t, ctx, again.Nodes, 1, after)
}
