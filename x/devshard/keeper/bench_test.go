package keeper_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	storetypes "cosmossdk.io/store/types"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/x/devshard/types"
)

// countingMeter is an infinite gas meter that also counts store reads
// (each Get/Has and each iterator step) and writes (each Set).
type countingMeter struct {
	storetypes.GasMeter
	reads, writes int
}

func (m *countingMeter) ConsumeGas(amount storetypes.Gas, descriptor string) {
	switch descriptor {
	case storetypes.GasReadCostFlatDesc, storetypes.GasIterNextCostFlatDesc:
		m.reads++
	case storetypes.GasWriteCostFlatDesc:
		m.writes++
	}
	m.GasMeter.ConsumeGas(amount, descriptor)
}

// A settlement paid at once writes each host's ledger and the escrow, and
// no more: the hosts' participant records are rewritten only when a
// host's invalid streak or status moves, which an honest settlement leaves
// as they were. Reads stay at about one and a half per slot (the epoch and
// params are read once for the whole settlement, not per host).
func TestSettlementWritesOnlyWhatItMoves(t *testing.T) {
	t.Parallel()
	const size = 16
	w := benchWorld(t, size)
	esc, m, meter := meteredSettle(t, w)
	hosts := len(plan(t, esc, m).ByAddress())
	t.Logf("a %d-slot settlement paying %d hosts: %d writes, %d reads, %d gas", size, hosts, meter.writes, meter.reads, meter.GasConsumed())
	require.Greater(t, hosts, 1)
	// A ledger per host + the escrow; the test's bank is a fake outside the store.
	require.Equal(t, hosts+1, meter.writes, "writes of a settlement paying %d hosts", hosts)
	require.LessOrEqual(t, meter.reads, 2*hosts+6, "reads of a settlement paying %d hosts", hosts)
}

// settleCost settles one fresh escrow of a group of size slots, drawn from
// size hosts, and returns the gas and store reads MsgSettleEscrow used.
func settleCost(t testing.TB, w *world, size int) (gas uint64, reads int) {
	t.Helper()
	_, _, meter := meteredSettle(t, w)
	return meter.GasConsumed(), meter.reads
}

// meteredSettle settles one fresh escrow honestly (two inferences) and
// returns it, its settlement and the meter that counted MsgSettleEscrow.
func meteredSettle(t testing.TB, w *world) (types.Escrow, *sessionpb.Settlement, *countingMeter) {
	t.Helper()
	esc := w.create(t, 10_000)
	_, m := w.honest(t, esc, 2)
	meter := &countingMeter{GasMeter: storetypes.NewInfiniteGasMeter()}
	ctx := w.ctx
	w.ctx = ctx.WithGasMeter(meter)
	_, err := w.settle(w.gw, m)
	w.ctx = ctx
	require.NoError(t, err)
	return esc, m, meter
}

func benchWorld(t testing.TB, size int) *world {
	return newWorldN(t, size, func(p *types.Params) { p.GroupSize = uint32(size) })
}

// BenchmarkSettleEscrow reports MsgSettleEscrow's gas and store reads per
// slot for groups of 4, 16 and 64 slots, each drawn from as many hosts.
//
//	go test -run '^$' -bench BenchmarkSettleEscrow ./x/devshard/keeper/
func BenchmarkSettleEscrow(b *testing.B) {
	for _, size := range []int{4, 16, 64} {
		b.Run(fmt.Sprintf("slots=%d", size), func(b *testing.B) {
			w := benchWorld(b, size)
			var gas uint64
			var reads int
			for range b.N {
				b.StopTimer()
				w.bank.balances[w.gw.String()] = sdk.NewCoins(sdk.NewInt64Coin(denom, gatewayFunds))
				esc := w.create(b, 10_000)
				_, m := w.honest(b, esc, 2)
				meter := &countingMeter{GasMeter: storetypes.NewInfiniteGasMeter()}
				ctx := w.ctx
				w.ctx = ctx.WithGasMeter(meter)
				b.StartTimer()
				_, err := w.settle(w.gw, m)
				b.StopTimer()
				w.ctx = ctx
				require.NoError(b, err)
				gas += meter.GasConsumed()
				reads += meter.reads
				b.StartTimer()
			}
			b.ReportMetric(float64(gas)/float64(b.N), "gas/op")
			b.ReportMetric(float64(gas)/float64(b.N)/float64(size), "gas/slot")
			b.ReportMetric(float64(reads)/float64(b.N)/float64(size), "reads/slot")
		})
	}
}

// Settlement cost follows the group size, not more: per slot, gas and reads
// stay flat from 4 to 64 slots. Gas does not depend on machine load.
func TestSettleCostIsLinearInGroupSize(t *testing.T) {
	t.Parallel()
	perSlot := map[int]float64{}
	for _, size := range []int{4, 16, 64} {
		gas, reads := settleCost(t, benchWorld(t, size), size)
		perSlot[size] = float64(gas) / float64(size)
		t.Logf("group %d: %d gas (%.0f/slot), %d reads (%.1f/slot)", size, gas, perSlot[size], reads, float64(reads)/float64(size))
	}
	require.Less(t, perSlot[64], 1.5*perSlot[4], "gas per slot must not grow with the group")
	perTx := perSlot[16]*16 + txOverheadGas
	t.Logf("block gas limit %d holds %.0f 16-slot settlements", chain.BlockMaxGas, float64(chain.BlockMaxGas)/perTx)
	require.GreaterOrEqual(t, float64(chain.BlockMaxGas)/perTx, 1000.0, "a block must hold 1,000 16-slot settlements")
}

// txOverheadGas bounds what a 16-slot MsgSettleEscrow tx costs beyond its
// message: tx size at 10 gas per byte (about 2.2 kB), one signature, the
// account. On the in-process node such a tx used 118,410 gas in all.
const txOverheadGas = 40_000
