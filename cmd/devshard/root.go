package main

import (
	"fmt"

	"github.com/spf13/cobra"

	chaincmd "github.com/devshard/devshard/chain/cmd"
	"github.com/devshard/devshard/internal/buildinfo"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/signing"
)

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "devshard",
		Short: "devshard: the payment and work layer of a decentralized inference network",
		Long: `devshard runs every role of the network from one binary:

  devnet    run a whole local network (chain, hosts, gateway) in one command
  gateway   run a gateway: the OpenAI-compatible API, paid from escrows
  chain     the chain node: init, start, keys, tx, query, genesis; 'chain dev' starts a local chain in one command
  host      run a host: serve sessions, execute and validate inference
  jobs      list, reset and remove a running host's jobs (its admin endpoint)
  worker    pull a host's jobs and run them on executor child processes
  executor  serve an executor (builtin, or an OpenAI-compatible server) to a worker over NDJSON
  versiond  run every approved runtime version side by side, routed at /devshard/<name>/
  bench     measure speed targets (protocol, store, scheduler, host, gateway) and print ratios
  version   print the build and protocol version

Run 'devshard <command> --help' for the flags of each command.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newDevnetCommand(), newGatewayCommand(), chaincmd.NewCommand(), newHostCommand(), newJobsCommand(),
		newWorkerCommand(), newExecutorCommand(), newVersiondCommand(), newVersionCommand(), newBenchCommand())
	return root
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the build (version, commit) and session protocol version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			in := buildinfo.Read()
			fmt.Fprintf(cmd.OutOrStdout(), "devshard %s, session protocol v%d\n%s\nsecp256k1: %s\n", in.Version, session.ProtocolVersion, in.Describe(), signing.Backend)
			return nil
		},
	}
}

// buildVersion is the build's version, as the host reports it.
func buildVersion() string { return buildinfo.Read().Version }
