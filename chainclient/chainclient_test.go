package chainclient

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	sdkmath "cosmossdk.io/math"
	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/cosmos/cosmos-sdk/x/authz"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/chain/node"
	"github.com/devshard/devshard/session"
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
	funds := sdk.NewCoins(sdk.NewCoin(chain.Denom, sdkmath.NewInt(100_000_000)))
	n, err := node.Start(ctx, node.Config{BlockTime: 200 * time.Millisecond, Params: &params,
		Accounts: []node.Account{{Name: "cold", Coins: funds}, {Name: "warm", Coins: funds}}})
	require.NoError(t, err)
	defer func() { require.NoError(t, n.Close()) }()

	c, err := Dial(Config{GRPC: n.GRPCAddress, RPC: n.RPCAddress, GrantTTL: 200 * time.Millisecond})
	require.NoError(t, err)
	defer c.Close()

	first, err := c.CurrentEpoch(ctx)
	require.NoError(t, err)
	require.GreaterOrEqual(t, first, uint64(1))
	c.epochQueries.Store(0)

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
	require.LessOrEqual(t, c.epochQueries.Load(), int64(len(seen)+2), "about one query per epoch, not one per block")
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

// The cache asks once per TTL and never caches a failed lookup.
func TestGrantCache(t *testing.T) {
	t.Parallel()
	now := time.Unix(100, 0)
	calls := 0
	fail := false
	g := &grantCache{ttl: time.Minute, entries: map[grantKey]grantEntry{}, now: func() time.Time { return now },
		lookup: func(context.Context, signing.Address, signing.Address, session.Kind) (bool, error) {
			calls++
			if fail {
				return false, errors.New("node down")
			}
			return true, nil
		}}
	var h, s signing.Address
	s[0] = 1
	require.True(t, g.MayActFor(h, s, session.KindState))
	require.True(t, g.MayActFor(h, s, session.KindState))
	require.Equal(t, 1, calls)
	now = now.Add(2 * time.Minute)
	fail = true
	require.False(t, g.MayActFor(h, s, session.KindState), "an unanswered question is a no")
	require.False(t, g.MayActFor(h, s, session.KindState))
	require.Equal(t, 3, calls, "failures are not cached")
}
