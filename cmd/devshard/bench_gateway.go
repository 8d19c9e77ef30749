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
    (target: 300 requests/s);
  - the same latency and throughput through a plain reverse proxy in front
    of the same model (net/http/httputil: no protocol, no chain), the
    baseline: the gateway's added latency is printed beside the proxy's,
    with the difference and the ratio, per round and over the run. The
    absolute figures move with the machine; the ratio to the proxy, measured
    in the same run, is what compares across machines.

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
	run := 30*time.Second + time.Duration(rounds)*(2*duration+time.Duration(3*requests)*20*time.Millisecond)
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
	proxied, err := devnet.StartProxy(direct.URL)
	if err != nil {
		return err
	}
	defer proxied.Close()
	gw := devnet.NewClient(nw.Info.Gateway.URL, nw.Info.Gateway.APIKey)
	model := devnet.NewClient(direct.URL, "")
	proxy := devnet.NewClient(proxied.URL, "")
	// Warm up: the gateway's first request opens the escrow; the proxy's
	// first ones open its connections to the model.
	for _, c := range []*devnet.Client{gw, proxy} {
		if _, err := devnet.MeasureLatency(ctx, c, 20); err != nil {
			return err
		}
	}

	var gwP50, gwP99, dP50, dP99, pxP50, pxP99, rps, pxRPS []float64
	phases := map[string][]float64{} // mean ms per attempt, per round
	metrics := nw.Gateway.Gateway.Metrics()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	for r := range rounds {
		fmt.Fprintf(progress, "round %d/%d\n", r+1, rounds)
		d, err := devnet.MeasureLatency(ctx, model, requests)
		if err != nil {
			return err
		}
		px, err := devnet.MeasureLatency(ctx, proxy, requests)
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
		pxP50, pxP99 = append(pxP50, ms(px.Quantile(0.5))), append(pxP99, ms(px.Quantile(0.99)))
		t, err := devnet.MeasureThroughput(ctx, gw, workers, duration)
		if err != nil {
			return err
		}
		rps = append(rps, t)
		t, err = devnet.MeasureThroughput(ctx, proxy, workers, duration)
		if err != nil {
			return err
		}
		pxRPS = append(pxRPS, t)
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

	fmt.Fprintln(out, "# baseline: the same model behind a plain reverse proxy (net/http/httputil), same requests and workers;")
	fmt.Fprintln(out, "# added latency is over the direct model, difference is the gateway's minus the proxy's, ratio is the gateway's over the proxy's")
	for r := range rounds {
		label := fmt.Sprintf("ROUND %d/%d", r+1, rounds)
		fmt.Fprintln(out, label, versusProxy{gateway: gwP50[r] - dP50[r], proxy: pxP50[r] - dP50[r]}.line("added_latency_p50"))
		fmt.Fprintln(out, label, versusProxy{gateway: gwP99[r] - dP99[r], proxy: pxP99[r] - dP99[r]}.line("added_latency_p99"))
		fmt.Fprintln(out, label, throughputVersusProxy(rps[r], pxRPS[r]))
	}
	fmt.Fprintf(out, "BENCH proxy_p50 %.3f ms\nBENCH proxy_p99 %.3f ms\n", med(pxP50), med(pxP99))
	fmt.Fprintf(out, "BENCH proxy_throughput_%dworkers %.1f requests/s\n", workers, med(pxRPS))
	// Over the run: the medians, taken as for the RATIO lines above, so
	// the gateway's figure here is the one they judge.
	p50 := versusProxy{gateway: added50, proxy: med(pxP50) - med(dP50)}
	p99 := versusProxy{gateway: added99, proxy: med(pxP99) - med(dP99)}
	fmt.Fprintln(out, "VERSUS_PROXY", p50.line("added_latency_p50"))
	fmt.Fprintln(out, "VERSUS_PROXY", p99.line("added_latency_p99"))
	fmt.Fprintln(out, "VERSUS_PROXY", throughputVersusProxy(med(rps), med(pxRPS)))
	return nil
}

// versusProxy is the latency the gateway adds to a request over the direct
// model, beside the latency a plain reverse proxy adds to the same requests
// in the same run. The difference is what the protocol costs beyond one HTTP
// hop; the ratio reads the same on a fast machine and a slow one.
type versusProxy struct {
	gateway, proxy float64 // ms added over the direct model
}

// line renders the comparison of figure. A proxy that added nothing
// measurable (the clock's resolution, or noise) has no ratio.
func (v versusProxy) line(figure string) string {
	ratio := "n/a (the proxy added nothing measurable)"
	if v.proxy > 0 {
		ratio = fmt.Sprintf("%.2f", v.gateway/v.proxy)
	}
	return fmt.Sprintf("%s gateway %.3f ms proxy %.3f ms difference %.3f ms ratio %s",
		figure, v.gateway, v.proxy, v.gateway-v.proxy, ratio)
}

// throughputVersusProxy renders the gateway's throughput beside the proxy's,
// with the gateway's as a fraction of the proxy's.
func throughputVersusProxy(gateway, proxy float64) string {
	ratio := "n/a (the proxy completed nothing)"
	if proxy > 0 {
		ratio = fmt.Sprintf("%.3f", gateway/proxy)
	}
	return fmt.Sprintf("throughput gateway %.1f requests/s proxy %.1f requests/s ratio %s", gateway, proxy, ratio)
}

// gatewayPhases are the phases of a completion the bench breaks the
// gateway's latency into (devshard_gateway_request_phase_seconds).
var gatewayPhases = []string{gateway.PhaseSequence, gateway.PhaseStore, gateway.PhaseExecutor, gateway.PhaseStream}
