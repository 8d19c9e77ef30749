package chainclient_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	sdkmath "cosmossdk.io/math"
	"github.com/cosmos/cosmos-sdk/codec"
	sdk "github.com/cosmos/cosmos-sdk/types"
	authtypes "github.com/cosmos/cosmos-sdk/x/auth/types"
	govtypes "github.com/cosmos/cosmos-sdk/x/gov/types"
	govv1 "github.com/cosmos/cosmos-sdk/x/gov/types/v1"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/chain/node"
	"github.com/devshard/devshard/chaincfg"
	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/versiond"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// Against a real node: versiond's chain source delivers the genesis list,
// and a governance change of approved_versions within a few blocks of its
// passing, learned from new blocks (the poll is a minute). The same list
// read at every block in between is not delivered again.
func TestApprovedVersionsFollowTheChain(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sha := "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	v1 := devshardtypes.ApprovedVersion{Name: "v1", Url: "https://dl.example/v1", Sha256: sha}
	v2 := devshardtypes.ApprovedVersion{Name: "v2", Url: "https://dl.example/v2", Sha256: sha}
	params := devshardtypes.DefaultParams()
	params.ApprovedVersions = []devshardtypes.ApprovedVersion{v1}
	voting := time.Second
	n, err := node.Start(ctx, node.Config{BlockTime: 200 * time.Millisecond, Params: &params,
		Genesis: func(cdc codec.JSONCodec, state chain.GenesisState) error {
			var gov govv1.GenesisState
			cdc.MustUnmarshalJSON(state[govtypes.ModuleName], &gov)
			gov.Params.VotingPeriod = &voting
			state[govtypes.ModuleName] = cdc.MustMarshalJSON(&gov)
			return nil
		}})
	require.NoError(t, err)
	defer func() { require.NoError(t, n.Close()) }()

	c, err := chainclient.Dial(chainclient.Config{GRPC: n.GRPCAddress, RPC: n.RPCAddress})
	require.NoError(t, err)
	defer c.Close()
	catching, err := c.CatchingUp(ctx)
	require.NoError(t, err)
	require.False(t, catching, "a single validator making blocks is in sync")

	got := make(chan []versiond.Version, 16)
	src := versiond.ChainSource{Chain: c, Poll: time.Minute, StallAfter: 30 * time.Second, Logger: slog.New(slog.DiscardHandler)}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = src.Watch(wctx, func(l []versiond.Version) { got <- l }) }()
	want := func(vs ...devshardtypes.ApprovedVersion) []versiond.Version {
		var out []versiond.Version
		for _, v := range vs {
			out = append(out, versiond.Version{Name: v.Name, URL: v.Url, SHA256: v.Sha256})
		}
		return out
	}
	select {
	case l := <-got:
		require.Equal(t, want(v1), l, "the genesis list")
	case <-ctx.Done():
		t.Fatal("the genesis list was never delivered")
	}

	next := params
	next.ApprovedVersions = []devshardtypes.ApprovedVersion{v1, v2}
	authority := authtypes.NewModuleAddress(govtypes.ModuleName).String()
	val := n.Validator
	prop, err := govv1.NewMsgSubmitProposal([]sdk.Msg{&devshardtypes.MsgUpdateParams{Authority: authority, Params: next}},
		sdk.NewCoins(sdk.NewCoin(chaincfg.Denom, sdkmath.NewInt(10_000_000))), val.Address.String(), "", "approve v2", "a new runtime version", false)
	require.NoError(t, err)
	_, err = n.TxClient().Send(ctx, val.Key, prop)
	require.NoError(t, err)
	_, err = n.TxClient().Send(ctx, val.Key, govv1.NewMsgVote(val.Address, 1, govv1.OptionYes, ""))
	require.NoError(t, err)

	q := devshardtypes.NewQueryClient(n.Conn())
	var passed int64
	require.Eventually(t, func() bool {
		res, err := q.Params(ctx, &devshardtypes.QueryParamsRequest{})
		passed = n.Height()
		return err == nil && len(res.Params.ApprovedVersions) == 2
	}, 20*time.Second, 50*time.Millisecond, "the proposal passes")
	select {
	case l := <-got:
		require.Equal(t, want(v1, v2), l, "the next delivery is the change; the unchanged list was not delivered again")
		require.LessOrEqual(t, n.Height()-passed, int64(5), "delivered within a few blocks of the change (the poll is a minute: it came from a block)")
	case <-time.After(10 * time.Second):
		t.Fatal("the change was not delivered within 10s (50 blocks)")
	}
}
