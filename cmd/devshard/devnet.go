package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/devshard/devshard/devnet"
	"github.com/devshard/devshard/executor"
)

func newDevnetCommand() *cobra.Command {
	var (
		home       string
		hosts      int
		validators int
		demo       int
		workers    int
		versiond   bool
		storage    = devnet.StorageSQLite
	)
	cmd := &cobra.Command{
		Use:   "devnet",
		Short: "Run a whole local network: chain, hosts and a gateway, on embedded defaults",
		Long: `devnet runs the whole network on this machine with embedded defaults:
a single-validator chain (500 ms blocks, 10 s epochs) in this process, three
hosts as 'devshard host' child processes, registered as participants with
the built-in model, and one funded gateway serving the OpenAI-compatible API.

It prints a line per step, then the endpoints and a curl command to try, and
writes <home>/devnet.json with every endpoint and the gateway's API key.
Ctrl-C shuts it down cleanly (the gateway settles its open escrows first);
running it again on the same --home resumes the same network.

--validators N runs the chain as N validator processes instead (each a
'devshard chain start' with its own home under <home>/chain, peers over
loopback, bonded at genesis); the hosts and the gateway spread over the
nodes and fail over to the others. See docs/chain.md.

--storage picks where the hosts keep their sessions: sqlite (each host's
home), postgres, or hybrid (Postgres with a SQLite fallback). For the last
two the devnet uses the cluster the PG* variables name if PGHOST is set,
and otherwise starts its own in <home>/postgres (initdb and pg_ctl must be
installed: apt-get install postgresql); each host gets its own database.

--workers N starts N 'devshard worker' processes beside each host, each with
a built-in executor child, and the hosts hand them their jobs: inferences
(streamed back piece by piece) and validations. See docs/workers.md.

The hosts run through 'devshard versiond' (docs/versiond.md) by default: the
devnet serves its own binary over HTTPS with a CA it makes, the chain's
genesis approves it as runtime version v1, and each host's versiond installs
it and runs the host as its child; the host's URL on chain is versiond's
address, and the gateway sends each escrow's requests to the route of the
version it was created under. Governance (voting period 3 s) then adds or
removes versions, and every versiond follows. Versiond hosts store in SQLite
and run their jobs themselves, so --workers and --storage postgres|hybrid
run the hosts directly (as does --versiond=false, and a home made so).
See docs/devnet.md and docs/upgrades.md.

--demo N sends N requests (every third one streamed), settles, waits for the
epoch to turn and the hosts to claim their rewards, prints a ledger read
back from the chain, and exits; with workers, it also prints how many jobs
each worker ran.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) (err error) {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			out := cmd.OutOrStdout()
			if !cmd.Flags().Changed("versiond") {
				var why string
				if versiond, why, err = defaultVersiond(home, storage, workers); err != nil {
					return err
				} else if why != "" {
					fmt.Fprintf(out, "devnet: the hosts run without versiond: %s\n", why)
				}
			}
			n, err := devnet.Start(ctx, devnet.Config{Home: home, Hosts: hosts, Validators: validators, Storage: storage, Workers: workers, Versiond: versiond, Supervise: true, Progress: out})
			if err != nil {
				return err
			}
			defer func() {
				fmt.Fprintln(out, "devnet: shutting down (settling open escrows)")
				closeCtx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				if err := n.Close(closeCtx); err != nil {
					fmt.Fprintln(cmd.ErrOrStderr(), "devnet: shutdown:", err)
				}
			}()
			printEndpoints(out, n)
			if demo > 0 {
				ledger, err := devnet.Demo(ctx, n, demo, out)
				if err != nil {
					return err
				}
				ledger.Print(out)
				return nil
			}
			fmt.Fprintln(out, "devnet: ready; Ctrl-C to stop")
			<-ctx.Done()
			return nil
		},
	}
	cmd.Flags().StringVar(&home, "home", "", "directory for the whole network (default ~/.devshard/devnet)")
	cmd.Flags().IntVar(&hosts, "hosts", 3, "number of hosts")
	cmd.Flags().IntVar(&validators, "validators", 1, "number of chain validators; more than 1 runs each as a child process (fixed for a home)")
	cmd.Flags().Var(&storage, "storage", "where the hosts keep their sessions: sqlite, postgres or hybrid (fixed for a home)")
	cmd.Flags().IntVar(&workers, "workers", 0, "worker processes per host, each with a built-in executor child; the hosts hand them their jobs (default none: jobs run in the hosts)")
	cmd.Flags().BoolVar(&versiond, "versiond", true, "run each host through 'devshard versiond', following the runtime versions the chain approves (this binary is v1, served over https); sqlite storage, no --workers (fixed for a home). Default: on, except with --workers, --storage postgres|hybrid or a home made without it")
	cmd.Flags().IntVar(&demo, "demo", 0, "send N requests, settle, wait for the claims, print a ledger and exit")
	return cmd
}

func printEndpoints(out io.Writer, n *devnet.Network) {
	i := n.Info
	fmt.Fprintf(out, "\nendpoints:\n  gateway  %s  (OpenAI-compatible; API key %s)\n  status   %s/status  (a page that refreshes itself; or: devshard gateway status --url %s)\n", i.Gateway.URL, i.Gateway.APIKey, i.Gateway.URL, i.Gateway.URL)
	for _, nd := range i.Nodes {
		role := "validator"
		if !nd.Validator {
			role = "full node"
		}
		fmt.Fprintf(out, "  chain    %s (%s)  rpc %s  grpc %s  rest %s  (chain id %s)\n", nd.Name, role, nd.RPC, nd.GRPC, nd.REST, i.ChainID)
	}
	if pg := i.Postgres; pg != nil {
		where := "the operator's cluster, from PGHOST"
		if pg.Own {
			where = "the devnet's own cluster, data " + pg.DataDir + ", log " + pg.Log
		}
		fmt.Fprintf(out, "  postgres %s  (%s; the hosts store in %s)\n", pg.Address, where, i.Storage)
	}
	for _, h := range i.Hosts {
		stores := ""
		if h.Database != "" {
			stores = ", database " + h.Database
		}
		fmt.Fprintf(out, "  %-8s %s  (account %s, log %s%s)\n", h.Name, h.URL, h.Account, h.Log, stores)
	}
	fmt.Fprintf(out, "\ntry it:\n  curl -s %s/v1/chat/completions -H 'Authorization: Bearer %s' -H 'Content-Type: application/json' \\\n    -d '{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],\"max_tokens\":32}'\n\n",
		i.Gateway.URL, i.Gateway.APIKey, executor.BuiltinModel)
}

// defaultVersiond is --versiond when it is not given: on, unless the
// other flags need hosts run directly or the home was made without it;
// why says which.
func defaultVersiond(home string, storage devnet.Storage, workers int) (on bool, why string, err error) {
	made, exists, err := devnet.HomeVersiond(home)
	switch {
	case err != nil:
		return false, "", err
	case exists:
		if !made {
			return false, "this home was made without it (a home keeps its mode)", nil
		}
		return true, "", nil
	case workers > 0:
		return false, "--workers hands jobs to worker processes, which versiond does not run", nil
	case storage != devnet.StorageSQLite && storage != "":
		return false, fmt.Sprintf("--storage %s is shared by the hosts, while each version behind versiond keeps its own SQLite store", storage), nil
	}
	return true, "", nil
}
