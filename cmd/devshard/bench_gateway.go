package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/devshard/devshard/devnet"
	"github.com/devshard/devshard/gateway"
	"github.com/devshard/devshard/signing"
)

func newBenchGatewayCommand() *cobra.Command {
	var (
		rounds, requests, workers, lanes int
		duration                         time.Duration
		synchronous, cpuProfile          string
	)
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Gateway: added latency over the built-in model, and throughput with three hosts",
		Long: `gateway starts a devnet in a temporary directory (a chain, three host
processes, a gateway; the built-in model at zero think time; SQLite FULL on
hosts and gateway unless --synchronous says otherwise) and measures:

  - latency of one non-streamed request at a time through the gateway, and
    of the same requests to the built-in model served directly over HTTP;
    the difference at p50 and p99 is the latency the gateway adds (targets:
    2 ms and 10 ms);
  - sustained throughput of --workers closed-loop clients for --duration
    (target: 300 requests/s).

Each figure is measured --rounds times, interleaved, and the median kept.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if rounds < 1 || requests < 10 || workers < 1 {
				return fmt.Errorf("--rounds must be at least 1, --requests at least 10 and --workers at least 1")
			}
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			return benchGateway(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), rounds, requests, workers, lanes, duration, synchronous)
		},
	}
	cmd.Flags().IntVar(&rounds, "rounds", 3, "measure each figure this many times, interleaved, and keep the median")
	cmd.Flags().IntVar(&requests, "requests", 300, "sequential requests per latency measurement")
	cmd.Flags().IntVar(&workers, "workers", 32, "concurrent clients for the throughput measurement")
	cmd.Flags().IntVar(&lanes, "lanes", 4, "escrows the gateway sequences in parallel")
	cmd.Flags().DurationVar(&duration, "duration", 10*time.Second, "length of each throughput measurement")
	cmd.Flags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of this process (chain, gateway, clients; not the host processes) to this file")
	cmd.Flags().StringVar(&synchronous, "synchronous", "FULL", "SQLite durability of hosts and gateway: FULL or NORMAL")
	return cmd
}

func benchGateway(ctx context.Context, out, progress io.Writer, rounds, requests, workers, lanes int, duration time.Duration, synchronous string) error {
	home, err := os.MkdirTemp("", "devshard-bench-gateway-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(home)
	p := devnet.Params()
	// One epoch for the whole run, so nothing settles in the middle: a
	// generous estimate of the run (20 ms a request is slow here), at the
	// devnet's 500 ms blocks. Longer epochs would only delay the start,
	// which waits for the hosts to become effective in the next epoch.
	run := 30*time.Second + time.Duration(rounds)*(duration+time.Duration(2*requests)*20*time.Millisecond)
	p.EpochLength = int64(run / (500 * time.Millisecond))
	p.ValidationRateBps = 500
	fmt.Fprintln(progress, "starting a devnet (chain, 3 hosts, gateway)...")
	nw, err := devnet.Start(ctx, devnet.Config{Home: home, Params: &p, Synchronous: synchronous, EscrowAmount: 100_000_000, Lanes: lanes, Progress: progress})
	if err != nil {
		return err
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		_ = nw.Close(closeCtx)
	}()
	direct, err := devnet.StartDirectModel()
	if err != nil {
		return err
	}
	defer direct.Close()
	gw := devnet.NewClient(nw.Info.Gateway.URL, nw.Info.Gateway.APIKey)
	model := devnet.NewClient(direct.URL, "")
	// Warm up: the first request opens the escrow.
	if _, err := devnet.MeasureLatency(ctx, gw, 20); err != nil {
		return err
	}

	var gwP50, gwP99, dP50, dP99, rps []float64
	phases := map[string][]float64{} // mean ms per attempt, per round
	metrics := nw.Gateway.Gateway.Metrics()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	for r := range rounds {
		fmt.Fprintf(progress, "round %d/%d\n", r+1, rounds)
		d, err := devnet.MeasureLatency(ctx, model, requests)
		if err != nil {
			return err
		}
		n0, s0, err := metrics.PhaseTotals()
		if err != nil {
			return err
		}
		g, err := devnet.MeasureLatency(ctx, gw, requests)
		if err != nil {
			return err
		}
		n1, s1, err := metrics.PhaseTotals()
		if err != nil {
			return err
		}
		for _, ph := range gatewayPhases {
			if n := n1[ph] - n0[ph]; n > 0 {
				phases[ph] = append(phases[ph], ms((s1[ph]-s0[ph])/time.Duration(n)))
			}
		}
		dP50, dP99 = append(dP50, ms(d.Quantile(0.5))), append(dP99, ms(d.Quantile(0.99)))
		gwP50, gwP99 = append(gwP50, ms(g.Quantile(0.5))), append(gwP99, ms(g.Quantile(0.99)))
		t, err := devnet.MeasureThroughput(ctx, gw, workers, duration)
		if err != nil {
			return err
		}
		rps = append(rps, t)
	}
	med := func(v []float64) float64 {
		s := slices.Clone(v)
		slices.Sort(s)
		return s[len(s)/2]
	}
	verdict := func(ok bool) string {
		if ok {
			return "MEETS"
		}
		return "MISSES"
	}
	fmt.Fprintf(out, "# durability: SQLite synchronous=%s on the hosts and the gateway; %d lanes, %d workers\n", synchronous, lanes, workers)
	fmt.Fprintf(out, "# secp256k1: %s\n", signing.Backend)
	fmt.Fprintf(out, "BENCH direct_model_p50 %.3f ms\nBENCH direct_model_p99 %.3f ms\n", med(dP50), med(dP99))
	fmt.Fprintf(out, "BENCH gateway_p50 %.3f ms\nBENCH gateway_p99 %.3f ms\n", med(gwP50), med(gwP99))
	for _, ph := range gatewayPhases {
		if len(phases[ph]) > 0 {
			fmt.Fprintf(out, "BENCH gateway_phase_%s_mean %.3f ms\n", ph, med(phases[ph]))
		}
	}
	fmt.Fprintf(out, "BENCH gateway_throughput_%dworkers %.1f requests/s\n", workers, med(rps))
	added50, added99 := med(gwP50)-med(dP50), med(gwP99)-med(dP99)
	fmt.Fprintf(out, "RATIO added_latency_p50 %.3f (target <= 2.000 ms) %s\n", added50, verdict(added50 <= 2))
	fmt.Fprintf(out, "RATIO added_latency_p99 %.3f (target <= 10.000 ms) %s\n", added99, verdict(added99 <= 10))
	fmt.Fprintf(out, "RATIO throughput %.1f (target >= 300 requests/s) %s\n", med(rps), verdict(med(rps) >= 300))
	return nil
}

// gatewayPhases are the phases of a completion the bench breaks the
// gateway's latency into (devshard_gateway_request_phase_seconds).
var gatewayPhases = []string{gateway.PhaseSequence, gateway.PhaseStore, gateway.PhaseExecutor, gateway.PhaseStream}
