package main

import (
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"

	chaincmd "github.com/devshard/devshard/chain/cmd"
	"github.com/devshard/devshard/session"
)

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "devshard",
		Short: "devshard: the payment and work layer of a decentralized inference network",
		Long: `devshard runs every role of the network from one binary:

  chain     the chain node: init, start, keys, tx, query, genesis; 'chain dev' starts a local chain in one command
  bench     measure speed targets (protocol, store, scheduler) and print ratios
  version   print the build and protocol version

Run 'devshard <command> --help' for the flags of each command.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(chaincmd.NewCommand(), newVersionCommand(), newBenchCommand())
	return root
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the build and session protocol version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			version := "(devel)"
			if info, ok := debug.ReadBuildInfo(); ok && info.Main.Version != "" {
				version = info.Main.Version
			}
			fmt.Fprintf(cmd.OutOrStdout(), "devshard %s, session protocol v%d\n", version, session.ProtocolVersion)
			return nil
		},
	}
}
