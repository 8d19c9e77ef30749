package chain_test

import (
	"maps"
	"slices"
	"testing"

	dbm "github.com/cosmos/cosmos-db"
	"github.com/stretchr/testify/require"

	"cosmossdk.io/log"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/chain"
)

type noOptions struct{}

func (noOptions) Get(string) any { return nil }

func TestAppWiring(t *testing.T) {
	t.Parallel()
	app := chain.New(log.NewNopLogger(), dbm.NewMemDB(), nil, false, noOptions{})

	// Clients encode with Basics(); it must know every module the app runs.
	require.Equal(t,
		slices.Sorted(maps.Keys(app.ModuleManager.Modules)),
		slices.Sorted(maps.Keys(chain.Basics())))

	// Every message of every module has a signer and a route.
	for _, url := range app.InterfaceRegistry().ListImplementations(sdk.MsgInterfaceProtoName) {
		require.NotNil(t, app.MsgServiceRouter().HandlerByTypeURL(url), url)
	}

	require.Equal(t, "devshard", sdk.GetConfig().GetBech32AccountAddrPrefix())
	genesis := app.DefaultGenesis()
	for _, module := range []string{"staking", "gov", "devshard"} {
		require.Contains(t, string(genesis[module]), `"ushard"`, module)
	}
	var names []string
	for _, tt := range app.SchedulerKeeper.TaskTypes() {
		names = append(names, tt.Name)
	}
	require.Equal(t, []string{
		"devshard/epoch-settle", "devshard/epoch-account", "devshard/epoch-begin",
		"devshard/epoch-claimable", "devshard/epoch-close",
	}, names, "the order same-block epoch transitions run in")
}
