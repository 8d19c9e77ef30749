package chain_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	abci "github.com/cometbft/cometbft/abci/types"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	cmttypes "github.com/cometbft/cometbft/types"
	dbm "github.com/cosmos/cosmos-db"
	"github.com/stretchr/testify/require"

	"cosmossdk.io/collections"
	"cosmossdk.io/core/header"
	"cosmossdk.io/log"
	sdkmath "cosmossdk.io/math"

	"github.com/cosmos/cosmos-sdk/baseapp"
	"github.com/cosmos/cosmos-sdk/crypto/keys/ed25519"
	"github.com/cosmos/cosmos-sdk/crypto/keys/secp256k1"
	sdk "github.com/cosmos/cosmos-sdk/types"
	authtypes "github.com/cosmos/cosmos-sdk/x/auth/types"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"
	govtypes "github.com/cosmos/cosmos-sdk/x/gov/types"
	govv1 "github.com/cosmos/cosmos-sdk/x/gov/types/v1"
	stakingtypes "github.com/cosmos/cosmos-sdk/x/staking/types"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
	schedulertypes "github.com/devshard/devshard/x/scheduler/types"
)

// replayEnv names the file of a recorded run that a child process of
// TestDeterministicReplay replays; it writes its results beside it.
const replayEnv = "DEVSHARD_REPLAY"

// recording is a chain's genesis and every block it was driven through.
type recording struct {
	Genesis []byte
	Start   time.Time
	Blocks  []recordedBlock
}

type recordedBlock struct {
	Height int64
	Time   time.Time
	Hash   []byte
	Txs    [][]byte
}

// outcome is what a replica computed: the app hash after InitChain and,
// per block, its app hash and a digest of the whole FinalizeBlock response
// (tx codes, gas, logs, events, validator updates).
type outcome struct {
	InitHash []byte
	AppHash  [][]byte
	Response [][]byte
}

// replica is a fresh app fed the blocks of a recording through ABCI, as
// CometBFT feeds a validator.
type replica struct {
	app *chain.App
	out outcome
}

func newReplica(t *testing.T, genesis []byte, start time.Time) *replica {
	t.Helper()
	app := chain.New(log.NewNopLogger(), dbm.NewMemDB(), nil, true, appOptions{}, baseapp.SetChainID(testChainID))
	params := cmttypes.DefaultConsensusParams().ToProto()
	res, err := app.InitChain(&abci.RequestInitChain{
		ChainId: testChainID, Time: start, InitialHeight: 1, ConsensusParams: &params, AppStateBytes: genesis,
	})
	require.NoError(t, err)
	return &replica{app: app, out: outcome{InitHash: res.AppHash}}
}

func (r *replica) apply(t *testing.T, b recordedBlock, proposer []byte) *abci.ResponseFinalizeBlock {
	t.Helper()
	res, err := r.app.FinalizeBlock(&abci.RequestFinalizeBlock{
		Height: b.Height, Time: b.Time, Hash: b.Hash, Txs: b.Txs, ProposerAddress: proposer,
	})
	require.NoError(t, err)
	_, err = r.app.Commit()
	require.NoError(t, err)
	bz, err := res.Marshal()
	require.NoError(t, err)
	digest := sha256.Sum256(bz)
	r.out.AppHash = append(r.out.AppHash, res.AppHash)
	r.out.Response = append(r.out.Response, digest[:])
	return res
}

// mempool runs CheckTx on txs, as a node does when they reach it before
// their block, and returns how many it accepted. It fills the node's
// memories of verified signatures (the tx signature cache and the
// settlement memo); the block's outcome must not depend on them.
func (r *replica) mempool(t *testing.T, txs [][]byte) int {
	t.Helper()
	accepted := 0
	for _, tx := range txs {
		res, err := r.app.CheckTx(&abci.RequestCheckTx{Tx: tx, Type: abci.CheckTxType_New})
		require.NoError(t, err)
		if res.Code == 0 {
			accepted++
		}
	}
	return accepted
}

func (r *replica) ctx(b recordedBlock) sdk.Context {
	return r.app.NewUncachedContext(false, cmtproto.Header{ChainID: testChainID, Height: b.Height, Time: b.Time}).
		WithHeaderInfo(header.Info{ChainID: testChainID, Height: b.Height, Time: b.Time})
}

// TestDeterministicReplay drives a chain through the keepers' real paths
// (registration with collateral, epochs through every state, escrows
// created, settled at once and through a challenge window, expired and
// refunded, accounting, claims, a participant leaving, and a params change
// passed by governance) and checks that two more fresh apps fed the same
// blocks compute the same app hash and the same FinalizeBlock response at
// every height: one in this process, from a genesis encoded differently,
// and one in a child process, whose map seeds and allocation differ.
func TestDeterministicReplay(t *testing.T) {
	if path := os.Getenv(replayEnv); path != "" {
		replayChild(t, path)
		return
	}
	t.Parallel()
	_, proposer := validatorKey()
	rec := recording{Start: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := newScript(t)
	rec.Genesis = s.genesis

	a := newReplica(t, rec.Genesis, rec.Start)
	// b also sees every tx in its mempool before its block, as a validator
	// that received it does: its block skips the signatures it verified
	// there, with the same outcome.
	b := newReplica(t, reencode(t, rec.Genesis), rec.Start)
	require.Equal(t, a.out.InitHash, b.out.InitHash, "app hash after InitChain")
	sent, checked, settlements := 0, 0, 0

	seen := map[string]bool{} // event types of the recording run
	at := rec.Start
	for height := int64(1); height <= 34; height++ {
		at = at.Add(time.Second)
		hash := sha256.Sum256(binary.BigEndian.AppendUint64([]byte("block"), uint64(height)))
		blk := recordedBlock{Height: height, Time: at, Hash: hash[:]}
		blk.Txs = s.txs(t, a, blk)
		res := a.apply(t, blk, proposer)
		for i, tx := range res.TxResults {
			require.Zero(t, tx.Code, "block %d tx %d: %s", height, i, tx.Log)
			for _, ev := range tx.Events {
				seen[ev.Type] = true
			}
		}
		for _, ev := range res.Events {
			seen[ev.Type] = true
		}
		sent += len(blk.Txs)
		checked += b.mempool(t, blk.Txs)
		for _, tx := range blk.Txs {
			if bytes.Contains(tx, []byte("/devshard.devshard.v1.MsgSettleEscrow")) {
				settlements++
			}
		}
		b.apply(t, blk, proposer)
		require.Equal(t, a.out.AppHash[len(a.out.AppHash)-1], b.out.AppHash[len(b.out.AppHash)-1], "app hash at height %d", height)
		require.Equal(t, a.out.Response[len(a.out.Response)-1], b.out.Response[len(b.out.Response)-1], "FinalizeBlock response at height %d", height)
		rec.Blocks = append(rec.Blocks, blk)
	}
	s.requireCovered(t, a, rec.Blocks[len(rec.Blocks)-1])
	require.Equal(t, sent, checked, "b's mempool accepts every tx of the run")
	require.GreaterOrEqual(t, settlements, 2, "settlements went through b's mempool")
	for _, ev := range []string{
		"EventParticipantRegistered", "EventParticipantPromoted", "EventEpochTransition", "EventEscrowCreated",
		"EventEscrowPayout", "EventEscrowSettled", "EventSettlementPending", "EventEscrowExpired", "EventMemberAccounted",
		"EventRewardsClaimed", "EventCollateralReleased", "EventParticipantStatus",
	} {
		require.True(t, seen["devshard.devshard.v1."+ev], "no %s in the run", ev)
	}

	// The same blocks in another process.
	dir := t.TempDir()
	path := filepath.Join(dir, "recording.json")
	bz, err := json.Marshal(rec)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, bz, 0o600))
	cmd := exec.Command(os.Args[0], "-test.run=^TestDeterministicReplay$", "-test.count=1")
	cmd.Env = append(os.Environ(), replayEnv+"="+path)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "child replay: %s", out)
	bz, err = os.ReadFile(path + ".out")
	require.NoError(t, err, "child replay wrote no results: %s", out)
	var child outcome
	require.NoError(t, json.Unmarshal(bz, &child))
	require.Equal(t, a.out.InitHash, child.InitHash, "app hash after InitChain, child process")
	require.Len(t, child.AppHash, len(a.out.AppHash))
	for i := range a.out.AppHash {
		require.Equal(t, a.out.AppHash[i], child.AppHash[i], "app hash at height %d, child process", rec.Blocks[i].Height)
		require.Equal(t, a.out.Response[i], child.Response[i], "FinalizeBlock response at height %d, child process", rec.Blocks[i].Height)
	}
}

// replayChild is the child process's part: replay the recording at path
// into a fresh app and write the outcome to path.out.
func replayChild(t *testing.T, path string) {
	bz, err := os.ReadFile(path)
	require.NoError(t, err)
	var rec recording
	require.NoError(t, json.Unmarshal(bz, &rec))
	_, proposer := validatorKey()
	r := newReplica(t, rec.Genesis, rec.Start)
	for _, b := range rec.Blocks {
		r.apply(t, b, proposer)
	}
	bz, err = json.Marshal(r.out)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path+".out", bz, 0o600))
}

// reencode is genesis with the same content in other bytes: object keys
// sorted and indented, where the codec wrote them in field order.
func reencode(t *testing.T, genesis []byte) []byte {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(genesis))
	dec.UseNumber()
	var v any
	require.NoError(t, dec.Decode(&v))
	out, err := json.MarshalIndent(v, "", "\t")
	require.NoError(t, err)
	require.NotEqual(t, genesis, out)
	return out
}

func validatorKey() (ed25519.PrivKey, []byte) {
	key := ed25519.GenPrivKeyFromSecret([]byte("validator"))
	return *key, key.PubKey().Address()
}

// account is a genesis account that signs txs.
type account struct {
	key  *secp256k1.PrivKey
	addr sdk.AccAddress
	num  uint64
	seq  uint64
}

// script is the block sequence: which txs each height carries. It reads
// what it needs (escrow groups, drawn from the header hash) from the
// recording replica.
type script struct {
	genesis        []byte
	hosts          []*account
	gateway, voter *account
	params         devshardtypes.Params
}

const (
	replayEpochLength = 5
	replayFunds       = 1_000_000_000
)

func newScript(t *testing.T) *script {
	t.Helper()
	s := &script{}
	var all []*account
	for i, name := range []string{"host0", "host1", "host2", "gateway", "voter"} {
		k := secp256k1.GenPrivKeyFromSecret([]byte(name))
		all = append(all, &account{key: k, addr: sdk.AccAddress(k.PubKey().Address()), num: uint64(i)})
	}
	s.hosts, s.gateway, s.voter = all[:3], all[3], all[4]

	s.params = devshardtypes.DefaultParams()
	s.params.EpochLength = replayEpochLength
	s.params.SettlingEpochs = 1
	s.params.AccountingEpochs = 1
	s.params.ClaimableEpochs = 1
	s.params.MinCollateral = sdk.NewCoin(chain.Denom, sdkmath.NewInt(1_000_000))
	s.params.GroupSize = 4
	s.params.SettlementWindowEpochs = 1
	s.params.ExpiryEpochs = 2
	s.params.SettlementChallengeBlocks = 3
	require.NoError(t, s.params.Validate())

	app := chain.New(log.NewNopLogger(), dbm.NewMemDB(), nil, false, appOptions{})
	cdc := app.AppCodec()
	bz, _ := genesisWithValidator(t, app)
	var state chain.GenesisState
	require.NoError(t, json.Unmarshal(bz, &state))

	var auth authtypes.GenesisState
	cdc.MustUnmarshalJSON(state[authtypes.ModuleName], &auth)
	var accounts []authtypes.GenesisAccount
	var bank banktypes.GenesisState
	cdc.MustUnmarshalJSON(state[banktypes.ModuleName], &bank)
	for _, a := range all {
		accounts = append(accounts, authtypes.NewBaseAccount(a.addr, nil, a.num, 0))
		bank.Balances = append(bank.Balances, banktypes.Balance{
			Address: a.addr.String(), Coins: sdk.NewCoins(sdk.NewInt64Coin(chain.Denom, replayFunds)),
		})
	}
	packed, err := authtypes.PackAccounts(accounts)
	require.NoError(t, err)
	auth.Accounts = packed
	state[authtypes.ModuleName] = cdc.MustMarshalJSON(&auth)
	bank.Balances = banktypes.SanitizeGenesisBalances(bank.Balances)
	state[banktypes.ModuleName] = cdc.MustMarshalJSON(&bank)

	var ds devshardtypes.GenesisState
	cdc.MustUnmarshalJSON(state[devshardtypes.ModuleName], &ds)
	ds.Params = s.params
	state[devshardtypes.ModuleName] = cdc.MustMarshalJSON(&ds)

	var gov govv1.GenesisState
	cdc.MustUnmarshalJSON(state[govtypes.ModuleName], &gov)
	voting := 3 * time.Second
	gov.Params.VotingPeriod = &voting
	state[govtypes.ModuleName] = cdc.MustMarshalJSON(&gov)

	s.genesis, err = json.Marshal(state)
	require.NoError(t, err)
	return s
}

// sign makes a tx of msgs signed by a, with its next sequence.
func (s *script) sign(t *testing.T, app *chain.App, a *account, msgs ...sdk.Msg) []byte {
	t.Helper()
	tx, err := chainclient.SignOffline(app.TxConfig(), a.key, testChainID, a.num, a.seq, 5_000_000, msgs...)
	require.NoError(t, err)
	a.seq++
	return tx
}

// txs are the txs of block blk, built against r's committed state (the
// state blk starts from).
func (s *script) txs(t *testing.T, r *replica, blk recordedBlock) [][]byte {
	t.Helper()
	app := r.app
	gw := s.gateway.addr.String()
	var txs [][]byte
	switch blk.Height {
	case 2: // epoch 1 (cancelled: nobody registered); effective from epoch 2
		for i, h := range s.hosts {
			txs = append(txs, s.sign(t, app, h, &devshardtypes.MsgRegisterParticipant{
				Participant: h.addr.String(), Url: fmt.Sprintf("https://host%d.example", i),
				Collateral: sdk.NewInt64Coin(chain.Denom, int64(i+1)*1_000_000),
			}))
		}
		// The voter holds nearly all the stake, so its vote passes proposals.
		val, _ := validatorKey()
		txs = append(txs, s.sign(t, app, s.voter, stakingtypes.NewMsgDelegate(
			s.voter.addr.String(), sdk.ValAddress(val.PubKey().Address()).String(), sdk.NewInt64Coin(chain.Denom, 100_000_000))))
	case 7: // epoch 2 ACTIVE: escrows 1 (settled), 2 and 3 (left to expire)
		for _, amount := range []uint64{2_000_000, 3_000_000, 4_000_000} {
			txs = append(txs, s.sign(t, app, s.gateway, &devshardtypes.MsgCreateEscrow{Creator: gw, Amount: amount}))
		}
	case 8: // a finalized root: paid at once into the ledgers
		txs = append(txs, s.sign(t, app, s.gateway, &devshardtypes.MsgSettleEscrow{Sender: gw, Settlement: s.settlement(t, r, blk, 1, true)}))
	case 9: // host2 leaves; its collateral waits for epoch 2 to close
		txs = append(txs, s.sign(t, app, s.hosts[2], &devshardtypes.MsgUnregisterParticipant{Participant: s.hosts[2].addr.String()}))
	case 12: // epoch 3: escrow 4; a params change proposed
		txs = append(txs, s.sign(t, app, s.gateway, &devshardtypes.MsgCreateEscrow{Creator: gw, Amount: 2_500_000}))
		next := s.params
		next.EpochLength = 4
		next.GroupSize = 3
		authority := authtypes.NewModuleAddress(govtypes.ModuleName).String()
		prop, err := govv1.NewMsgSubmitProposal([]sdk.Msg{
			&devshardtypes.MsgUpdateParams{Authority: authority, Params: next},
			&schedulertypes.MsgUpdateParams{Authority: authority, Params: schedulertypes.Params{MaxRetries: 4, RetryDelay: 2}},
		}, sdk.NewCoins(sdk.NewInt64Coin(chain.Denom, 10_000_000)), s.voter.addr.String(), "", "shorter epochs", "4-block epochs", false)
		require.NoError(t, err)
		txs = append(txs, s.sign(t, app, s.voter, prop))
	case 13:
		txs = append(txs, s.sign(t, app, s.voter, govv1.NewMsgVote(s.voter.addr, 1, govv1.OptionYes, "")))
	case 17: // epoch 4: a group member settles escrow 4 at a root not finalized; the window pays it
		esc := s.escrow(t, r, blk, 4)
		host := s.holderOf(t, esc, 0)
		txs = append(txs, s.sign(t, app, host, &devshardtypes.MsgSettleEscrow{Sender: host.addr.String(), Settlement: s.settlement(t, r, blk, 4, false)}))
	case 22: // epoch 2 CLAIMABLE
		for _, h := range s.hosts {
			txs = append(txs, s.sign(t, app, h, &devshardtypes.MsgClaimRewards{Participant: h.addr.String(), EpochId: 2}))
		}
	}
	return txs
}

func (s *script) escrow(t *testing.T, r *replica, blk recordedBlock, id uint64) devshardtypes.Escrow {
	t.Helper()
	esc, err := r.app.DevshardKeeper.Escrow(r.ctx(blk), id)
	require.NoError(t, err)
	return esc
}

func (s *script) holderOf(t *testing.T, esc devshardtypes.Escrow, slot int) *account {
	t.Helper()
	for _, h := range s.hosts {
		if h.addr.Equals(sdk.AccAddress(esc.Snapshot.Group[slot])) {
			return h
		}
	}
	t.Fatalf("slot %d of escrow %d is held by no host", slot, esc.Id)
	return nil
}

// settlement runs an honest session of three inferences over escrow id and
// returns its settlement signed by every slot, finalized or not.
func (s *script) settlement(t *testing.T, r *replica, blk recordedBlock, id uint64, finalized bool) *sessionpb.Settlement {
	t.Helper()
	esc := s.escrow(t, r, blk, id)
	snap := esc.Snapshot
	f := &sessiontest.Fixture{Snapshot: &snap}
	var err error
	f.Gateway, err = signing.PrivKeyFromBytes(s.gateway.key.Key)
	require.NoError(t, err)
	for _, h := range s.hosts {
		k, err := signing.PrivKeyFromBytes(h.key.Key)
		require.NoError(t, err)
		f.Hosts = append(f.Hosts, k)
	}
	for _, a := range snap.Group {
		for i, h := range s.hosts {
			if h.addr.Equals(sdk.AccAddress(a)) {
				f.Holders = append(f.Holders, i)
			}
		}
	}
	require.Len(t, f.Holders, len(snap.Group))
	seq := f.Sequencer()
	for range 3 {
		n := seq.Replica.Nonce() + 1
		_, err := seq.Next(sessiontest.Start(n, 10, 100))
		require.NoError(t, err)
		exec := seq.Replica.Executor(n)
		_, err = seq.Next(f.Confirm(exec, n, sessiontest.Timestamp(n)), f.Finish(exec, n, 10, 40))
		require.NoError(t, err)
	}
	if finalized {
		for range 2 {
			_, err := seq.Next(sessiontest.Finalize())
			require.NoError(t, err)
		}
	}
	return f.Settle(seq.Replica, f.AllSlots()...)
}

// requireCovered checks that the run went through the paths it is meant to
// exercise, so a script that silently stopped doing so fails.
func (s *script) requireCovered(t *testing.T, r *replica, last recordedBlock) {
	t.Helper()
	ctx := r.ctx(last)
	k := r.app.DevshardKeeper
	status := map[uint64]devshardtypes.EscrowStatus{1: devshardtypes.EscrowSettled, 2: devshardtypes.EscrowExpired, 3: devshardtypes.EscrowExpired, 4: devshardtypes.EscrowSettled}
	for id, want := range status {
		require.Equal(t, want, s.escrow(t, r, last, id).Status, "escrow %d", id)
	}
	params, err := k.Params.Get(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(4), params.EpochLength, "the params change passed")
	sp, err := r.app.SchedulerKeeper.Params.Get(ctx)
	require.NoError(t, err)
	require.Equal(t, uint32(4), sp.MaxRetries)
	e2, err := k.Epoch(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, devshardtypes.EpochClosed, e2.State)
	for _, h := range s.hosts {
		sum, err := k.Summaries.Get(ctx, collections.Join(uint64(2), h.addr))
		require.NoError(t, err)
		require.True(t, sum.Claimed, "%s claimed epoch 2", h.addr)
	}
	cur, err := k.CurrentEpoch.Get(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(8), cur, "epochs advanced, 4 blocks long from epoch 5 on")
	p2, err := k.Participants.Get(ctx, s.hosts[2].addr)
	require.NoError(t, err)
	require.True(t, p2.Collateral.IsZero(), "the leaver's collateral came back")
	require.NoError(t, r.app.AssertInvariants(ctx))
}
