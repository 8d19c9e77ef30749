package keeper_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"cosmossdk.io/collections"

	sdk "github.com/cosmos/cosmos-sdk/types"
	sdkerrors "github.com/cosmos/cosmos-sdk/types/errors"
	"github.com/cosmos/cosmos-sdk/x/authz"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/x/devshard/keeper"
	"github.com/devshard/devshard/x/devshard/types"
)

// world is a chain with three registered hosts (collateral 100, 200, 300),
// effective in epoch 1, and a funded gateway. Their keys sign sessions.
//
// Heights with testParams: epoch 1 is ACTIVE in blocks 2-5, SETTLING in 6-9,
// ACCOUNTING in 10-13, CLAIMABLE in 14-17 and CLOSED at the end of block 17.
// Epoch N begins at the end of block 4N-3.
type world struct {
	*bundle
	srv   types.MsgServer
	keys  *sessiontest.Fixture
	gw    sdk.AccAddress
	hosts []sdk.AccAddress
}

const gatewayFunds = 1_000_000

func newWorld(t testing.TB, mutate ...func(*types.Params)) *world {
	t.Helper()
	return newWorldN(t, 3, mutate...)
}

// newWorldN is newWorld with n hosts; host i bonds 100*(i+1).
func newWorldN(t testing.TB, n int, mutate ...func(*types.Params)) *world {
	t.Helper()
	p := testParams()
	for _, m := range mutate {
		m(&p)
	}
	holders := make([]int, n)
	for i := range holders {
		holders[i] = i
	}
	w := &world{bundle: setup(t, p), keys: sessiontest.New(11, sessiontest.Options{Holders: holders})}
	w.srv = keeper.NewMsgServer(w.k)
	w.gw = sdk.AccAddress(w.keys.Gateway.Address().Bytes())
	w.bank.balances[w.gw.String()] = sdk.NewCoins(sdk.NewInt64Coin(denom, gatewayFunds))
	w.block(1)
	for i, key := range w.keys.Hosts {
		addr := sdk.AccAddress(key.Address().Bytes())
		w.bank.balances[addr.String()] = sdk.NewCoins(sdk.NewInt64Coin(denom, max(1000, int64(100*(i+1)))))
		w.register(t, addr, int64(100*(i+1)))
		w.hosts = append(w.hosts, addr)
	}
	w.endBlock(t)
	w.advanceTo(t, 2)
	require.Equal(t, types.EpochActive, w.state(t, 1))
	return w
}

func (w *world) create(t testing.TB, amount uint64) types.Escrow {
	t.Helper()
	res, err := w.srv.CreateEscrow(w.ctx, &types.MsgCreateEscrow{Creator: w.gw.String(), Amount: amount})
	require.NoError(t, err)
	esc, err := w.k.Escrow(w.ctx, res.EscrowId)
	require.NoError(t, err)
	return esc
}

// fixture binds the hosts' keys to the escrow's chain-picked group.
func (w *world) fixture(t testing.TB, esc types.Escrow) *sessiontest.Fixture {
	t.Helper()
	snap := esc.Snapshot
	f := &sessiontest.Fixture{Gateway: w.keys.Gateway, Hosts: w.keys.Hosts, Snapshot: &snap}
	for _, a := range snap.Group {
		idx := -1
		for i, h := range w.hosts {
			if h.Equals(sdk.AccAddress(a)) {
				idx = i
			}
		}
		require.GreaterOrEqual(t, idx, 0, "group member %x is not a test host", a)
		f.Holders = append(f.Holders, idx)
	}
	return f
}

// run plays an honest session of n inferences (10 in, 40 out tokens each),
// closes it and returns the gateway's replica.
func run(t testing.TB, f *sessiontest.Fixture, n int) *session.Session {
	t.Helper()
	q := f.Sequencer()
	infer(t, q, n)
	finalize(t, q)
	return q.Replica
}

// finalize moves q's session to SETTLEMENT: two FinalizeRounds.
func finalize(t testing.TB, q *sessiontest.Sequencer) {
	t.Helper()
	for range 2 {
		_, err := q.Next(sessiontest.Finalize())
		require.NoError(t, err)
	}
}

// infer plays n more inferences (10 in, 40 out tokens each) on q, leaving
// the session ACTIVE.
func infer(t testing.TB, q *sessiontest.Sequencer, n int) {
	t.Helper()
	for range n {
		id := q.Replica.Nonce() + 1
		_, err := q.Next(sessiontest.Start(id, 10, 100))
		require.NoError(t, err)
		exec := q.Replica.Executor(id)
		_, err = q.Next(q.F.Confirm(exec, id, sessiontest.Timestamp(id)), q.F.Finish(exec, id, 10, 40))
		require.NoError(t, err)
	}
}

// honest returns a fully signed settlement of an n-inference session of esc.
func (w *world) honest(t testing.TB, esc types.Escrow, n int) (*sessiontest.Fixture, *sessionpb.Settlement) {
	t.Helper()
	f := w.fixture(t, esc)
	return f, f.Settle(run(t, f, n), f.AllSlots()...)
}

func (w *world) settle(sender sdk.AccAddress, m *sessionpb.Settlement) (*types.MsgSettleEscrowResponse, error) {
	return w.srv.SettleEscrow(w.ctx, &types.MsgSettleEscrow{Sender: sender.String(), Settlement: m})
}

// plan is what the protocol package says a settlement pays.
func plan(t testing.TB, esc types.Escrow, m *sessionpb.Settlement) *session.Plan {
	t.Helper()
	p, err := session.VerifySettlement(&esc.Snapshot, m, nil)
	require.NoError(t, err)
	return p
}

func payouts(p *session.Plan) map[string]uint64 {
	out := map[string]uint64{}
	for _, a := range p.ByAddress() {
		out[sdk.AccAddress(a.Address[:]).String()] += a.Cost + a.FeeShare
	}
	return out
}

func (w *world) member(t testing.TB, epoch uint64, addr sdk.AccAddress) types.EpochMember {
	t.Helper()
	m, err := w.k.Members.Get(w.ctx, collectionsJoin(epoch, addr))
	require.NoError(t, err)
	return m
}

// conserved checks the module account holds exactly what it owes.
func (w *world) conserved(t testing.TB) {
	t.Helper()
	msg, broken := keeper.ConservationInvariant(w.k)(w.ctx)
	require.False(t, broken, msg)
}

func (w *world) bal(addr sdk.AccAddress) uint64 { return w.bank.of(addr).Uint64() }

func TestParamsValidation(t *testing.T) {
	t.Parallel()
	require.NoError(t, types.DefaultParams().Validate())
	sha := "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	cases := []struct {
		name   string
		mutate func(*types.Params)
		want   string
	}{
		{"group size 0", func(p *types.Params) { p.GroupSize = 0 }, "group_size is 0"},
		{"group size too big", func(p *types.Params) { p.GroupSize = 257 }, "between 1 and 256"},
		{"empty amount range", func(p *types.Params) { p.MinEscrowAmount, p.MaxEscrowAmount = 10, 5 }, "escrow amount bounds [10, 5]"},
		{"fee above min amount", func(p *types.Params) { p.CreationFee = p.MinEscrowAmount + 1 }, "exceeds min_escrow_amount"},
		{"no escrows", func(p *types.Params) { p.MaxEscrowsPerEpoch = 0 }, "max_escrows_per_epoch is 0"},
		{"max nonce 0", func(p *types.Params) { p.MaxNonce = 0 }, "max_nonce is 0"},
		{"free tokens", func(p *types.Params) { p.TokenPrice = 0 }, "token_price is 0"},
		{"validation rate", func(p *types.Params) { p.ValidationRateBps = 10_001 }, "validation_rate_bps is 10001"},
		{"protocol version", func(p *types.Params) { p.ProtocolVersion = session.ProtocolVersion + 1 }, fmt.Sprintf("this build runs protocol version %d", session.ProtocolVersion)},
		{"window 0", func(p *types.Params) { p.SettlementWindowEpochs = 0 }, "settlement_window_epochs is 0"},
		{"expiry inside window", func(p *types.Params) { p.ExpiryEpochs = p.SettlementWindowEpochs }, "greater than settlement_window_epochs"},
		{"batch 0", func(p *types.Params) { p.ExpiryBatch = 0 }, "expiry_batch is 0"},
		{"threshold", func(p *types.Params) { p.MaxMissedRatioBps = 10_001 }, "at most 10000"},
		{"upgrade protection window too long", func(p *types.Params) { p.UpgradeProtectionWindow = types.MaxUpgradeProtectionWindow + 1 },
			"upgrade_protection_window is 1000001 blocks; it must be at most 1000000"},
		{"duplicate version", func(p *types.Params) {
			p.ApprovedVersions = []types.ApprovedVersion{{Name: "v1", Url: "https://a.example/v1", Sha256: sha}, {Name: "v1", Url: "https://a.example/v1b", Sha256: sha}}
		}, `name "v1" appears twice`},
		{"bad sha", func(p *types.Params) {
			p.ApprovedVersions = []types.ApprovedVersion{{Name: "v1", Url: "https://a.example/v1", Sha256: "abc"}}
		}, "must be 64 lowercase hex digits"},
		{"upper-case sha", func(p *types.Params) {
			p.ApprovedVersions = []types.ApprovedVersion{{Name: "v1", Url: "https://a.example/v1", Sha256: "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"}}
		}, "must be 64 lowercase hex digits"},
		{"http url", func(p *types.Params) {
			p.ApprovedVersions = []types.ApprovedVersion{{Name: "v1", Url: "http://a.example/v1", Sha256: sha}}
		}, "must be an absolute URL with scheme [https]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			p := types.DefaultParams()
			c.mutate(&p)
			err := p.Validate()
			require.ErrorIs(t, err, types.ErrInvalidParams)
			require.ErrorContains(t, err, c.want)
		})
	}
	p := types.DefaultParams()
	p.ApprovedVersions = []types.ApprovedVersion{{Name: "v1", Url: "https://a.example/v1", Sha256: sha}}
	require.NoError(t, p.Validate())
	require.Equal(t, uint64(3_000), types.DefaultParams().UpgradeProtectionWindow)
	for _, window := range []uint64{0, 1, types.MaxUpgradeProtectionWindow} {
		p.UpgradeProtectionWindow = window
		require.NoError(t, p.Validate(), "upgrade_protection_window %d", window)
	}
}

func TestCreateEscrowLocksAmountAndSnapshotsParams(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	esc := w.create(t, 10_000)
	require.Equal(t, uint64(gatewayFunds-10_000), w.bal(w.gw), "the amount and nothing more is charged")
	require.Equal(t, uint64(600+10_000), w.bal(moduleAddr()))
	p := testParams()
	s := esc.Snapshot
	require.Equal(t, types.EscrowOpen, esc.Status)
	require.Equal(t, uint64(1), s.EscrowId)
	require.Equal(t, uint64(1), s.Epoch)
	require.Equal(t, w.gw, sdk.AccAddress(s.Creator))
	require.Len(t, s.Group, int(p.GroupSize))
	require.Equal(t, []uint64{p.TokenPrice, p.CreationFee, p.FeePerNonce, p.MaxNonce, p.SealGraceNonces, p.SealGraceSeconds, p.ExecutionTimeoutSeconds},
		[]uint64{s.TokenPrice, s.CreationFee, s.FeePerNonce, s.MaxNonce, s.SealGraceNonces, s.SealGraceSeconds, s.ExecutionTimeoutSeconds})
	require.Equal(t, p.ValidationRateBps, s.ValidationRateBps)
	require.Equal(t, p.ProtocolVersion, s.ProtocolVersion)
	require.Equal(t, uint64(2), esc.DeadlineEpoch)
	require.Equal(t, uint64(3), esc.ExpiryEpoch)
	require.NoError(t, session.ValidateSnapshot(&s))
	w.conserved(t)

	// Deterministic: the same chain state and escrow id pick the same group.
	other := newWorld(t)
	require.Equal(t, s.Group, other.create(t, 10_000).Snapshot.Group)
}

func TestGroupSelectionFollowsWeight(t *testing.T) {
	t.Parallel()
	w := newWorld(t, func(p *types.Params) { p.GroupSize = 256 })
	counts := map[string]int{}
	for range 8 {
		for _, a := range w.create(t, 10_000).Snapshot.Group {
			counts[sdk.AccAddress(a).String()]++
		}
	}
	// Weights 1:2:3 over 2048 draws: expected 341, 683, 1024.
	require.InDelta(t, 341, counts[w.hosts[0].String()], 100)
	require.InDelta(t, 683, counts[w.hosts[1].String()], 120)
	require.InDelta(t, 1024, counts[w.hosts[2].String()], 120)
}

func TestCreateEscrowRejections(t *testing.T) {
	t.Parallel()
	w := newWorld(t, func(p *types.Params) { p.MaxEscrowsPerEpoch = 2 })
	create := func(creator string, amount uint64) error {
		_, err := w.srv.CreateEscrow(w.ctx, &types.MsgCreateEscrow{Creator: creator, Amount: amount})
		return err
	}
	err := create(w.gw.String(), 999)
	require.ErrorIs(t, err, types.ErrInvalidEscrow)
	require.ErrorContains(t, err, "amount 999ushard is outside the allowed range [1000, 1000000000]")
	require.ErrorContains(t, create(w.gw.String(), 1_000_000_001), "outside the allowed range")
	require.ErrorContains(t, create("nope", 1000), `creator "nope" is not a valid address`)
	poor := hostAddr(99)
	require.ErrorIs(t, create(poor.String(), 1000), sdkerrors.ErrInsufficientFunds)

	require.NoError(t, create(w.gw.String(), 1000))
	require.NoError(t, create(w.gw.String(), 1000))
	err = create(w.gw.String(), 1000)
	require.ErrorIs(t, err, types.ErrEscrowLimit)
	require.ErrorContains(t, err, "epoch 1 already has 2 escrows")

	// Epoch 1 stops being current at the end of block 5; epoch 2 accepts.
	w.advanceTo(t, 6)
	require.NoError(t, create(w.gw.String(), 1000))

	// A cancelled current epoch accepts nothing.
	require.NoError(t, w.k.CancelEpoch(w.ctx, 2, "test"))
	err = create(w.gw.String(), 1000)
	require.ErrorIs(t, err, types.ErrEpochNotActive)
	require.ErrorContains(t, err, "epoch 2 is CANCELLED")
	w.conserved(t)
}

// With no ACTIVE member of positive weight left in the current epoch no
// group can be drawn: the escrow is refused and nothing is locked.
func TestCreateEscrowWithoutAnActiveMember(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	for _, h := range w.hosts[:2] {
		_, err := w.srv.UnregisterParticipant(w.ctx, &types.MsgUnregisterParticipant{Participant: h.String()})
		require.NoError(t, err)
	}
	require.NoError(t, w.k.RecordStats(w.ctx, 1, w.hosts[2], types.InferenceStats{Invalidated: 3}))
	require.Equal(t, types.ParticipantInvalid, w.participant(t, w.hosts[2]).Status)
	require.Equal(t, types.EpochActive, w.state(t, 1), "the epoch and its members stand; none may serve")

	_, err := w.srv.CreateEscrow(w.ctx, &types.MsgCreateEscrow{Creator: w.gw.String(), Amount: 1000})
	require.ErrorIs(t, err, types.ErrNoGroup)
	require.ErrorContains(t, err, "epoch 1 has no ACTIVE member with positive weight")
	require.Equal(t, uint64(gatewayFunds), w.bal(w.gw), "nothing was locked")
	w.conserved(t)
}

// The snapshot is checked by the protocol package before any coin moves. A
// valid bech32 address of another length than a session key's 20 bytes (a
// 32-byte module or contract account, say) cannot sign a session.
func TestCreateEscrowRejectsAnInvalidSnapshot(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	long := sdk.AccAddress(bytes.Repeat([]byte{7}, 32))
	w.bank.balances[long.String()] = sdk.NewCoins(sdk.NewInt64Coin(denom, 10_000))

	_, err := w.srv.CreateEscrow(w.ctx, &types.MsgCreateEscrow{Creator: long.String(), Amount: 1000})
	require.ErrorIs(t, err, types.ErrInvalidEscrow)
	require.ErrorContains(t, err, "escrow snapshot: creator must be a 20-byte address, got 32 bytes")
	require.Equal(t, uint64(10_000), w.bal(long), "nothing was locked")
	require.Equal(t, uint64(600), w.bal(moduleAddr()))
	w.conserved(t)
}

func TestCreateEscrowBeforeAnyEpochIsActive(t *testing.T) {
	t.Parallel()
	b := setup(t, testParams())
	gw := b.host(0, 10_000)
	_, err := keeper.NewMsgServer(b.k).CreateEscrow(b.ctx, &types.MsgCreateEscrow{Creator: gw.String(), Amount: 1000})
	require.Error(t, err)
	b.advanceTo(t, 2) // epoch 1 had no participants: cancelled
	_, err = keeper.NewMsgServer(b.k).CreateEscrow(b.ctx, &types.MsgCreateEscrow{Creator: gw.String(), Amount: 1000})
	require.ErrorIs(t, err, types.ErrEpochNotActive)
}

func TestSettleCreditsLedgersAndRefundsCreator(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	esc := w.create(t, 100_000)
	_, m := w.honest(t, esc, 5)
	pl := plan(t, esc, m)
	want := payouts(pl)

	res, err := w.settle(w.gw, m)
	require.NoError(t, err)
	require.Equal(t, pl.Refund, res.Refund)
	require.Equal(t, uint64(100_000)-pl.Refund, res.Paid)
	require.Equal(t, uint64(gatewayFunds-100_000)+pl.Refund, w.bal(w.gw))
	var ledgers uint64
	for _, h := range w.hosts {
		m := w.member(t, 1, h)
		require.Equal(t, want[h.String()], m.Earned, "ledger of %s", h)
		ledgers += m.Earned
		require.Equal(t, uint64(1000-100*(1+indexOf(w.hosts, h))), w.bal(h), "host coins stay in the ledger until claimed")
	}
	require.Equal(t, uint64(100_000)-pl.Refund, ledgers)
	require.Positive(t, ledgers)
	var finished uint64
	for _, h := range w.hosts {
		finished += w.member(t, 1, h).Stats.Finished
	}
	require.Equal(t, uint64(5), finished, "work credited is the attested finished count")
	w.conserved(t)

	got, err := w.k.Escrow(w.ctx, esc.Id)
	require.NoError(t, err)
	require.Equal(t, types.EscrowSettled, got.Status)
	_, err = w.settle(w.gw, m)
	require.ErrorIs(t, err, types.ErrEscrowClosed)
	require.ErrorContains(t, err, "escrow 1 is ESCROW_STATUS_SETTLED")
}

func indexOf(hosts []sdk.AccAddress, h sdk.AccAddress) int {
	for i, x := range hosts {
		if x.Equals(h) {
			return i
		}
	}
	return -1
}

func TestSettleEscrowRejections(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	esc := w.create(t, 100_000)
	f, m := w.honest(t, esc, 3)
	outsider := hostAddr(42)

	_, err := w.settle(w.gw, nil)
	require.ErrorIs(t, err, types.ErrSettlement)
	require.ErrorContains(t, err, "carries no settlement")

	_, err = w.srv.SettleEscrow(w.ctx, &types.MsgSettleEscrow{Sender: "nope", Settlement: m})
	require.ErrorContains(t, err, `sender "nope" is not a valid address`)

	bad := *m
	bad.EscrowId = 77
	_, err = w.settle(w.gw, &bad)
	require.ErrorIs(t, err, types.ErrEscrowNotFound)
	require.ErrorContains(t, err, "escrow 77 does not exist")

	_, err = w.settle(outsider, m)
	require.ErrorIs(t, err, types.ErrSettlement)
	require.ErrorContains(t, err, "is neither the creator nor a group member")

	member := sdk.AccAddress(esc.Snapshot.Group[0])
	_, err = w.settle(member, m)
	require.ErrorContains(t, err, "may settle only after the settlement deadline")
	require.ErrorContains(t, err, "deadline: epoch 2, current epoch 1")

	// A forged host signature.
	forged := f.Settle(run(t, f, 3))
	thief := sessiontest.New(99, sessiontest.DefaultOptions()).Gateway
	for _, slot := range f.AllSlots() {
		ss, err := session.SignState(thief, sessiontest.ChainID, forged.EscrowId, forged.Nonce, forged.StateRoot, slot)
		require.NoError(t, err)
		forged.Signatures = append(forged.Signatures, &sessionpb.SlotSignature{Slot: slot, Sig: ss.Sig})
	}
	_, err = w.settle(w.gw, forged)
	require.ErrorIs(t, err, types.ErrSettlement)
	require.ErrorContains(t, err, "may not sign")

	// A tampered balance, not re-signed: the root no longer matches.
	tampered := f.Settle(run(t, f, 3), f.AllSlots()...)
	tampered.Balance--
	tampered.Fees++
	_, err = w.settle(w.gw, tampered)
	require.ErrorIs(t, err, types.ErrSettlement)
	w.conserved(t)
	require.Equal(t, uint64(600+100_000), w.bal(moduleAddr()), "no rejected settlement moved a coin")

	// After the deadline, a group member may settle, through a warm key it
	// granted MsgSignSession; an ungranted key still may not.
	w.advanceTo(t, 6)
	warm := hostAddr(77)
	_, err = w.settle(warm, m)
	require.ErrorContains(t, err, "is neither the creator nor a group member")
	w.authz[member.String()+"|"+warm.String()+"|"+sdk.MsgTypeURL(&types.MsgSignSession{})] = &authz.GenericAuthorization{Msg: sdk.MsgTypeURL(&types.MsgSignSession{})}
	_, err = w.settle(warm, m)
	require.NoError(t, err)
	w.conserved(t)
}

// Attack 2: the fees are recomputed from the escrow's snapshot. A quorum
// that signs fees from the live (changed) parameters is refused, and an
// honest settlement still settles after governance changes the fees.
func TestAttackFeesCheckedAgainstSnapshot(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	esc := w.create(t, 100_000)
	f, honest := w.honest(t, esc, 3)

	p, err := w.k.Params.Get(w.ctx)
	require.NoError(t, err)
	p.CreationFee, p.FeePerNonce = 10, 0
	_, err = w.srv.UpdateParams(w.ctx, &types.MsgUpdateParams{Authority: authority, Params: p})
	require.NoError(t, err)

	// Fees by the live params: creation fee 10, nothing per nonce.
	live := f.Settle(run(t, f, 3))
	shift := live.Fees - 10
	live.Fees = 10
	live.Balance += shift
	_, err = w.settle(w.gw, f.Resign(live, f.AllSlots()...))
	require.ErrorIs(t, err, types.ErrSettlement)
	require.ErrorContains(t, err, "fees")

	_, err = w.settle(w.gw, honest)
	require.NoError(t, err)
	w.conserved(t)
}

// Attack 3: the nonce bound and protocol version come from the escrow's
// snapshot, never from live params. The live params are set so that they
// allow what each snapshot forbids and forbid what it allows, and the test
// asserts acceptance and the typed reason, so a keeper that read the live
// params fails it either way.
//
// Checked with mutant keepers that overwrote the snapshot's max_nonce, its
// protocol_version, or both, with the live params before verifying: each
// failed this test (the live version refuses the version-1 settlements, the
// live bound accepts nonce 6 and refuses nonce 8).
func TestAttackNonceBoundFromSnapshot(t *testing.T) {
	t.Parallel()
	w := newWorld(t, func(p *types.Params) { p.MaxNonce = 5 })
	small := w.create(t, 100_000) // snapshot max_nonce 5
	setParams := func(mutate func(*types.Params)) {
		t.Helper()
		p, err := w.k.Params.Get(w.ctx)
		require.NoError(t, err)
		mutate(&p)
		_, err = w.srv.UpdateParams(w.ctx, &types.MsgUpdateParams{Authority: authority, Params: p})
		require.NoError(t, err)
	}
	setParams(func(p *types.Params) { p.MaxNonce = 20 })
	large := w.create(t, 100_000) // snapshot max_nonce 20
	require.Equal(t, []uint64{5, 20}, []uint64{small.Snapshot.MaxNonce, large.Snapshot.MaxNonce})

	// Live: max_nonce 7, and the next protocol version, which no build
	// validates yet, so it is written straight to the store, as a later
	// build might.
	setParams(func(p *types.Params) { p.MaxNonce = 7 })
	p, err := w.k.Params.Get(w.ctx)
	require.NoError(t, err)
	p.ProtocolVersion = session.ProtocolVersion + 1
	require.NoError(t, w.k.Params.Set(w.ctx, p))
	module := w.bal(moduleAddr())

	// Nonce 6: the live bound (7) allows it, the snapshot (5) does not.
	fs := w.fixture(t, small)
	m := fs.Settle(run(t, fs, 1)) // nonce 4; a colluding quorum re-signs 6
	m.Nonce, m.ActiveNonces = 6, 6
	m.Fees += 2 * fs.Snapshot.FeePerNonce
	m.Balance -= 2 * fs.Snapshot.FeePerNonce
	_, err = w.settle(w.gw, fs.Resign(m, fs.AllSlots()...))
	require.ErrorIs(t, err, types.ErrSettlement)
	require.ErrorIs(t, err, session.ReasonNonce)
	var rejected *types.RejectedSettlement
	require.ErrorAs(t, err, &rejected)
	require.Equal(t, types.ErrSettlement.Codespace(), rejected.Codespace())
	require.NotEqual(t, types.ErrSettlement.ABCICode(), rejected.ABCICode(), "the reason has its own code")

	// The next version: the live params name it, the snapshot does not.
	fl := w.fixture(t, large)
	q := fl.Sequencer()
	infer(t, q, 3)
	finalize(t, q)
	honest := fl.Settle(q.Replica, fl.AllSlots()...)
	require.Equal(t, uint64(8), honest.Nonce)
	v2 := fl.Settle(q.Replica)
	v2.ProtocolVersion = session.ProtocolVersion + 1
	_, err = w.settle(w.gw, fl.Resign(v2, fl.AllSlots()...))
	require.ErrorIs(t, err, types.ErrSettlement)
	require.ErrorIs(t, err, session.ReasonVersion)
	require.Equal(t, module, w.bal(moduleAddr()), "no coin moved")

	// Nonce 8 at the snapshot's version: the live params forbid both, the
	// snapshot allows both.
	res, err := w.settle(w.gw, honest)
	require.NoError(t, err)
	require.Equal(t, plan(t, large, honest).Refund, res.Refund)
	require.Equal(t, types.EscrowSettled, mustEscrow(t, w, large.Id).Status)
	w.conserved(t)
}

// Attack 4: an escrow nobody settles goes back to its creator exactly, in
// bounded batches, and leaves nothing in the module account.
func TestAttackExpiredEscrowRefundsCreatorExactly(t *testing.T) {
	t.Parallel()
	w := newWorld(t) // expiry_batch 2
	for _, amount := range []uint64{1_000, 2_345, 7_777} {
		w.create(t, amount)
	}
	require.Equal(t, uint64(gatewayFunds-11_122), w.bal(w.gw))
	// Expiry epoch 3 begins at the end of block 9.
	w.advanceTo(t, 9)
	require.Equal(t, uint64(gatewayFunds-11_122), w.bal(w.gw), "nothing expires before epoch 3")
	w.advanceTo(t, 10)
	require.Equal(t, uint64(gatewayFunds-11_122+1_000+2_345), w.bal(w.gw), "one batch of 2 per block")
	w.conserved(t)
	w.advanceTo(t, 11)
	require.Equal(t, uint64(gatewayFunds), w.bal(w.gw))
	require.Equal(t, uint64(600), w.bal(moduleAddr()), "only collateral is left")
	w.conserved(t)
	for id := uint64(1); id <= 3; id++ {
		esc, err := w.k.Escrow(w.ctx, id)
		require.NoError(t, err)
		require.Equal(t, types.EscrowExpired, esc.Status)
	}
	_, m := w.honest(t, mustEscrow(t, w, 1), 1)
	_, err := w.settle(w.gw, m)
	require.ErrorIs(t, err, types.ErrEscrowClosed)
}

func mustEscrow(t testing.TB, w *world, id uint64) types.Escrow {
	t.Helper()
	e, err := w.k.Escrow(w.ctx, id)
	require.NoError(t, err)
	return e
}

// Attack 11: a slot's signature repeated counts once. Three copies of slot
// 0's signature are not a 2/3 quorum of three slots, and no coin moves.
func TestAttackDuplicateSignaturesCountOnce(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	esc := w.create(t, 100_000)
	f := w.fixture(t, esc)
	m := f.Settle(run(t, f, 2), 0)
	m.Signatures = append(m.Signatures, m.Signatures[0], m.Signatures[0])
	_, err := w.settle(w.gw, m)
	require.ErrorIs(t, err, types.ErrSettlement)
	require.ErrorIs(t, err, session.ReasonQuorum)
	require.ErrorContains(t, err, "1 of 3 slots signed validly; more than 2/3 (at least 3) are needed")
	require.Equal(t, uint64(600+100_000), w.bal(moduleAddr()))
	require.Equal(t, types.EscrowOpen, mustEscrow(t, w, esc.Id).Status)
	w.conserved(t)
}

func collectionsJoin(epoch uint64, addr sdk.AccAddress) collections.Pair[uint64, sdk.AccAddress] {
	return collections.Join(epoch, addr)
}

func (w *world) summary(t testing.TB, epoch uint64, h sdk.AccAddress) types.EpochPerformanceSummary {
	t.Helper()
	s, err := w.k.Summaries.Get(w.ctx, collectionsJoin(epoch, h))
	require.NoError(t, err)
	return s
}

// Attack 9: payouts that arrive after the escrow's epoch was accounted go to
// that epoch's summary, or to the host once it claimed or the epoch closed;
// a punished host's go back to the creator. Every coin is accounted for.
func TestAttackCrossEpochPayoutsNeverVanish(t *testing.T) {
	t.Parallel()
	w := newWorld(t, func(p *types.Params) { p.GroupSize = 32; p.ExpiryEpochs = 6 })
	var (
		escs []types.Escrow
		ms   []*sessionpb.Settlement
	)
	for range 3 {
		e := w.create(t, 100_000)
		_, m := w.honest(t, e, 6)
		escs, ms = append(escs, e), append(ms, m)
	}
	punished, claimer, idle := w.hosts[0], w.hosts[1], w.hosts[2]
	for i, e := range escs {
		require.Len(t, payouts(plan(t, e, ms[i])), 3, "every host holds a slot of every group")
	}
	// Host 0 missed everything it was given in epoch 1.
	require.NoError(t, w.k.RecordStats(w.ctx, 1, punished, types.InferenceStats{Missed: 50}))

	w.advanceTo(t, 10) // epoch 1 ACCOUNTING
	require.True(t, w.summary(t, 1, punished).Punished)
	require.Equal(t, types.ParticipantInvalid, w.participant(t, punished).Status)

	// During ACCOUNTING: honest hosts' pay goes to their summaries, the
	// punished host's back to the creator.
	pay := payouts(plan(t, escs[0], ms[0]))
	gw := w.bal(w.gw)
	_, err := w.settle(w.gw, ms[0])
	require.NoError(t, err)
	require.Equal(t, gw+plan(t, escs[0], ms[0]).Refund+pay[punished.String()], w.bal(w.gw))
	require.Equal(t, pay[claimer.String()], w.summary(t, 1, claimer).Rewarded)
	require.Equal(t, pay[idle.String()], w.summary(t, 1, idle).Rewarded)
	w.conserved(t)

	w.advanceTo(t, 14) // CLAIMABLE
	before := w.bal(claimer)
	res, err := w.srv.ClaimRewards(w.ctx, &types.MsgClaimRewards{Participant: claimer.String(), EpochId: 1})
	require.NoError(t, err)
	require.Equal(t, pay[claimer.String()], res.Amount)
	require.Equal(t, before+res.Amount, w.bal(claimer))

	// After the claim: straight to the claimer; still the summary for idle.
	pay1 := payouts(plan(t, escs[1], ms[1]))
	before = w.bal(claimer)
	_, err = w.settle(w.gw, ms[1])
	require.NoError(t, err)
	require.Equal(t, before+pay1[claimer.String()], w.bal(claimer))
	require.Equal(t, pay[idle.String()]+pay1[idle.String()], w.summary(t, 1, idle).Rewarded)
	w.conserved(t)

	w.advanceTo(t, 18) // CLOSED at the end of 17: idle's reward went to the pool
	require.Equal(t, types.EpochClosed, w.state(t, 1))
	require.Equal(t, pay[idle.String()]+pay1[idle.String()], w.bal(communityPool()))
	require.True(t, w.summary(t, 1, idle).Swept)
	w.conserved(t)

	// After CLOSE: straight to every unpunished host.
	pay2 := payouts(plan(t, escs[2], ms[2]))
	idleBefore, claimerBefore := w.bal(idle), w.bal(claimer)
	_, err = w.settle(w.gw, ms[2])
	require.NoError(t, err)
	require.Equal(t, idleBefore+pay2[idle.String()], w.bal(idle))
	require.Equal(t, claimerBefore+pay2[claimer.String()], w.bal(claimer))
	w.conserved(t)
	require.Equal(t, uint64(600), w.bal(moduleAddr()), "only collateral is left")
}

// invalidated plays a session of esc in which host executes n inferences
// the other slots invalidate, closes it and returns the settlement.
func (w *world) invalidated(t testing.TB, esc types.Escrow, host, n int) *sessionpb.Settlement {
	t.Helper()
	f := w.fixture(t, esc)
	q := f.Sequencer()
	for range n {
		// The executor is the id modulo the group size: empty diffs step
		// the nonce to a slot host holds.
		for f.Holders[q.Replica.Executor(q.Replica.Nonce()+1)] != host {
			_, err := q.Next()
			require.NoError(t, err)
		}
		id := q.Replica.Nonce() + 1
		_, err := q.Next(sessiontest.Start(id, 10, 100))
		require.NoError(t, err)
		exec := q.Replica.Executor(id)
		_, err = q.Next(f.Confirm(exec, id, sessiontest.Timestamp(id)), f.Finish(exec, id, 10, 40))
		require.NoError(t, err)
		for _, s := range f.AllSlots() {
			if _, live := q.Replica.Record(id); !live {
				break
			}
			if f.Holders[s] != host {
				_, err := q.Next(f.Validate(s, id, false))
				require.NoError(t, err)
			}
		}
		_, live := q.Replica.Record(id)
		require.False(t, live, "inference %d resolved", id)
	}
	finalize(t, q)
	return f.Settle(q.Replica, f.AllSlots()...)
}

// Invalid inferences that settle after their epoch was accounted still
// drive the invalid streak and the move to INVALID (DESIGN.md, Epoch
// lifecycle: status moves from the settled stats), as on the ledger path.
func TestCrossEpochSettlementDrivesTheInvalidStreak(t *testing.T) {
	t.Parallel()
	// Every eligible slot is sampled, so any of them may open a challenge.
	w := newWorld(t, func(p *types.Params) { p.GroupSize = 32; p.ExpiryEpochs = 6; p.ValidationRateBps = 10_000 })
	const host = 0
	h := w.hosts[host]
	a, b := w.create(t, 100_000), w.create(t, 100_000)
	ma, mb := w.invalidated(t, a, host, 2), w.invalidated(t, b, host, 1)

	w.advanceTo(t, 10) // epoch 1 ACCOUNTING: nothing settled, nobody punished
	require.False(t, w.summary(t, 1, h).Punished)

	_, err := w.settle(w.gw, ma)
	require.NoError(t, err)
	require.Equal(t, uint64(2), w.summary(t, 1, h).Stats.Invalidated)
	p := w.participant(t, h)
	require.Equal(t, uint64(2), p.ConsecutiveInvalidInferences)
	require.Equal(t, types.ParticipantActive, p.Status)

	_, err = w.settle(w.gw, mb)
	require.NoError(t, err)
	require.Equal(t, uint64(3), w.summary(t, 1, h).Stats.Invalidated)
	p = w.participant(t, h)
	require.Equal(t, types.ParticipantInvalid, p.Status, "the streak reached max_consecutive_invalid 3")
	require.Zero(t, p.ConsecutiveInvalidInferences, "moving to INVALID resets the streak")
	for _, other := range w.hosts[1:] {
		require.Equal(t, types.ParticipantActive, w.participant(t, other).Status)
	}
	w.conserved(t)
}

func TestAccountingClaimsAndSweep(t *testing.T) {
	t.Parallel()
	w := newWorld(t, func(p *types.Params) { p.GroupSize = 16 })
	esc := w.create(t, 100_000)
	_, m := w.honest(t, esc, 8)
	pay := payouts(plan(t, esc, m))
	_, err := w.settle(w.gw, m)
	require.NoError(t, err)
	claim := func(h sdk.AccAddress, epoch uint64) (uint64, error) {
		res, err := w.srv.ClaimRewards(w.ctx, &types.MsgClaimRewards{Participant: h.String(), EpochId: epoch})
		if err != nil {
			return 0, err
		}
		return res.Amount, nil
	}
	_, err = claim(w.hosts[1], 1)
	require.ErrorIs(t, err, types.ErrNotClaimable)
	require.ErrorContains(t, err, "epoch 1 is ACTIVE; rewards are claimed while it is CLAIMABLE")
	require.NoError(t, w.k.RecordStats(w.ctx, 1, w.hosts[0], types.InferenceStats{Finished: 1, Invalidated: 2}))
	w.advanceTo(t, 10)

	s0, s1 := w.summary(t, 1, w.hosts[0]), w.summary(t, 1, w.hosts[1])
	require.True(t, s0.Punished, "invalid ratio above the threshold")
	require.Zero(t, s0.Rewarded)
	require.Equal(t, pay[w.hosts[0].String()], s0.Earned)
	require.Equal(t, pay[w.hosts[0].String()], w.bal(communityPool()), "a punished host's work goes to the community pool")
	require.Equal(t, pay[w.hosts[1].String()], s1.Rewarded)
	require.Zero(t, w.member(t, 1, w.hosts[1]).Earned, "the ledger moved to the summary")
	require.Zero(t, w.participant(t, w.hosts[0]).ConsecutiveInvalidInferences, "the move to INVALID resets the streak")
	w.conserved(t)

	w.advanceTo(t, 14)
	_, err = claim(w.hosts[0], 1)
	require.ErrorContains(t, err, "was punished in epoch 1")
	_, err = claim(hostAddr(50), 1)
	require.ErrorContains(t, err, "has no performance summary in epoch 1")
	_, err = claim(w.hosts[1], 9)
	require.ErrorIs(t, err, types.ErrEpochNotFound)
	before := w.bal(w.hosts[1])
	got, err := claim(w.hosts[1], 1)
	require.NoError(t, err)
	require.Equal(t, before+pay[w.hosts[1].String()], w.bal(w.hosts[1]))
	require.Equal(t, pay[w.hosts[1].String()], got)
	_, err = claim(w.hosts[1], 1)
	require.ErrorIs(t, err, types.ErrAlreadyClaimed)
	require.ErrorContains(t, err, "already claimed epoch 1")
	w.conserved(t)

	pool := w.bal(communityPool())
	w.advanceTo(t, 18)
	require.Equal(t, pool+pay[w.hosts[2].String()], w.bal(communityPool()), "unclaimed at CLOSE goes to the community pool")
	_, err = claim(w.hosts[2], 1)
	require.ErrorContains(t, err, "epoch 1 is CLOSED")
	w.conserved(t)
	require.Equal(t, uint64(600), w.bal(moduleAddr()))

	res, err := keeper.NewQueryServer(w.k).Conservation(w.ctx, &types.QueryConservationRequest{})
	require.NoError(t, err)
	require.Equal(t, "600ushard", res.Balance)
	require.Equal(t, "600ushard", res.Owed)
	require.Equal(t, "600ushard", res.Bonded)
}

// Escrows, ledgers and summaries survive an export and import, and the
// imported chain owes what its module account holds.
func TestEscrowGenesisRoundTrip(t *testing.T) {
	t.Parallel()
	w := newWorld(t, func(p *types.Params) { p.ExpiryEpochs = 6 })
	settled := w.create(t, 50_000)
	_, m := w.honest(t, settled, 3)
	_, err := w.settle(w.gw, m)
	require.NoError(t, err)
	w.create(t, 7_000) // stays open
	pendingEsc := w.create(t, 8_000)
	fp := w.fixture(t, pendingEsc)
	qp := fp.Sequencer()
	infer(t, qp, 1)
	pm := fp.Settle(qp.Replica, fp.AllSlots()...) // never finalized
	w.advanceTo(t, 6)
	w.create(t, 9_000) // epoch 2
	w.advanceTo(t, 9)
	w.block(10) // epoch 1 accounted: summaries
	res, err := w.settle(sdk.AccAddress(pendingEsc.Snapshot.Group[0]), pm)
	require.NoError(t, err)
	require.True(t, res.Pending, "exported inside its challenge window")

	gs, err := w.k.ExportGenesis(w.ctx)
	require.NoError(t, err)
	require.NoError(t, gs.Validate())
	require.Len(t, gs.Escrows, 4)
	require.Equal(t, uint64(4), gs.EscrowSeq)
	require.NotEmpty(t, gs.Summaries)

	fresh := newBundle(t)
	fresh.bank.balances[moduleAddr().String()] = w.bank.balances[moduleAddr().String()]
	require.NoError(t, fresh.k.InitGenesis(fresh.ctx, *gs))
	again, err := fresh.k.ExportGenesis(fresh.ctx)
	require.NoError(t, err)
	require.Equal(t, gs, again)
	msg, broken := keeper.ConservationInvariant(fresh.k)(fresh.ctx)
	require.False(t, broken, msg)
	has, err := fresh.k.Pending.Has(fresh.ctx, pendingEsc.Id)
	require.NoError(t, err)
	require.True(t, has, "the imported pending settlement waits for its window, not for expiry")

	short := newBundle(t)
	short.bank.balances[moduleAddr().String()] = sdk.NewCoins(sdk.NewInt64Coin(denom, 600))
	require.ErrorContains(t, short.k.InitGenesis(short.ctx, *gs), "but the devshard module account holds only 600ushard")
}

// Item 9 of the review (denom change strands rewards): escrows lock the
// collateral denom of their creation, while ledgers, summaries, claims and
// sweeps were paid in the live one, and governance could change it at any
// time. After a change the module owed coins it never held, the invariant
// broke and claims failed. A change of the denom is refused while anything
// but collateral is owed in the old one.
//
// Checked on the unfixed keeper: the update was accepted and the
// conservation invariant broke at once (ledgers counted in the new denom).
func TestAttackDenomChangeStrandsRewards(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	esc := w.create(t, 100_000)
	_, m := w.honest(t, esc, 3)
	_, err := w.settle(w.gw, m)
	require.NoError(t, err)
	require.Positive(t, w.member(t, 1, w.hosts[0]).Earned+w.member(t, 1, w.hosts[1]).Earned+w.member(t, 1, w.hosts[2]).Earned)
	open := w.create(t, 5_000)

	change := func() error {
		p, err := w.k.Params.Get(w.ctx)
		require.NoError(t, err)
		p.MinCollateral = sdk.NewInt64Coin("uother", 100)
		_, err = w.srv.UpdateParams(w.ctx, &types.MsgUpdateParams{Authority: authority, Params: p})
		return err
	}
	err = change()
	require.ErrorIs(t, err, types.ErrInvalidParams)
	require.ErrorContains(t, err, "min_collateral's denom cannot change from ushard to uother while the module owes")
	p, err := w.k.Params.Get(w.ctx)
	require.NoError(t, err)
	require.Equal(t, denom, p.MinCollateral.Denom, "the params are unchanged")
	w.conserved(t)

	// The open escrow expires, the ledgers are accounted, claimed and swept:
	// nothing but collateral is owed, and the change goes through.
	w.advanceTo(t, 14)
	for _, h := range w.hosts {
		_, _ = w.srv.ClaimRewards(w.ctx, &types.MsgClaimRewards{Participant: h.String(), EpochId: 1})
	}
	require.Equal(t, types.EscrowExpired, mustEscrow(t, w, open.Id).Status)
	require.NoError(t, change())
	w.conserved(t)

	// Escrows now lock the new denom, and are paid in it.
	w.bank.balances[w.gw.String()] = w.bank.balances[w.gw.String()].Add(sdk.NewInt64Coin("uother", 50_000))
	esc2 := w.create(t, 20_000)
	require.Equal(t, "uother", esc2.Denom)
	_, m2 := w.honest(t, esc2, 2)
	_, err = w.settle(w.gw, m2)
	require.NoError(t, err)
	w.conserved(t)
}

// approve sets the chain's approved runtime versions, oldest first.
func approve(names ...string) func(*types.Params) {
	return func(p *types.Params) {
		p.ApprovedVersions = nil
		for _, n := range names {
			p.ApprovedVersions = append(p.ApprovedVersions, types.ApprovedVersion{
				Name: n, Url: "https://example.org/" + n, Sha256: strings.Repeat("ab", 32)})
		}
	}
}

// An escrow is served by the runtime it names, so the chain takes only a
// name that hosts run: an approved one, or none while none is approved.
func TestCreateEscrowChecksTheRuntimeVersion(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		approved []string
		version  string
		refusal  string // empty: accepted
	}{
		{"approved newest", []string{"v1", "v2"}, "v2", ""},
		{"approved older", []string{"v1", "v2"}, "v1", ""},
		{"no list, no name", nil, "", ""},
		{"unapproved name", []string{"v1", "v2"}, "v3", `runtime version "v3" is not approved; the chain approves v1, v2 (newest last)`},
		{"no name while versions are approved", []string{"v1"}, "", "an escrow needs a runtime_version: the chain approves v1 (newest last)"},
		{"a name while none is approved", nil, "v1", `runtime version "v1" is not approved: the chain approves no runtime version`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, approve(c.approved...))
			before := w.bal(w.gw)
			res, err := w.srv.CreateEscrow(w.ctx, &types.MsgCreateEscrow{Creator: w.gw.String(), Amount: 1000, RuntimeVersion: c.version})
			if c.refusal != "" {
				require.ErrorIs(t, err, types.ErrUnapprovedVersion)
				require.ErrorContains(t, err, c.refusal)
				require.Equal(t, before, w.bal(w.gw), "nothing was locked")
				return
			}
			require.NoError(t, err)
			esc, err := w.k.Escrow(w.ctx, res.EscrowId)
			require.NoError(t, err)
			require.Equal(t, c.version, esc.Snapshot.RuntimeVersion)
		})
	}
}

// The snapshot keeps the name the escrow was created under when
// governance later retires that version.
func TestRuntimeVersionSurvivesAParamsChange(t *testing.T) {
	t.Parallel()
	w := newWorld(t, approve("v1"))
	res, err := w.srv.CreateEscrow(w.ctx, &types.MsgCreateEscrow{Creator: w.gw.String(), Amount: 1000, RuntimeVersion: "v1"})
	require.NoError(t, err)
	p, err := w.k.Params.Get(w.ctx)
	require.NoError(t, err)
	approve("v2")(&p)
	require.NoError(t, w.k.Params.Set(w.ctx, p))
	esc, err := w.k.Escrow(w.ctx, res.EscrowId)
	require.NoError(t, err)
	require.Equal(t, "v1", esc.Snapshot.RuntimeVersion)
	_, err = w.srv.CreateEscrow(w.ctx, &types.MsgCreateEscrow{Creator: w.gw.String(), Amount: 1000, RuntimeVersion: "v1"})
	require.ErrorIs(t, err, types.ErrUnapprovedVersion)
}
