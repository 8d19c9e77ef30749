package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/devshard/devshard/host/hostbench"
	"github.com/devshard/devshard/internal/pgtest"
	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/boot"
	"github.com/devshard/devshard/store/postgres"
	"github.com/devshard/devshard/store/sqlite"
)

type benchHostOptions struct {
	rounds   int
	postgres bool
	startup  hostbench.StartupOptions
}

func newBenchHostCommand() *cobra.Command {
	var o benchHostOptions
	cmd := &cobra.Command{
		Use:   "host",
		Short: "Host daemon: diffs/s against pure apply (SQLite, optionally Postgres), startup over 1,000 stored sessions",
		Long: `host measures the host daemon (host/hostbench):

  - host apply: one escrow's first 1,000 steady-state diffs posted to an
    engine one by one (decode, protocol checks, the diff and a state
    signature stored durably, a snapshot every 500 nonces, signing), on a
    fresh SQLite store with synchronous=FULL, the default durability; with
    --postgres also on Postgres (a throwaway pgtest cluster with fsync and
    synchronous_commit on; needs the postgresql package). pure apply is
    session.Apply alone on the same diffs. The ratios compare time per diff.
  - startup: a daemon started in process over --sessions stored sessions of
    --nonces diffs with their snapshots (K = 500): the time to the first 200
    on /healthz, to storage open, and to every session recovered.

The stored state is built once (about 30 s for the default 1,000 x 1,000).
Only what recovery reads is signed per session; see hostbench.Startup for
the construction. Each figure is the median of --rounds interleaved runs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.rounds < 1 {
				return fmt.Errorf("--rounds must be at least 1, got %d", o.rounds)
			}
			if o.startup.Sessions < 1 || o.startup.Nonces < 1 {
				return fmt.Errorf("--sessions and --nonces must be at least 1, got %d and %d", o.startup.Sessions, o.startup.Nonces)
			}
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			return benchHost(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), o)
		},
	}
	cmd.Flags().IntVar(&o.rounds, "rounds", 3, "measure each figure this many times, interleaved, and keep the median")
	cmd.Flags().BoolVar(&o.postgres, "postgres", false, "also measure host apply on a throwaway Postgres cluster")
	cmd.Flags().IntVar(&o.startup.Sessions, "sessions", 1000, "stored sessions the startup recovers")
	cmd.Flags().IntVar(&o.startup.Nonces, "nonces", 1000, "diffs per stored session; not a multiple of 500 leaves a tail to replay after the snapshot")
	return cmd
}

func benchHost(ctx context.Context, out, progress io.Writer, o benchHostOptions) error {
	root, err := os.MkdirTemp("", "devshard-bench-host-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)

	fmt.Fprintln(progress, "host apply: signing 1,000 diffs...")
	w, err := hostbench.NewApplyWorkload()
	if err != nil {
		return err
	}
	var sqliteRate, pgRate, pureRate []float64
	rate := func(d time.Duration) float64 { return float64(w.Len()) / d.Seconds() }
	// applyRounds interleaves the figures so slow phases of a noisy machine
	// hit all alike. openPG is nil without --postgres.
	applyRounds := func(openPG func(round int) (store.Store, error)) error {
		// hostRate posts the workload to a host on the store open returns.
		hostRate := func(open func() (store.Store, error)) (float64, error) {
			st, err := open()
			if err != nil {
				return 0, err
			}
			defer st.Close()
			d, err := w.Host(ctx, st)
			return rate(d), err
		}
		for r := range o.rounds {
			fmt.Fprintf(progress, "host apply round %d/%d\n", r+1, o.rounds)
			v, err := hostRate(func() (store.Store, error) {
				return sqlite.Open(ctx, fmt.Sprintf("%s/apply-%d", root, r), sqlite.Options{Synchronous: "FULL"})
			})
			if err != nil {
				return err
			}
			sqliteRate = append(sqliteRate, v)
			if openPG != nil {
				v, err := hostRate(func() (store.Store, error) { return openPG(r) })
				if err != nil {
					return err
				}
				pgRate = append(pgRate, v)
			}
			d, err := w.Pure()
			if err != nil {
				return err
			}
			pureRate = append(pureRate, rate(d))
		}
		return nil
	}
	if o.postgres {
		// pgtest ties a cluster to a testing.TB and stops it at its cleanup,
		// so every Postgres round runs inside one benchmark function.
		fmt.Fprintln(progress, "starting a throwaway Postgres cluster...")
		var roundsErr error
		if err := withTB(func(tb testing.TB) {
			c := pgtest.Start(tb)
			c.Durable(tb)
			roundsErr = applyRounds(func(r int) (store.Store, error) {
				return postgres.Open(ctx, postgres.Config{DSN: c.CreateDatabase(tb, fmt.Sprintf("bench%d", r))})
			})
		}); err != nil {
			return fmt.Errorf("Postgres setup failed: starting a pgtest cluster needs initdb and pg_ctl (apt-get install postgresql): %w", err)
		}
		if roundsErr != nil {
			return roundsErr
		}
	} else if err := applyRounds(nil); err != nil {
		return err
	}

	fmt.Fprintf(progress, "startup: storing %d sessions of %d nonces...\n", o.startup.Sessions, o.startup.Nonces)
	dir := root + "/startup"
	build, err := sqlite.Open(ctx, dir, sqlite.Options{Synchronous: "NORMAL"})
	if err != nil {
		return err
	}
	step := max(1, o.startup.Sessions/10)
	s, err := hostbench.BuildStartup(ctx, build, o.startup, func(done int) {
		if done%step == 0 {
			fmt.Fprintf(progress, "  %d/%d sessions stored\n", done, o.startup.Sessions)
		}
	})
	if cerr := build.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	var listening, ready, recovered []time.Duration
	for r := range o.rounds {
		fmt.Fprintf(progress, "startup round %d/%d\n", r+1, o.rounds)
		t, err := s.Run(ctx, func(ctx context.Context) (store.Store, error) {
			// As the daemon opens it, with the default driver and durability.
			return boot.Open(ctx, boot.Config{Mode: boot.SQLite, Dir: dir, Getenv: func(string) string { return "" }})
		})
		if err != nil {
			return fmt.Errorf("startup round %d: %w", r+1, err)
		}
		listening = append(listening, t.Listening)
		ready = append(ready, t.StorageReady)
		recovered = append(recovered, t.Recovered)
	}

	med := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	ms := func(v []time.Duration) float64 { return float64(medianOf(v).Microseconds()) / 1e3 }
	sq, pure := med(sqliteRate), med(pureRate)
	fmt.Fprintf(out, "# host apply: %d diffs of one escrow posted one by one to a fresh store; ratios are time per diff, host over pure apply\n", w.Len())
	fmt.Fprintf(out, "BENCH host_apply_sqlite_full %.0f diffs/s\n", sq)
	if o.postgres {
		fmt.Fprintf(out, "BENCH host_apply_postgres %.0f diffs/s\n", med(pgRate))
	}
	fmt.Fprintf(out, "BENCH pure_apply %.0f diffs/s\n", pure)
	report(out, "host_apply_sqlite/pure_apply", pure/sq)
	if o.postgres {
		report(out, "host_apply_postgres/pure_apply", pure/med(pgRate))
	}
	fmt.Fprintf(out, "# startup: %s; recovery starts at each session's snapshot at nonce %d and replays %d diffs\n",
		s.Options(), s.SnapshotNonce(), s.Tail())
	fmt.Fprintf(out, "BENCH startup_listening %.2f ms\n", ms(listening))
	fmt.Fprintf(out, "BENCH startup_storage_ready %.2f ms\n", ms(ready))
	fmt.Fprintf(out, "BENCH startup_recovered %.1f ms\n", ms(recovered))
	return nil
}

// report prints a ratio that no target constrains: the speed targets ask
// for it to be measured and recorded, not to meet a bound.
func report(out io.Writer, name string, v float64) {
	fmt.Fprintf(out, "RATIO %s %.3f (target none)\n", name, v)
}
