package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	sdkmath "cosmossdk.io/math"

	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/cosmos/cosmos-sdk/x/authz"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/chain/node"
	"github.com/devshard/devshard/session"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
	schedulertypes "github.com/devshard/devshard/x/scheduler/types"
)

// A real single-validator chain: three participants register with signed
// txs during epoch 1, become effective in epoch 2, and the epochs keep
// moving through their states on their own.
func TestChainRunsEpochsAndParticipants(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	const epochLength = 10 // blocks; epoch N starts at 1 + (N-1)*10
	params := devshardtypes.DefaultParams()
	params.EpochLength = epochLength
	params.MinCollateral = sdk.NewCoin(chain.Denom, sdkmath.NewInt(1_000_000))
	funds := sdk.NewCoins(sdk.NewCoin(chain.Denom, sdkmath.NewInt(100_000_000)))
	cfg := node.Config{BlockTime: 250 * time.Millisecond, Params: &params}
	for i := range 4 {
		cfg.Accounts = append(cfg.Accounts, node.Account{Name: fmt.Sprintf("acct%d", i), Coins: funds})
	}
	n, err := node.Start(ctx, cfg)
	require.NoError(t, err)
	defer func() { require.NoError(t, n.Close()) }()
	hosts, warm := n.Accounts[:3], n.Accounts[3]
	q := devshardtypes.NewQueryClient(n.Conn())

	// Epoch 1 had nobody to activate: it is cancelled, and 2 is planned.
	cur, err := q.CurrentEpoch(ctx, &devshardtypes.QueryCurrentEpochRequest{})
	require.NoError(t, err)
	require.Equal(t, uint64(1), cur.Epoch.Id)
	require.Equal(t, devshardtypes.EpochCancelled, cur.Epoch.State)
	e2, err := q.Epoch(ctx, &devshardtypes.QueryEpochRequest{Id: 2})
	require.NoError(t, err)
	require.Equal(t, devshardtypes.EpochPlanned, e2.Epoch.State)
	require.Equal(t, int64(1+epochLength), e2.Epoch.StartHeight)

	// Three hosts register at once, each with its own client, during epoch 1.
	var wg sync.WaitGroup
	heights := make([]int64, len(hosts))
	errs := make([]error, len(hosts))
	for i, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := n.TxClient().Send(ctx, h.Key, &devshardtypes.MsgRegisterParticipant{
				Participant: h.Address.String(),
				Url:         fmt.Sprintf("https://host%d.example:8080", i),
				Collateral:  sdk.NewCoin(chain.Denom, sdkmath.NewInt(int64(i+1)*1_000_000)),
			})
			errs[i] = err
			if err == nil {
				heights[i] = res.Height
			}
		}()
	}
	wg.Wait()
	for i := range hosts {
		require.NoError(t, errs[i], "host %d", i)
		require.Less(t, heights[i], e2.Epoch.StartHeight, "host %d must register during epoch 1", i)
		p, err := q.Participant(ctx, &devshardtypes.QueryParticipantRequest{Address: hosts[i].Address.String()})
		require.NoError(t, err)
		require.Equal(t, uint64(2), p.Participant.UpcomingEpoch)
	}

	// A rejected registration comes back as an error a person can act on.
	_, err = n.TxClient().Send(ctx, warm.Key, &devshardtypes.MsgRegisterParticipant{
		Participant: warm.Address.String(), Url: "https://warm.example", Collateral: sdk.NewCoin(chain.Denom, sdkmath.NewInt(5)),
	})
	require.ErrorContains(t, err, "collateral 5ushard is below the minimum 1000000ushard")

	// Epoch 2 activates with all three, weighted by collateral.
	require.NoError(t, n.WaitForHeight(ctx, e2.Epoch.StartHeight))
	require.Equal(t, []uint64{2}, epochsIn(ctx, t, q, devshardtypes.EpochActive))
	members, err := q.EpochMembers(ctx, &devshardtypes.QueryEpochMembersRequest{EpochId: 2})
	require.NoError(t, err)
	require.Len(t, members.Members, 3)
	total := sdkmath.ZeroInt()
	for _, m := range members.Members {
		total = total.Add(m.Weight)
	}
	require.Equal(t, sdkmath.NewInt(6_000_000), total)

	// Host 0's cold account lets a warm key sign session messages for it.
	grant, err := authz.NewGrant(time.Now(), authz.NewGenericAuthorization(sdk.MsgTypeURL(&devshardtypes.MsgSignSession{})), nil)
	require.NoError(t, err)
	_, err = n.TxClient().Send(ctx, hosts[0].Key, &authz.MsgGrant{
		Granter: hosts[0].Address.String(), Grantee: warm.Address.String(), Grant: grant,
	})
	require.NoError(t, err)
	may, err := q.MayActFor(ctx, &devshardtypes.QueryMayActForRequest{
		Holder: hosts[0].Address.String(), Signer: warm.Address.String(), Kind: string(session.KindFinish),
	})
	require.NoError(t, err)
	require.True(t, may.Allowed)

	// Host 2 leaves during epoch 2: bonded until epoch 2 closes.
	_, err = n.TxClient().Send(ctx, hosts[2].Key, &devshardtypes.MsgUnregisterParticipant{Participant: hosts[2].Address.String()})
	require.NoError(t, err)
	bank := banktypes.NewQueryClient(n.Conn())
	balance := func() sdkmath.Int {
		res, err := bank.Balance(ctx, &banktypes.QueryBalanceRequest{Address: hosts[2].Address.String(), Denom: chain.Denom})
		require.NoError(t, err)
		return res.Balance.Amount
	}
	bonded := balance()

	// Epoch 2 settles while 3 is active.
	e2, err = q.Epoch(ctx, &devshardtypes.QueryEpochRequest{Id: 2})
	require.NoError(t, err)
	require.NoError(t, n.WaitForHeight(ctx, e2.Epoch.EndHeight))
	require.Equal(t, []uint64{2}, epochsIn(ctx, t, q, devshardtypes.EpochSettling))
	require.Equal(t, []uint64{3}, epochsIn(ctx, t, q, devshardtypes.EpochActive))
	members, err = q.EpochMembers(ctx, &devshardtypes.QueryEpochMembersRequest{EpochId: 3})
	require.NoError(t, err)
	require.Len(t, members.Members, 2, "the host that left is not effective in epoch 3")

	require.NoError(t, n.WaitForHeight(ctx, e2.Epoch.AccountingHeight))
	require.Equal(t, []uint64{2}, epochsIn(ctx, t, q, devshardtypes.EpochAccounting))
	require.NoError(t, n.WaitForHeight(ctx, e2.Epoch.ClaimableHeight))
	require.Equal(t, []uint64{2}, epochsIn(ctx, t, q, devshardtypes.EpochClaimable))
	require.Equal(t, bonded, balance(), "collateral stays bonded until the epochs served in close")
	require.NoError(t, n.WaitForHeight(ctx, e2.Epoch.CloseHeight))
	require.Equal(t, []uint64{2}, epochsIn(ctx, t, q, devshardtypes.EpochClosed))
	require.Equal(t, []uint64{1}, epochsIn(ctx, t, q, devshardtypes.EpochCancelled))
	require.Equal(t, bonded.Add(sdkmath.NewInt(3_000_000)), balance(), "collateral returned when epoch 2 closed")

	e2, err = q.Epoch(ctx, &devshardtypes.QueryEpochRequest{Id: 2})
	require.NoError(t, err)
	var path []string
	for _, h := range e2.Epoch.History {
		path = append(path, h.State.Short())
	}
	require.Equal(t, []string{"PLANNED", "ACTIVE", "SETTLING", "ACCOUNTING", "CLAIMABLE", "CLOSED"}, path)

	// No transition failed along the way.
	failed, err := schedulertypes.NewQueryClient(n.Conn()).FailedTasks(ctx, &schedulertypes.QueryFailedTasksRequest{})
	require.NoError(t, err)
	require.Empty(t, failed.Tasks)

	// The same query over REST, as an operator would run it.
	res, err := http.Get(n.APIAddress + "/devshard/devshard/v1/epochs/by_state/EPOCH_STATE_CLOSED")
	require.NoError(t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, res.StatusCode, string(body))
	var rest struct {
		Epochs []struct {
			ID    string `json:"id"`
			State string `json:"state"`
		} `json:"epochs"`
	}
	require.NoError(t, json.Unmarshal(body, &rest))
	require.Len(t, rest.Epochs, 1)
	require.Equal(t, "2", rest.Epochs[0].ID)
	require.Equal(t, "EPOCH_STATE_CLOSED", rest.Epochs[0].State)
}

func epochsIn(ctx context.Context, t *testing.T, q devshardtypes.QueryClient, s devshardtypes.EpochState) []uint64 {
	t.Helper()
	res, err := q.EpochsByState(ctx, &devshardtypes.QueryEpochsByStateRequest{State: s})
	require.NoError(t, err)
	ids := []uint64{}
	for _, e := range res.Epochs {
		ids = append(ids, e.Id)
	}
	return ids
}

// A chain resumed from its home answers queries at the latest height as soon
// as Start returns: Start waits for a block of its own, not for the height
// the home already had. The first run is a child process, as devnet's
// restarts are (CometBFT leaves its tx index open until its process ends).
func TestResumedChainAnswersAtOnce(t *testing.T) {
	cfg := node.Config{BlockTime: 250 * time.Millisecond, Resume: true}
	if home := os.Getenv("DEVSHARD_TEST_NODE_HOME"); home != "" {
		cfg.Home = home
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		n, err := node.Start(ctx, cfg)
		require.NoError(t, err)
		require.NoError(t, n.WaitForHeight(ctx, 3))
		require.NoError(t, n.Close())
		return
	}
	t.Parallel()
	cfg.Home = t.TempDir()
	first := exec.Command(os.Args[0], "-test.run=^TestResumedChainAnswersAtOnce$", "-test.count=1")
	first.Env = append(os.Environ(), "DEVSHARD_TEST_NODE_HOME="+cfg.Home)
	out, err := first.CombinedOutput()
	require.NoError(t, err, "the first run: %s", out)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n, err := node.Start(ctx, cfg)
	require.NoError(t, err)
	defer func() { require.NoError(t, n.Close()) }()
	_, err = devshardtypes.NewQueryClient(n.Conn()).CurrentEpoch(ctx, &devshardtypes.QueryCurrentEpochRequest{})
	require.NoError(t, err, "the first query after a resume")
	require.GreaterOrEqual(t, n.Height(), int64(4), "the resumed chain went on from where it was")
}
