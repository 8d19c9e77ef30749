package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/spf13/cobra"

	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/host"
	"github.com/devshard/devshard/keys"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/store/boot"
	"github.com/devshard/devshard/store/managed"
)

func newHostCommand() *cobra.Command {
	var load func(environ func(string) (string, bool), warn io.Writer) (*host.FileConfig, error)
	cmd := &cobra.Command{
		Use:   "host",
		Short: "Run a host: serve sessions, execute and validate inference",
		Long:  hostLong,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := load(os.LookupEnv, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			log, err := cfg.Log.Logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runHost(ctx, cfg, log)
		},
	}
	load = host.ConfigFlags(cmd.Flags())
	cmd.AddCommand(newHostInitCommand(), newHostStatusCommand())
	return cmd
}

const hostLong = `host serves the sessions of every escrow whose group this account is in.
It binds its HTTP API first (health, version and metrics answer at once),
opens storage, recovers stored sessions in parallel, follows the chain's
epochs to prune old ones, and votes timeouts for stalled peers.

Settings come from the TOML file, then DEVSHARD_HOST_* variables, then the
flags below: storage.keep_epochs in the file is --storage-keep-epochs and
DEVSHARD_HOST_STORAGE_KEEP_EPOCHS. docs/host.md explains every setting and
the HTTP API. 'devshard host init' writes a config and a key to start from.`

func loadSigner(cfg *host.FileConfig) (signing.Signer, signing.Address, error) {
	var signer signing.Signer
	if cfg.Key.KeyringBackend != "" {
		dir := cfg.Key.KeyringDir
		if dir == "" {
			dir = cfg.Path("")
		}
		k, err := keys.OpenKeyring(cfg.Key.KeyringBackend, dir, cfg.Key.KeyName, os.Stdin)
		if err != nil {
			return nil, signing.Address{}, err
		}
		signer = k
	} else {
		k, err := keys.LoadFile(cfg.Path(cfg.Key.File))
		if err != nil {
			return nil, signing.Address{}, fmt.Errorf("%w (create one with 'devshard host init')", err)
		}
		signer = k
	}
	account := signer.PubKey().Address()
	if cfg.Key.Account != "" {
		a, err := parseAccount(cfg.Key.Account)
		if err != nil {
			return nil, signing.Address{}, fmt.Errorf("key.account %w", err)
		}
		account = a
	}
	return signer, account, nil
}

func parseAccount(s string) (signing.Address, error) {
	if a, err := sdk.AccAddressFromBech32(s); err == nil {
		return signing.AddressFromBytes(a)
	}
	a, err := sdk.AccAddressFromHexUnsafe(s)
	if err != nil {
		return signing.Address{}, fmt.Errorf("%q is neither a devshard1… address nor 40 hex characters", s)
	}
	return signing.AddressFromBytes(a)
}

func newExecutor(cfg *host.FileConfig) executor.Executor {
	if cfg.Executor.Kind == "openai" {
		return &executor.Upstream{BaseURL: cfg.Executor.URL, ModelNames: cfg.Executor.Models, APIKey: cfg.Executor.APIKey,
			Client: &http.Client{Timeout: 10 * time.Minute}}
	}
	return executor.Builtin{ThinkTime: cfg.Executor.ThinkTime}
}

// runHost runs the daemon until ctx ends: it dials the chain node, hands
// the daemon what the configuration names, and closes it on the signal.
func runHost(ctx context.Context, cfg *host.FileConfig, log *slog.Logger) error {
	signer, account, err := loadSigner(cfg)
	if err != nil {
		return err
	}
	// Only the account's own key sends txs (self-settlement, claims); a
	// warm or keyring key leaves the client read-only.
	key, canSend := host.AccountKey(signer, account)
	ccfg := chainclient.Config{GRPC: cfg.Chain.GRPC, RPC: cfg.Chain.RPC, Logger: log}
	if canSend {
		ccfg.Key = key
	}
	chainc, err := chainclient.Dial(ccfg)
	if err != nil {
		return fmt.Errorf("%v: set chain.grpc (--chain-grpc, DEVSHARD_HOST_CHAIN_GRPC) to the chain nodes' gRPC, host:port, comma-separated", err)
	}
	defer chainc.Close()
	var sender host.ChainSender
	if canSend {
		sender = chainc
	}
	jobsCfg, err := hostJobs(cfg)
	if err != nil {
		return err
	}
	d, err := host.Open(ctx, host.DaemonConfig{
		Listen: cfg.Listen, Key: signer, Account: account, Chain: chainc, ChainGRPC: cfg.Chain.GRPC, ChainRPC: cfg.Chain.RPC, ChainStallAfter: cfg.Chain.StallAfter,
		Sender: sender, Executor: newExecutor(cfg), Storage: hostStorage(cfg),
		SnapshotEvery: cfg.Storage.SnapshotEvery, RecoveryWorkers: cfg.Recovery.Workers, Version: buildVersion(), RuntimeVersion: cfg.RuntimeVersion, Logger: log,
		Jobs: jobsCfg,
	})
	if err != nil && ctx.Err() != nil {
		log.Info("shutting down before the host was ready", "err", err)
		return nil // a signal while the host waited for its chain
	}
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-d.Served():
		err = fmt.Errorf("http server: %w", err)
	}
	closeCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return errors.Join(err, d.Close(closeCtx))
}

// hostJobs is the job plane cfg names: the queue's timings, the worker
// accounts it accepts and the admin endpoint.
func hostJobs(cfg *host.FileConfig) (host.JobsConfig, error) {
	jc := host.JobsConfig{
		HeartbeatTimeout: cfg.Jobs.HeartbeatTimeout, MaxTry: cfg.Jobs.MaxTry, Lifetime: cfg.Jobs.Lifetime,
		AdminListen: cfg.Admin.Listen, AdminFile: cfg.Path(cfg.Admin.File), Inference: cfg.Jobs.Inference,
	}
	for _, w := range cfg.Jobs.Workers {
		a, err := parseAccount(w)
		if err != nil {
			return host.JobsConfig{}, fmt.Errorf("jobs.workers: %w", err)
		}
		jc.Workers = append(jc.Workers, a)
	}
	return jc, nil
}

// legacyDB is where a host from before the epoch layout kept its single
// database, relative to home; the first boot of a newer host migrates it.
const legacyDB = "host.db"

// hostStorage is the storage cfg names: the driver, the directory and its
// durability, epoch retention, and the legacy database to migrate.
func hostStorage(cfg *host.FileConfig) boot.Config {
	return boot.Config{
		Mode: boot.Mode(cfg.Storage.Driver), Dir: cfg.Path(cfg.Storage.Dir), Synchronous: cfg.Storage.Synchronous,
		Legacy:    cfg.Path(legacyDB),
		Retention: managed.Options{Keep: uint64(cfg.Storage.KeepEpochs), Interval: cfg.Storage.CatchUp},
	}
}

func newHostInitCommand() *cobra.Command {
	var home string
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Write a starting host.toml and a new key file into the home directory",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := host.DefaultConfig()
			if home != "" {
				cfg.Home = home
			}
			dir := cfg.Path("")
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			keyPath := cfg.Path(cfg.Key.File)
			k, err := keys.WriteFile(keyPath, rand.Reader)
			if err != nil {
				return err
			}
			confPath := filepath.Join(dir, "host.toml")
			conf := fmt.Sprintf("# devshard host configuration; docs/host.md explains every setting.\nlisten = %q\nhome = %q\n\n[key]\nfile = %q\n\n[chain]\nrpc = %q\ngrpc = %q\n\n[storage]\ndriver = %q\n\n[executor]\nkind = %q\n",
				cfg.Listen, dir, cfg.Key.File, cfg.Chain.RPC, cfg.Chain.GRPC, cfg.Storage.Driver, cfg.Executor.Kind)
			if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
				return err
			}
			addr := sdk.AccAddress(k.Address().Bytes())
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s and %s\nhost account: %s\nfund it, then register: devshard chain tx devshard register-participant <url> <collateral> --from …\n", confPath, keyPath, addr)
			return nil
		},
	}
	cmd.Flags().StringVar(&home, "home", "", "home directory (default ~/.devshard/host)")
	return cmd
}
