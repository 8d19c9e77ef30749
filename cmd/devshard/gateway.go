package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/devshard/devshard/gateway"
	"github.com/devshard/devshard/keys"
)

// gatewayFlags are the gateway's settings; each also reads DEVSHARD_GATEWAY_<NAME>.
type gatewayFlags struct {
	home, listen, grpc, rpc, chainID, keyFile, apiKeysFile, synchronous string
	apiKeys, models                                                     []string
	escrowAmount                                                        uint64
	maxTokens, maxInFlight                                              int
	stall, holdFor                                                      time.Duration
}

func newGatewayCommand() *cobra.Command {
	var f gatewayFlags
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Run a gateway: the OpenAI-compatible API, paid from escrows on chain",
		Long: `gateway serves POST /v1/chat/completions (streamed or not), GET /v1/models
and GET /v1/usage to apps holding an API key. It pays for their requests from
escrows it locks on chain with its account, sequences each escrow's session
(nonces, signed diffs), streams the executor host's answer back, retries on
another host when one fails, and settles each escrow when it is spent, when
its epoch ends, and on shutdown.

Its state (escrows, every diff, pending settlements, usage) is
<home>/state.db; a restart resumes open sessions and settlements in flight.
Every flag can also be set as DEVSHARD_GATEWAY_<FLAG> (upper case, dashes
and dots as underscores). docs/gateway.md explains each one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := refuseKeyOnCommandLine(cmd); err != nil {
				return err
			}
			if err := applyEnv(cmd, "DEVSHARD_GATEWAY_"); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runGateway(ctx, f, slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil)))
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.home, "home", defaultHome("gateway"), "directory for state.db and the key file")
	fl.StringVar(&f.listen, "listen", "127.0.0.1:8080", "address the API binds")
	fl.StringVar(&f.grpc, "chain.grpc", "127.0.0.1:9090", "gRPC of a chain node")
	fl.StringVar(&f.rpc, "chain.rpc", "http://127.0.0.1:26657", "CometBFT RPC of a chain node")
	fl.StringVar(&f.chainID, "chain.id", "", "chain id to sign for (default: asked of the node)")
	fl.StringVar(&f.keyFile, "key-file", "gateway.key", "key file (64 hex characters, mode 0600), relative to --home; 'devshard gateway init' writes one")
	// Read from DEVSHARD_GATEWAY_API_KEY only: on the command line a key is
	// visible to every user of the machine (ps).
	fl.StringSliceVar(&f.apiKeys, "api-key", nil, "set DEVSHARD_GATEWAY_API_KEY=id:key (comma-separated for several); never on the command line")
	_ = fl.MarkHidden("api-key")
	fl.StringVar(&f.apiKeysFile, "api-keys-file", "api_keys", "file of API keys, one '<id> <sha256 of the key, hex>' per line, relative to --home; read when it exists")
	fl.StringSliceVar(&f.models, "models", nil, "models apps may ask for (default: the built-in model)")
	fl.Uint64Var(&f.escrowAmount, "escrow-amount", 10_000_000, "coins each new escrow locks")
	fl.IntVar(&f.maxTokens, "max-tokens", 4096, "largest max_tokens a request may ask")
	fl.IntVar(&f.maxInFlight, "max-in-flight", 256, "requests one API key may have open at once; more get 429")
	fl.DurationVar(&f.stall, "stall-timeout", 15*time.Second, "an inference stream silent this long is retried on another host")
	fl.DurationVar(&f.holdFor, "hold-for", 50*time.Millisecond, "longest a diff waits for a host that does not execute it, to go out with later ones in one delivery; negative sends each at once")
	fl.StringVar(&f.synchronous, "synchronous", "FULL", "state.db durability: FULL (fsync every commit) or NORMAL")
	cmd.AddCommand(newGatewayInitCommand())
	return cmd
}

func defaultHome(role string) string {
	h, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(".devshard", role)
	}
	return filepath.Join(h, ".devshard", role)
}

// applyEnv sets every flag not given on the command line from its
// environment variable, if set.
func applyEnv(cmd *cobra.Command, prefix string) error {
	var errs []error
	cmd.Flags().VisitAll(func(fl *pflag.Flag) {
		if fl.Changed || fl.Name == "help" {
			return
		}
		name := prefix + strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(fl.Name))
		if v, ok := os.LookupEnv(name); ok {
			if err := cmd.Flags().Set(fl.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
		}
	})
	return errors.Join(errs...)
}

func resolve(home, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(home, p)
}

func runGateway(ctx context.Context, f gatewayFlags, log *slog.Logger) error {
	key, err := keys.LoadFile(resolve(f.home, f.keyFile))
	if err != nil {
		return fmt.Errorf("%w (create one with 'devshard gateway init')", err)
	}
	apiKeys, err := loadAPIKeys(f)
	if err != nil {
		return err
	}
	d, err := gateway.Open(ctx, gateway.DaemonConfig{
		Listen: f.listen, Home: f.home, ChainGRPC: f.grpc, ChainRPC: f.rpc, ChainID: f.chainID,
		Key: key, Keys: apiKeys, Synchronous: f.synchronous, MaxInFlight: f.maxInFlight, Logger: log,
		Gateway: gateway.Config{EscrowAmount: f.escrowAmount, Models: f.models, MaxTokens: f.maxTokens, StallTimeout: f.stall, HoldFor: f.holdFor},
	})
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case err = <-d.Served():
		log.Error("http server stopped", "err", err)
	}
	log.Info("shutting down: settling open escrows (up to 60s)")
	closeCtx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return errors.Join(err, d.Close(closeCtx))
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
// DEVSHARD_GATEWAY_API_KEY, and the keys file. Ids must be unique, since
// usage is accounted by id.
func loadAPIKeys(f gatewayFlags) ([]gateway.APIKey, error) {
	var out []gateway.APIKey
	for _, s := range f.apiKeys {
		id, secret, ok := strings.Cut(s, ":")
		if !ok {
			return nil, errors.New("DEVSHARD_GATEWAY_API_KEY: each key must be given as id:key")
		}
		k, err := gateway.HashAPIKey(id, secret)
		if err != nil {
			return nil, fmt.Errorf("DEVSHARD_GATEWAY_API_KEY: %w", err)
		}
		out = append(out, k)
	}
	fileKeys, err := readAPIKeys(resolve(f.home, f.apiKeysFile))
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, k := range append(out, fileKeys...) {
		if seen[k.ID] {
			return nil, fmt.Errorf("the API key id %q is given twice (environment and keys file); each key needs its own id", k.ID)
		}
		seen[k.ID] = true
	}
	return append(out, fileKeys...), nil
}

// readAPIKeys reads a keys file (gateway.ParseAPIKeys); a missing file is
// no keys.
func readAPIKeys(path string) ([]gateway.APIKey, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	keys, err := gateway.ParseAPIKeys(string(raw))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, nil
}

// apiKeysHeader opens a keys file written by init.
const apiKeysHeader = `# API keys: one "<id> <sha256 of the key, hex>" per line. The id names the
# key in usage, logs and metrics; the key itself is never stored. Add one with
#   printf %s "$KEY" | sha256sum
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
