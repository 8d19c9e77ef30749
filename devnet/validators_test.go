package devnet

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	rpchttp "github.com/cometbft/cometbft/rpc/client/http"
	"github.com/stretchr/testify/require"

	sdkmath "cosmossdk.io/math"
	"github.com/cosmos/cosmos-sdk/codec"
	sdk "github.com/cosmos/cosmos-sdk/types"
	authtypes "github.com/cosmos/cosmos-sdk/x/auth/types"
	govtypes "github.com/cosmos/cosmos-sdk/x/gov/types"
	govv1 "github.com/cosmos/cosmos-sdk/x/gov/types/v1"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/chain/localnet"
	"github.com/devshard/devshard/chaincfg"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// votingPeriod is gov's voting period on the multi-validator devnet.
const votingPeriod = 4 * time.Second

// TestValidators runs the devnet on a chain of 4 validator processes:
// an epoch cycle that every validator agrees on block by block, a
// validator killed under load, two killed (the chain halts and resumes),
// and a node that joins late by state sync and serves a host.
func TestValidators(t *testing.T) {
	e := startNetwork(t, 25*time.Minute, func(c *Config) {
		c.Validators = 4
		c.ThinkTime = 2 * time.Millisecond
		// An escrow nobody settles is refunded after 3 epochs (30 s).
		c.Params.ExpiryEpochs = 3
		c.Genesis = func(cdc codec.JSONCodec, state chain.GenesisState) error {
			var gov govv1.GenesisState
			if err := cdc.UnmarshalJSON(state[govtypes.ModuleName], &gov); err != nil {
				return err
			}
			voting := votingPeriod
			gov.Params.VotingPeriod = &voting
			state[govtypes.ModuleName] = cdc.MustMarshalJSON(&gov)
			return nil
		}
	})
	ln := e.nw.Chain.Network()
	require.NotNil(t, ln, "4 validators run as processes")
	require.Len(t, ln.Validators(), 4)
	require.Len(t, e.nw.Info.Nodes, 4, "devnet.json names every node")

	t.Run("an epoch cycle every validator agrees on", func(t *testing.T) {
		e.t = t
		before := e.balances()
		q := devshardtypes.NewQueryClient(e.nw.Chain.Conn())
		params, err := q.Params(e.ctx, &devshardtypes.QueryParamsRequest{})
		require.NoError(t, err)

		// A parameter change by governance: proposed, and voted yes by
		// every validator's operator, each through another node.
		next := params.Params
		next.ValidationRateBps = params.Params.ValidationRateBps + 500
		authority := authtypes.NewModuleAddress(govtypes.ModuleName).String()
		proposer := ln.Nodes[0].Operator
		prop, err := govv1.NewMsgSubmitProposal([]sdk.Msg{&devshardtypes.MsgUpdateParams{Authority: authority, Params: next}},
			sdk.NewCoins(sdk.NewCoin(chaincfg.Denom, sdkmath.NewInt(10_000_000))), proposer.Address.String(), "", "validation rate", "sample more", false)
		require.NoError(t, err)
		_, err = e.nw.Chain.TxClient().Send(e.ctx, proposer.Key, prop)
		require.NoError(t, err)
		for _, v := range ln.Validators() {
			_, err := e.nw.Chain.TxClient().Send(e.ctx, v.Operator.Key, govv1.NewMsgVote(v.Operator.Address, 1, govv1.OptionYes, ""))
			require.NoError(t, err, "%s votes", v.Name)
		}

		// An escrow that nobody uses or settles expires and is refunded.
		funder := ln.Nodes[1].Operator
		_, err = e.nw.Chain.TxClient().Send(e.ctx, funder.Key, &devshardtypes.MsgCreateEscrow{Creator: funder.Address.String(), Amount: 2_000_000})
		require.NoError(t, err)
		expiring := lastEscrow(t, e)

		charged := e.send(40, 4, "validators")
		ss := e.settleAll(0) // settled and claimed
		require.Eventually(t, func() bool {
			res, err := q.Escrow(e.ctx, &devshardtypes.QueryEscrowRequest{Id: expiring})
			return err == nil && res.Escrow.Status == devshardtypes.EscrowExpired
		}, 2*time.Minute, time.Second, "the unused escrow %d expires", expiring)
		changed, err := q.Params(e.ctx, &devshardtypes.QueryParamsRequest{})
		require.NoError(t, err)
		require.Equal(t, next.ValidationRateBps, changed.Params.ValidationRateBps, "the proposal passed and took effect")
		e.checkBooks(before, charged, ss)

		proposers := agree(t, e.ctx, ln.Validators(), 1)
		require.GreaterOrEqual(t, proposers, 3, "the blocks with txs came from several proposers")
	})

	t.Run("a validator killed under load", func(t *testing.T) {
		e.t = t
		before := e.balances()
		skip, err := e.nw.Gateway.Gateway.SettledCount(e.ctx)
		require.NoError(t, err)
		victim := ln.Nodes[0] // host0's first node, and the test's own
		load := e.startLoad(4, "validator-kill")
		time.Sleep(3 * time.Second)
		victim.Kill()
		from, err := ln.Height(e.ctx)
		require.NoError(t, err)
		require.NoError(t, ln.WaitForHeight(e.ctx, from+8), "3 validators of 4 keep making blocks")
		require.NoError(t, victim.Start())
		top, err := ln.Height(e.ctx)
		require.NoError(t, err)
		require.NoError(t, victim.WaitForHeight(e.ctx, top), "the killed validator catches up")
		recs := load.stop()
		rep := tallyOf(recs, func(loadRecord) bool { return true })
		t.Logf("requests while a validator was down: %s", rep)
		logFailures(t, recs)
		require.Equal(t, rep.total, rep.ok, "no request failed")
		var charged uint64
		for _, r := range recs {
			charged += r.charged
		}
		e.checkBooks(before, charged, e.settleAll(skip))
		agree(t, e.ctx, ln.Validators(), 1)
	})

	t.Run("two validators killed: the chain halts and resumes", func(t *testing.T) {
		e.t = t
		before := e.balances()
		skip, err := e.nw.Gateway.Gateway.SettledCount(e.ctx)
		require.NoError(t, err)
		e.waitEpochStart()
		charged := e.send(5, 1, "before-halt")
		a, b := ln.Nodes[2], ln.Nodes[3]
		a.Kill()
		b.Kill()
		halted, err := ln.Height(e.ctx)
		require.NoError(t, err)
		time.Sleep(8 * e.nw.cfg.BlockTime)
		still, err := ln.Height(e.ctx)
		require.NoError(t, err)
		require.LessOrEqual(t, still, halted+1, "2 validators of 4 make no block")

		// The gateway says so, and so do the hosts, once the last block is
		// older than the devnet's stall bound.
		var why string
		require.Eventually(t, func() bool {
			status, body := getJSON(t, e.nw.Info.Gateway.URL+"/readyz")
			why = body["status"]
			return status == http.StatusServiceUnavailable && strings.Contains(why, "the chain has made no block for")
		}, 30*time.Second, 500*time.Millisecond, "the gateway's readiness fails for the halt (last: %s)", why)
		t.Logf("gateway /readyz during the halt: %s", why)
		require.Contains(t, why, "its validators may have lost their quorum")
		require.Eventually(t, func() bool {
			status, body := getJSON(t, e.nw.Hosts[0].URL+"/readyz")
			why = body["status"]
			return status == http.StatusOK && strings.HasPrefix(why, "degraded: the chain has made no block for")
		}, 30*time.Second, 500*time.Millisecond, "a host says it is degraded (last: %s)", why)
		charged += e.send(5, 1, "during-halt") // the books are off-chain: an open escrow serves on

		require.NoError(t, a.Start())
		require.NoError(t, ln.WaitForHeight(e.ctx, still+3), "3 validators of 4 make blocks again")
		require.NoError(t, b.Start())
		e.checkBooks(before, charged, e.settleAll(skip))
		agree(t, e.ctx, ln.Validators(), 1)
	})

	t.Run("a node joins by state sync and a host follows it", func(t *testing.T) {
		e.t = t
		before := e.balances()
		skip, err := e.nw.Gateway.Gateway.SettledCount(e.ctx)
		require.NoError(t, err)
		joiner, err := ln.Join(e.ctx, "follower", true)
		require.NoError(t, err)
		top, err := ln.Height(e.ctx)
		require.NoError(t, err)
		require.NoError(t, joiner.WaitForHeight(e.ctx, top+3), "the joiner follows new blocks")
		st, err := joiner.Status(e.ctx)
		require.NoError(t, err)
		require.Greater(t, st.SyncInfo.EarliestBlockHeight, int64(1), "it restored a snapshot instead of replaying from genesis")

		h := e.nw.Hosts[0]
		h.UseChain(joiner.GRPCAddress, "http://"+trimScheme(joiner.RPCAddress))
		h.Stop()
		require.NoError(t, h.Start())
		require.NoError(t, h.WaitReady(e.ctx, 60*time.Second))
		e.waitEpochStart()
		charged := e.send(12, 3, "after-join")
		e.checkBooks(before, charged, e.settleAll(skip))
		agree(t, e.ctx, append(ln.Validators(), joiner), st.SyncInfo.EarliestBlockHeight)
	})
}

// getJSON GETs url and decodes its JSON object of strings.
func getJSON(t *testing.T, url string) (int, map[string]string) {
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body := map[string]string{}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

// lastEscrow is the id of the newest escrow on chain.
func lastEscrow(t *testing.T, e *e2e) uint64 {
	q := devshardtypes.NewQueryClient(e.nw.Chain.Conn())
	var id uint64
	for ; ; id++ {
		if _, err := q.Escrow(e.ctx, &devshardtypes.QueryEscrowRequest{Id: id + 1}); err != nil {
			break
		}
	}
	require.Positive(t, id)
	return id
}

// agree checks that nodes hold the same app hash after every block from
// from to the lowest height they all have, and returns how many
// validators proposed the blocks that carried txs.
func agree(t *testing.T, ctx context.Context, nodes []*localnet.Node, from int64) int {
	t.Helper()
	top := int64(-1)
	for _, nd := range nodes {
		h, err := nd.Height(ctx)
		require.NoError(t, err)
		if top < 0 || h < top {
			top = h
		}
	}
	rpc, err := rpchttp.New(nodes[0].RPCAddress, "/websocket")
	require.NoError(t, err)
	proposers := map[string]bool{}
	for h := from; h < top; h++ {
		want, err := nodes[0].AppHash(ctx, h)
		require.NoError(t, err)
		for _, nd := range nodes[1:] {
			got, err := nd.AppHash(ctx, h)
			require.NoError(t, err)
			require.True(t, bytes.Equal(want, got), "%s and %s differ after block %d: %X against %X", nodes[0].Name, nd.Name, h, want, got)
		}
		blk, err := rpc.Block(ctx, &h)
		require.NoError(t, err)
		if len(blk.Block.Txs) > 0 {
			proposers[blk.Block.ProposerAddress.String()] = true
		}
	}
	t.Logf("%d nodes agree on the app hash after every block from %d to %d; blocks with txs came from %d proposers", len(nodes), from, top-1, len(proposers))
	return len(proposers)
}
