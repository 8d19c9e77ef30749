package cmd

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	sdkmath "cosmossdk.io/math"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/chain/node"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// devCommand starts a throwaway single-validator chain in this process.
func devCommand() *cobra.Command {
	var (
		dir         string
		accounts    int
		blockTime   time.Duration
		epochLength int64
	)
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Start a fresh single-validator local chain in one step",
		Long: `Start a fresh single-validator chain in this process: a new genesis, funded accounts
(printed with their mnemonics), about one block a second, RPC, gRPC and REST on
loopback ports. It runs until interrupted. Nothing is kept unless --dir is given.`,
		Args: cobra.NoArgs,
		// The node writes its own config; skip the root's --home setup.
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error { ensureContexts(cmd); return nil },
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			params := devshardtypes.DefaultParams()
			params.EpochLength = epochLength
			cfg := node.Config{Home: dir, BlockTime: blockTime, Params: &params}
			for i := range accounts {
				cfg.Accounts = append(cfg.Accounts, node.Account{
					Name:  fmt.Sprintf("dev%d", i),
					Coins: sdk.NewCoins(sdk.NewCoin(chain.Denom, sdkmath.NewInt(1_000_000_000_000))),
				})
			}
			if dir != "" {
				if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
					return fmt.Errorf("--dir %s is not empty; dev always starts a new chain, so give it an empty or new directory", dir)
				}
			}
			startCtx, cancel := context.WithTimeout(ctx, time.Minute)
			n, err := node.Start(startCtx, cfg)
			cancel()
			if err != nil {
				return err
			}
			defer n.Close()
			printDev(cmd, n)
			<-ctx.Done()
			fmt.Fprintln(cmd.OutOrStdout(), "stopping")
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "keep the chain's config and data here (default: a temporary directory, removed on exit)")
	cmd.Flags().IntVar(&accounts, "accounts", 3, "how many funded accounts to create")
	cmd.Flags().DurationVar(&blockTime, "block-time", time.Second, "target time between blocks")
	cmd.Flags().Int64Var(&epochLength, "epoch-length", 20, "epoch length in blocks")
	return cmd
}

func printDev(cmd *cobra.Command, n *node.Node) {
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "devshard chain %s is running (home %s)\n", n.ChainID, n.Home)
	fmt.Fprintf(out, "  rpc   %s\n  grpc  %s\n  api   %s\n\n", n.RPCAddress, n.GRPCAddress, n.APIAddress)
	fmt.Fprintln(out, "funded accounts (import one with: devshard chain keys add <name> --recover --keyring-backend test):")
	for _, a := range append([]node.Account{n.Validator}, n.Accounts...) {
		fmt.Fprintf(out, "  %-9s %s\n            %s\n", a.Name, a.Address, a.Mnemonic)
	}
	fmt.Fprintf(out, "\ntry: devshard chain query devshard current-epoch --node %s\n", n.RPCAddress)
}
