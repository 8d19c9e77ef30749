package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/spf13/cobra"

	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/host"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/internal/settings"
	"github.com/devshard/devshard/keys"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/store/boot"
	"github.com/devshard/devshard/store/managed"
)

func newHostCommand() *cobra.Command {
	var load func(environ func(string) (string, bool), warn io.Writer) (*host.FileConfig, error)
	var proxy, confDir string
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
			if proxy != "" || confDir != "" {
				return runProxy(ctx, cfg, proxy, confDir, log)
			}
			return runHost(ctx, cfg, log)
		},
	}
	load = host.ConfigFlags(cmd.Flags())
	cmd.Flags().StringVar(&proxy, "proxy", "", "run as the proxy host of the primary host at this URL: validate for it, with no storage (docs/workers.md); needs --conf-dir")
	cmd.Flags().StringVar(&confDir, "conf-dir", "", "with --proxy: the primary's config directory, whose host.toml is read (never written) for the chain's nodes and the primary's account")
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
the HTTP API. 'devshard host init' writes a config and a key to start from.

With --proxy <primary URL> --conf-dir <primary's config dir> it runs a proxy
host instead: a validation node with no storage that follows the primary's
sessions and votes for it with a warm key (docs/workers.md).`

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
		Jobs: jobsCfg, ProxyValidation: cfg.Validation.Proxy,
	})
	if err != nil && ctx.Err() != nil {
		log.Info("shutting down before the host was ready", "err", err)
		return nil // a signal while the host waited for its chain
	}
	if err != nil {
		return err
	}
	return serveUntilDone(ctx, d, log)
}

// runProxy runs a proxy host until ctx ends. Its own settings (cfg) give
// its key, listen address, executor and workers; the primary's host.toml
// in confDir, read only, gives the chain's nodes and the primary's account
// (key.account, or else the account the primary's /version reports).
func runProxy(ctx context.Context, cfg *host.FileConfig, primaryURL, confDir string, log *slog.Logger) error {
	if primaryURL == "" || confDir == "" {
		return errors.New("--proxy and --conf-dir go together: --proxy <primary host URL> --conf-dir <the primary's config directory, holding its host.toml>")
	}
	noEnv := func(string) (string, bool) { return "", false }
	primary, err := host.LoadConfig(filepath.Join(settings.ExpandHome(confDir), "host.toml"), noEnv, nil)
	if err != nil {
		return fmt.Errorf("read the primary's configuration in --conf-dir %s: %w", confDir, err)
	}
	account, err := primaryAccount(ctx, primary, primaryURL)
	if err != nil {
		return err
	}
	signer, _, err := loadSigner(cfg)
	if err != nil {
		return err
	}
	chainc, err := chainclient.Dial(chainclient.Config{GRPC: primary.Chain.GRPC, RPC: primary.Chain.RPC, Logger: log})
	if err != nil {
		return fmt.Errorf("%v: the proxy reads the chain's nodes from the primary's chain.grpc in %s", err, confDir)
	}
	defer chainc.Close()
	jobsCfg, err := hostJobs(cfg)
	if err != nil {
		return err
	}
	d, err := host.OpenProxy(ctx, host.ProxyConfig{
		Listen: cfg.Listen, Primary: primaryURL, Account: account, Key: signer, Chain: chainc,
		ChainGRPC: primary.Chain.GRPC, ChainRPC: primary.Chain.RPC, Executor: newExecutor(cfg), Workers: jobsCfg.Workers,
		Version: buildVersion(), Logger: log,
	})
	if err != nil && ctx.Err() != nil {
		log.Info("shutting down before the proxy host was ready", "err", err)
		return nil
	}
	if err != nil {
		return err
	}
	return serveUntilDone(ctx, d, log)
}

// primaryAccount is the account the primary serves as: its key.account,
// or else what its /version says.
func primaryAccount(ctx context.Context, primary *host.FileConfig, url string) (signing.Address, error) {
	if primary.Key.Account != "" {
		a, err := parseAccount(primary.Key.Account)
		if err != nil {
			return signing.Address{}, fmt.Errorf("the primary's key.account %w", err)
		}
		return a, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(url, "/")+hostapi.Version.Path, nil)
	if err != nil {
		return signing.Address{}, fmt.Errorf("--proxy %q is not a URL: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return signing.Address{}, fmt.Errorf("ask the primary at %s its account (%v): start the primary first, or set key.account in its host.toml", url, err)
	}
	defer resp.Body.Close()
	var v hostapi.VersionResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&v); err != nil || resp.StatusCode != http.StatusOK {
		return signing.Address{}, fmt.Errorf("the primary at %s answered GET /version with status %d, not its account: is it a devshard host?", url, resp.StatusCode)
	}
	return parseAccount(v.Address)
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

// daemon is a host or proxy daemon once open.
type daemon interface {
	Served() <-chan error
	Close(ctx context.Context) error
}

// serveUntilDone waits until ctx ends or d's server fails, then closes d
// (bounded at 10 s).
func serveUntilDone(ctx context.Context, d daemon, log *slog.Logger) error {
	var err error
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
