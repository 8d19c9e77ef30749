package keeper_test

import (
	"math/rand"
	"testing"

	"github.com/stretchr/testify/require"

	sdkmath "cosmossdk.io/math"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/x/devshard/types"
)

// totalSupply sums every balance the in-memory bank holds.
func (b *bundle) totalSupply() sdkmath.Int {
	total := sdkmath.ZeroInt()
	for _, c := range b.bank.balances {
		total = total.Add(c.AmountOf(denom))
	}
	return total
}

// Random sequences of escrow creation, honest and forged settlements,
// expiry, epoch turns, punishments and claims keep the module account equal
// to what it owes after every step, and never create or strand a coin: when
// the activity stops and every escrow has expired or settled and every
// epoch closed, the module holds only collateral.
func TestPropertyConservation(t *testing.T) {
	t.Parallel()
	for seed := int64(1); seed <= 12; seed++ {
		t.Run("", func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewSource(seed))
			w := newWorld(t, func(p *types.Params) {
				p.GroupSize = uint32(1 + rng.Intn(5))
				p.ExpiryEpochs = uint32(2 + rng.Intn(4))
				p.ExpiryBatch = uint32(1 + rng.Intn(3))
				p.MaxMissedRatioBps = uint32(rng.Intn(10_001))
			})
			supply := w.totalSupply()
			var (
				open    []types.Escrow
				settled int
			)
			step := func() {
				switch op := rng.Intn(10); {
				case op < 3: // create
					res, err := w.srv.CreateEscrow(w.ctx, &types.MsgCreateEscrow{Creator: w.gw.String(), Amount: uint64(1_000 + rng.Intn(50_000))})
					if err == nil {
						open = append(open, mustEscrow(t, w, res.EscrowId))
					}
				case op < 5 && len(open) > 0: // honest settle, by the creator or a member
					i := rng.Intn(len(open))
					_, m := w.honest(t, open[i], rng.Intn(4))
					sender := w.gw
					if rng.Intn(3) == 0 {
						sender = sdk.AccAddress(open[i].Snapshot.Group[0])
					}
					if _, err := w.settle(sender, m); err == nil {
						settled++
					}
					open = append(open[:i], open[i+1:]...)
				case op < 6 && len(open) > 0: // forged: refused, nothing moves
					f := w.fixture(t, open[rng.Intn(len(open))])
					m := f.Settle(run(t, f, 1+rng.Intn(3)), f.AllSlots()...)
					switch rng.Intn(3) {
					case 0:
						m.Fees++
						m.Balance--
					case 1:
						m.HostStats[0].Cost += 1_000_000
						m = f.Resign(m, f.AllSlots()...)
					default:
						m.Signatures = m.Signatures[:1]
						m.Signatures = append(m.Signatures, m.Signatures[0], m.Signatures[0])
						if len(f.Holders) == 1 {
							m.Fees++
						}
					}
					before := w.bal(moduleAddr())
					_, err := w.settle(w.gw, m)
					require.Error(t, err)
					require.Equal(t, before, w.bal(moduleAddr()))
				case op < 7: // punish a host in the current epoch
					if cur, err := w.k.CurrentEpoch.Get(w.ctx); err == nil {
						_ = w.k.RecordStats(w.ctx, cur, w.hosts[rng.Intn(3)], types.InferenceStats{Missed: uint64(rng.Intn(3)), Finished: uint64(rng.Intn(3))})
					}
				case op < 8: // claim
					_, _ = w.srv.ClaimRewards(w.ctx, &types.MsgClaimRewards{Participant: w.hosts[rng.Intn(3)].String(), EpochId: uint64(1 + rng.Intn(6))})
				default: // blocks pass
					w.advanceTo(t, w.ctx.BlockHeight()+int64(1+rng.Intn(3)))
				}
				w.conserved(t)
				require.Equal(t, supply, w.totalSupply())
			}
			for range 120 {
				step()
			}
			require.Positive(t, settled, "some honest settlements went through")
			// Activity stops: everything expires, settles into summaries,
			// is claimed or swept.
			w.advanceTo(t, w.ctx.BlockHeight()+80)
			w.conserved(t)
			require.Equal(t, supply, w.totalSupply())
			_, owed, err := w.k.Conservation(w.ctx)
			require.NoError(t, err)
			require.Empty(t, owed.OpenEscrows)
			require.Empty(t, owed.Unclaimed)
			require.Equal(t, w.bal(moduleAddr()), uint64(600), "only collateral is left: %+v", owed)
		})
	}
}
