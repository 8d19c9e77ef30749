package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/internal/chainload"
)

// chainBench is one `bench chain` run.
type chainBench struct {
	binary      string
	validators  []int
	settlements int
	perTx       int
	groupSize   int
	gateways    int
	rounds      int
	blockTime   time.Duration
	idle        time.Duration
	epochLength int64
	invariants  bool
}

func newBenchChainCommand() *cobra.Command {
	// Each gateway sends its share in sequence order to one validator:
	// every validator of four gets two.
	b := chainBench{gateways: 8, idle: 15 * time.Second, epochLength: 30}
	cmd := &cobra.Command{
		Use:   "chain",
		Short: "Chain: blocks per second and escrow settlements per block, several validators against one",
		Long: `chain runs the chain as real validator processes on this machine
(chain/localnet, this binary as every node) once per --validators count and
measures, for each:

  - the idle block rate, over 15 s with no tx sent;
  - a settlement load: --settlements escrows are opened on --group-size
    groups the chain draws from as many hosts, a settlement of each is built
    offline (two finished inferences, signed by every slot) and signed by
    the escrow's gateway into txs of up to --per-tx settlements (as a
    gateway's chain client puts together the settlements due at once), and
    all are broadcast at once (sync mode, 8 gateways spread over the
    validators). From the blocks that included
    them: settlements per block, each block's interval (from the block
    before, as the first validator's app committed them), and its
    execution (from the validator deciding the block to its app having
    committed it). CometBFT waits the block time from deciding a block
    before it proposes the next, so a block whose execution fits within the
    block time keeps the chain's pace;
  - the validators' CPU time per settlement, beyond their idle use: what a
    validator with a core of its own would need, whatever this machine's
    cores.

Settlement txs carry a gas limit of 1.2 times the most a probe settlement
used, per settlement they hold: CometBFT fills a block by gas limits (the block's max gas is
chain.BlockMaxGas). The issue's target: a block of 1,000 settlements
executes within the block time with the most validators measured. Where
the fullest block held fewer, the time for 1,000 is extrapolated from the
execution per settlement (a '#' line says so); a second RATIO line judges
the same target by CPU time, for validators on a core each. Each validator
executes every tx and the validators share this machine's cores: the
figures are this machine's, with its load.

The validators run as an operator's do by default, checking no invariant
(--inv-check-period 0); --check-invariants makes them check the books every
block, as the devnet and the tests do, at a cost that grows with the number
of escrows on chain.

Each round starts fresh networks in a temporary directory; figures are the
medians over --rounds. Linux only (CPU times come from /proc).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if b.rounds < 1 || b.settlements < 1 || b.perTx < 1 || b.groupSize < 1 || len(b.validators) == 0 {
				return fmt.Errorf("--rounds, --settlements, --per-tx, --group-size and --validators must be positive")
			}
			for _, v := range b.validators {
				if v < 1 {
					return fmt.Errorf("--validators %v: every count must be at least 1", b.validators)
				}
			}
			bin, err := os.Executable()
			if err != nil {
				return fmt.Errorf("finding this devshard binary for the validators to run: %w", err)
			}
			b.binary = bin
			return benchChain(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), b)
		},
	}
	cmd.Flags().IntSliceVar(&b.validators, "validators", []int{1, 4}, "validator counts to measure, each a network of its own; RATIO lines compare the last with the first")
	cmd.Flags().IntVar(&b.settlements, "settlements", 1500, "settlements broadcast at once (a block's gas holds about 1,000 16-slot settlement txs)")
	cmd.Flags().IntVar(&b.perTx, "per-tx", chainclient.MaxSettlementsPerTx, "the most settlements a tx holds (1: a tx each, as a gateway sends a lone settlement)")
	cmd.Flags().IntVar(&b.groupSize, "group-size", 16, "slots of every escrow's group, drawn from as many hosts")
	cmd.Flags().IntVar(&b.rounds, "rounds", 1, "measure everything this many times, interleaved, and keep the medians (a round takes minutes)")
	cmd.Flags().DurationVar(&b.blockTime, "block-time", time.Second, "the networks' block time")
	cmd.Flags().BoolVar(&b.invariants, "check-invariants", false, "the validators check the chain's invariants every block (--inv-check-period 1), as test networks do")
	return cmd
}

func benchChain(ctx context.Context, out, progress io.Writer, b chainBench) error {
	if ctx == nil {
		ctx = context.Background()
	}
	figures := map[int]map[string][]float64{}
	fullest := map[int][]chainload.Block{}
	for r := range b.rounds {
		for _, v := range b.validators {
			fmt.Fprintf(progress, "round %d/%d: %d validators\n", r+1, b.rounds, v)
			res, err := chainRound(ctx, progress, b, v)
			if err != nil {
				return fmt.Errorf("%d validators: %w", v, err)
			}
			if res.Settled() < b.settlements {
				fmt.Fprintf(out, "# %dv round %d: %d of %d settled: %d refused at CheckTx (first: %q), %d never reached a block, %d failed in their block (first: %q)\n",
					v, r+1, res.Settled(), b.settlements, res.Rejected, res.FirstRefusal, res.Lost, res.Failed(), res.FirstFailure)
			}
			for _, blk := range res.Blocks {
				fmt.Fprintf(out, "# %dv round %d: block %d carried %d settlements (%d failed), %.3f s after the block before (header times: %.3f s), executed in %.3f s\n",
					v, r+1, blk.Height, blk.Settlements, blk.Failed, blk.Interval.Seconds(), blk.HeaderInterval.Seconds(), blk.Exec.Seconds())
			}
			if figures[v] == nil {
				figures[v] = map[string][]float64{}
			}
			for name, x := range chainFigures(res) {
				figures[v][name] = append(figures[v][name], x)
			}
			fullest[v] = append(fullest[v], res.Fullest())
		}
	}

	med := func(v int, name string) float64 {
		xs := slices.Clone(figures[v][name])
		slices.Sort(xs)
		return xs[len(xs)/2]
	}
	fmt.Fprintf(out, "# %d-slot settlements, %d broadcast at once by %d gateways in txs of up to %d; block time %s; block max gas %d; invariants checked every block: %t\n",
		b.groupSize, b.settlements, min(b.gateways, b.settlements), b.perTx, b.blockTime, chain.BlockMaxGas, b.invariants)
	fmt.Fprintln(out, "# interval: from the block before, as the first validator's app committed them; exec: from that validator deciding the block to its app having committed it")
	fmt.Fprintln(out, "# cpu_per_settlement: CPU time (user+system) one validator process spent per settlement beyond its idle use, whatever the machine's cores; cpu_1000_settlements is 1,000 of them, what a validator on a core of its own needs per block of 1,000")
	for _, v := range b.validators {
		p := fmt.Sprintf("chain_%dv_", v)
		fmt.Fprintf(out, "BENCH %sidle_blocks_per_second %.3f blocks/s\n", p, med(v, "idle_blocks_per_second"))
		fmt.Fprintf(out, "BENCH %sidle_exec %.1f ms\n", p, med(v, "idle_exec_ms"))
		fmt.Fprintf(out, "BENCH %sload_blocks_per_second %.3f blocks/s\n", p, med(v, "load_blocks_per_second"))
		fmt.Fprintf(out, "BENCH %ssettlements_per_second %.1f settlements/s\n", p, med(v, "settlements_per_second"))
		// The three figures of one block: the rounds' fullest blocks, the
		// median by size.
		full := slices.Clone(fullest[v])
		slices.SortFunc(full, func(a, b chainload.Block) int { return a.Settlements - b.Settlements })
		at := full[len(full)/2]
		fmt.Fprintf(out, "BENCH %smax_settlements_per_block %d settlements\n", p, at.Settlements)
		fmt.Fprintf(out, "BENCH %sinterval_at_max %.3f s\n", p, at.Interval.Seconds())
		fmt.Fprintf(out, "BENCH %sexec_at_max %.3f s\n", p, at.Exec.Seconds())
		fmt.Fprintf(out, "BENCH %sexec_per_settlement %.3f ms\n", p, med(v, "exec_per_settlement_ms"))
		if med(v, "max_settlements_per_block") < 1000 {
			fmt.Fprintf(out, "# %sexec_1000_settlements is extrapolated: the fullest block held fewer\n", p)
		}
		fmt.Fprintf(out, "BENCH %sexec_1000_settlements %.3f s\n", p, med(v, "exec_1000"))
		fmt.Fprintf(out, "BENCH %scpu_per_settlement %.3f ms\n", p, med(v, "cpu_per_settlement_ms"))
		fmt.Fprintf(out, "BENCH %scpu_1000_settlements %.3f s\n", p, 1000*med(v, "cpu_per_settlement_ms")/1e3)
		fmt.Fprintf(out, "BENCH %sgas_per_settlement %.0f gas\n", p, med(v, "gas_used"))
		fmt.Fprintf(out, "# %sgas_limit_per_settlement: a block's max gas holds %d settlements by such limits\n", p, chain.BlockMaxGas/int64(med(v, "gas_limit")))
		fmt.Fprintf(out, "BENCH %sgas_limit_per_settlement %.0f gas\n", p, med(v, "gas_limit"))
	}
	first, last := b.validators[0], b.validators[len(b.validators)-1]
	if first != last {
		vs := fmt.Sprintf("%dv/%dv", last, first)
		for _, name := range []string{"idle_blocks_per_second", "load_blocks_per_second", "max_settlements_per_block", "settlements_per_second", "exec_per_settlement_ms", "cpu_per_settlement_ms"} {
			report(out, name+"_"+vs, med(last, name)/med(first, name))
		}
	}
	ratio(out, fmt.Sprintf("exec_1000_settlements_%dv/block_time", last), med(last, "exec_1000")/b.blockTime.Seconds(), "<=", 1)
	// The same target for validators that each had a core of their own.
	ratio(out, fmt.Sprintf("cpu_1000_settlements_per_core_%dv/block_time", last), med(last, "cpu_per_settlement_ms")/b.blockTime.Seconds(), "<=", 1)
	return nil
}

// chainRound runs one network of v validators in a temporary directory.
func chainRound(ctx context.Context, progress io.Writer, b chainBench, v int) (*chainload.Result, error) {
	home, err := os.MkdirTemp("", "devshard-bench-chain-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(home)
	return chainload.Run(ctx, chainload.Config{
		Home: home, Binary: b.binary, Validators: v, BlockTime: b.blockTime, EpochLength: b.epochLength,
		GroupSize: b.groupSize, Hosts: b.groupSize, Gateways: b.gateways, Settlements: b.settlements, PerTx: b.perTx,
		Idle: b.idle, CheckInvariants: b.invariants,
		Progress: func(format string, args ...any) {
			fmt.Fprintf(progress, "  "+format+"\n", args...)
		},
	})
}

// chainFigures are one round's figures, by name.
func chainFigures(r *chainload.Result) map[string]float64 {
	return map[string]float64{
		"idle_blocks_per_second":    r.IdleBlocksPerSecond(),
		"idle_exec_ms":              float64(r.IdleExec) / 1e6,
		"load_blocks_per_second":    r.LoadBlocksPerSecond(),
		"settlements_per_second":    r.SettlementsPerSecond(),
		"max_settlements_per_block": float64(r.Fullest().Settlements),
		"exec_per_settlement_ms":    float64(r.PerSettlement()) / 1e6,
		"exec_1000":                 r.ExecOf(1000).Seconds(),
		"cpu_per_settlement_ms":     float64(r.CPUPerSettlement()) / 1e6,
		"gas_used":                  float64(r.GasUsed),
		"gas_limit":                 float64(r.GasLimit),
	}
}
