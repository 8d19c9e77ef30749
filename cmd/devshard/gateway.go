package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
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
	"github.com/devshard/devshard/gateway"
	"github.com/devshard/devshard/internal/settings"
	"github.com/devshard/devshard/keys"
)

// gatewayConfig is the gateway daemon's configuration: the DaemonConfig it
// opens, and the files its key and the apps' keys are read from.
type gatewayConfig struct {
	daemon      gateway.DaemonConfig
	keyFile     string
	apiKeysFile string
	apiKeys     []string // id:key pairs, from the environment only
	log         settings.Log
}

// gatewaySettings declares every setting of the gateway, bound to c's
// fields and written with their defaults, in the order --help and
// docs/gateway.md show them.
func gatewaySettings(c *gatewayConfig) *settings.Schema {
	s := settings.New("gateway")
	d, g := &c.daemon, &c.daemon.Gateway
	s.String(&d.Home, "home", "~/.devshard/gateway", "holds state.db, the key file and the API keys file")
	s.String(&d.Listen, "listen", "127.0.0.1:8080", "address the API binds")
	s.String(&d.ChainGRPC, "chain.grpc", "127.0.0.1:9090", "gRPC of the chain's nodes, host:port, comma-separated: escrows, participants, balances, txs; the first that answers is used, and the next once it stops").FormerFlag("chain.grpc")
	s.String(&d.ChainRPC, "chain.rpc", "http://127.0.0.1:26657", "CometBFT RPC of the chain's nodes (http://host:port), comma-separated, asked in turn: the chain id when chain.id is empty").FormerFlag("chain.rpc")
	s.String(&d.ChainID, "chain.id", "", "chain id the gateway signs txs, and its requests to hosts, for (default: asked of the node)").FormerFlag("chain.id")
	s.Duration(&g.ChainStallAfter, "chain.stall_after", 30*time.Second, "a chain whose latest block is older than this is making no blocks: readiness fails, and a request that needs a new escrow gets 503 at once; requests on open escrows are still served")
	s.String(&c.keyFile, "key.file", "gateway.key", "key file (64 hex characters, mode 0600), relative to home; 'devshard gateway init' writes one")
	s.List(&c.apiKeys, "api_key", nil, "apps' keys as id:key, comma-separated; from the environment only, never a flag or the file").EnvOnly()
	s.String(&c.apiKeysFile, "api_keys_file", "api_keys", "file of '<id> <sha256 of the key, hex> [created]' lines (# comments), relative to home; read when it exists, and again whenever it changes ('devshard gateway keys')")
	s.List(&g.Models, "models", []string{executor.BuiltinModel}, "models apps may ask for; the hosts must serve them")
	s.Uint(&g.EscrowAmount, "escrow_amount", 10_000_000, "coins each new escrow locks")
	s.Int(&g.Lanes, "lanes", 1, "escrows taking requests at once; each sequences its requests alone, so more lanes serve more in parallel, at one creation fee per escrow")
	s.Int(&g.MaxTokens, "max_tokens", 4096, "largest max_tokens a request may ask")
	s.Int(&g.DefaultMaxTokens, "default_max_tokens", 256, "max_tokens of a request that names none; at most max_tokens")
	s.Int(&d.MaxInFlight, "max_in_flight", 256, "requests one API key may have open at once; more get 429")
	s.Int(&g.Attempts, "attempts", 3, "executors a request is tried on before it fails with 503")
	s.Duration(&g.HostTimeout, "host_timeout", 5*time.Second, "longest one call to a host for a diff or its pooled txs may take")
	s.Duration(&g.StallTimeout, "stall_timeout", 15*time.Second, "an inference stream silent this long is cut and retried on another host")
	s.Duration(&g.FlushEvery, "flush_every", time.Second, "how often idle escrows collect the hosts' pooled txs into a diff")
	s.Duration(&g.EpochPoll, "epoch_poll", 2*time.Second, "how often the chain is asked for a new epoch, whose start settles the previous epoch's escrows, and for its latest block")
	s.Duration(&g.HoldFor, "hold_for", 50*time.Millisecond, "longest a diff waits for a host that does not execute it, so that it goes out with later diffs in one delivery; negative sends every diff to every host at once")
	// The host's name for the same setting: one name across daemons.
	s.String(&d.Synchronous, "storage.synchronous", "FULL", "state.db durability: FULL fsyncs every commit, NORMAL survives a crash but not power loss").
		FormerFlag("synchronous").FormerEnv("DEVSHARD_GATEWAY_SYNCHRONOUS")
	settings.Logging(s, &c.log)
	return s
}

// check refuses values the gateway cannot run with, naming the setting.
// A zero here would otherwise be taken as "use the default" further in,
// and a negative count or period would stall the gateway.
func (c *gatewayConfig) check() error {
	g := &c.daemon.Gateway
	for _, n := range []struct {
		key string
		v   int
	}{{"lanes", g.Lanes}, {"max_tokens", g.MaxTokens}, {"default_max_tokens", g.DefaultMaxTokens}, {"max_in_flight", c.daemon.MaxInFlight}, {"attempts", g.Attempts}} {
		if n.v < 1 {
			return fmt.Errorf("%s must be 1 or more, got %d", n.key, n.v)
		}
	}
	if g.DefaultMaxTokens > g.MaxTokens {
		return fmt.Errorf("default_max_tokens (%d) must not exceed max_tokens (%d)", g.DefaultMaxTokens, g.MaxTokens)
	}
	if g.EscrowAmount == 0 {
		return errors.New("escrow_amount must be more than 0")
	}
	if _, _, err := net.SplitHostPort(c.daemon.Listen); err != nil {
		return fmt.Errorf("cannot listen on %q: %v; set --listen (DEVSHARD_GATEWAY_LISTEN) to a free host:port", c.daemon.Listen, err)
	}
	if _, err := chainclient.ParseGRPC(c.daemon.ChainGRPC); err != nil {
		return fmt.Errorf("chain.grpc: %v; set --chain-grpc (DEVSHARD_GATEWAY_CHAIN_GRPC) to the nodes' gRPC as host:port, comma-separated", err)
	}
	if _, err := chainclient.ParseRPC(c.daemon.ChainRPC); err != nil {
		return fmt.Errorf("chain.rpc: %v; set --chain-rpc (DEVSHARD_GATEWAY_CHAIN_RPC) to the nodes' CometBFT RPC as http://host:port, comma-separated", err)
	}
	// The host's rules for the same settings.
	if s := strings.ToUpper(c.daemon.Synchronous); s != "FULL" && s != "NORMAL" {
		return fmt.Errorf("storage.synchronous is %q: set --storage-synchronous (DEVSHARD_GATEWAY_STORAGE_SYNCHRONOUS) to FULL or NORMAL", c.daemon.Synchronous)
	}
	for _, p := range []struct {
		key string
		v   time.Duration
	}{{"host_timeout", g.HostTimeout}, {"stall_timeout", g.StallTimeout}, {"flush_every", g.FlushEvery}, {"epoch_poll", g.EpochPoll}, {"chain.stall_after", g.ChainStallAfter}} {
		if p.v <= 0 {
			return fmt.Errorf("%s must be a positive duration such as 5s, got %s", p.key, p.v)
		}
	}
	return nil
}

func newGatewayCommand() *cobra.Command {
	c := &gatewayConfig{}
	s := gatewaySettings(c)
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Run a gateway: the OpenAI-compatible API, paid from escrows on chain",
		Long: `gateway serves POST /v1/chat/completions (streamed or not), GET /v1/models
and GET /v1/usage to apps holding an API key. It pays for their requests from
escrows it locks on chain with its account, sequences each escrow's session
(nonces, signed diffs), streams the executor host's answer back, retries on
another host when one fails, and settles each escrow when it is spent, when
its epoch ends, and on shutdown.

Its state (escrows, their diffs until settled, pending settlements, usage)
is <home>/state.db; a restart resumes open sessions and settlements in
flight. API keys are managed with 'devshard gateway keys' while it runs.
Settings come from the TOML file (--config, or <home>/gateway.toml when it
exists), then DEVSHARD_GATEWAY_* variables, then the flags below:
storage.synchronous in the file is --storage-synchronous and
DEVSHARD_GATEWAY_STORAGE_SYNCHRONOUS. docs/gateway.md explains each one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := refuseKeyOnCommandLine(cmd); err != nil {
				return err
			}
			if err := s.Load(s.File(os.LookupEnv), os.LookupEnv, cmd.ErrOrStderr()); err != nil {
				return err
			}
			if err := c.check(); err != nil {
				return err
			}
			log, err := c.log.Logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runGateway(ctx, c, log)
		},
	}
	s.AddFlags(cmd.Flags())
	// Registered only to be refused (refuseKeyOnCommandLine): on the command
	// line a key is visible to every user of the machine (ps).
	cmd.Flags().StringSlice("api-key", nil, "never on the command line; set DEVSHARD_GATEWAY_API_KEY=id:key")
	_ = cmd.Flags().MarkHidden("api-key")
	cmd.AddCommand(newGatewayInitCommand(), newGatewayKeysCommand(), newGatewayStatusCommand())
	return cmd
}

func defaultHome(role string) string {
	h, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(".devshard", role)
	}
	return filepath.Join(h, ".devshard", role)
}

func resolve(home, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(home, p)
}

func runGateway(ctx context.Context, c *gatewayConfig, log *slog.Logger) error {
	d := c.daemon
	d.Home = settings.ExpandHome(d.Home)
	key, err := keys.LoadFile(resolve(d.Home, c.keyFile))
	if err != nil {
		return fmt.Errorf("%w (create one with 'devshard gateway init')", err)
	}
	apiKeys, err := loadAPIKeys(d.Home, c, log)
	if err != nil {
		return err
	}
	d.Key, d.Keys, d.Gateway.Keyring, d.Logger = key, apiKeys.Keys(), apiKeys, log
	daemon, err := gateway.Open(ctx, d)
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case err = <-daemon.Served():
		log.Error("http server stopped", "err", err)
	}
	log.Info("shutting down: settling open escrows (up to 60s)")
	closeCtx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return errors.Join(err, daemon.Close(closeCtx))
}

// refuseKeyOnCommandLine refuses --api-key given as an argument: every
// user of the machine sees a process's arguments.
func refuseKeyOnCommandLine(cmd *cobra.Command) error {
	if cmd.Flags().Changed("api-key") {
		return errors.New("--api-key is refused: a key on the command line is visible to every user of the machine (ps). " +
			"List the key's id and SHA-256 in the keys file (--api-keys-file; 'devshard gateway init' writes one), or set DEVSHARD_GATEWAY_API_KEY=id:key")
	}
	return nil
}

// loadAPIKeys gathers the apps' keys, hashed: id:key pairs from
// DEVSHARD_GATEWAY_API_KEY, and the keys file, relative to home, which the
// gateway follows as 'devshard gateway keys' changes it. Ids must be
// unique, since usage is accounted by id.
func loadAPIKeys(home string, c *gatewayConfig, log *slog.Logger) (*gateway.Keyring, error) {
	var env []gateway.APIKey
	for _, s := range c.apiKeys {
		id, secret, ok := strings.Cut(s, ":")
		if !ok {
			return nil, errors.New("DEVSHARD_GATEWAY_API_KEY: each key must be given as id:key")
		}
		k, err := gateway.HashAPIKey(id, secret)
		if err != nil {
			return nil, fmt.Errorf("DEVSHARD_GATEWAY_API_KEY: %w", err)
		}
		env = append(env, k)
	}
	return gateway.OpenKeyring(resolve(home, c.apiKeysFile), env, log)
}

// apiKeysHeader opens a keys file written by init.
const apiKeysHeader = `# API keys: one "<id> <sha256 of the key, hex> [created]" per line. The id
# names the key in usage, logs and metrics; the key itself is never stored.
# Add, list and revoke keys with 'devshard gateway keys'; a running gateway
# follows at once.
`

func newGatewayInitCommand() *cobra.Command {
	var home string
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Write a new gateway key and a first API key into the home directory",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := os.MkdirAll(home, 0o700); err != nil {
				return err
			}
			k, err := keys.WriteFile(filepath.Join(home, "gateway.key"), rand.Reader)
			if err != nil {
				return err
			}
			api, secret := gateway.NewAPIKey("app")
			api.Created = time.Now().UTC().Truncate(time.Second)
			path := filepath.Join(home, "api_keys")
			if err := os.WriteFile(path, []byte(apiKeysHeader+api.Line()+"\n"), 0o600); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "gateway account: %s (fund it before serving)\nAPI key for apps: %s (id %q; shown once: %s keeps only its hash)\n",
				sdk.AccAddress(k.Address().Bytes()), secret, api.ID, path)
			return nil
		},
	}
	cmd.Flags().StringVar(&home, "home", defaultHome("gateway"), "home directory")
	return cmd
}
