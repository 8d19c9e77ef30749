package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/internal/httpserve"
	"github.com/devshard/devshard/signing"
)

// DaemonConfig is a whole gateway process: where it listens, which chain
// it pays on, its key, its API keys and its limits.
type DaemonConfig struct {
	// Listen is the API's address (default 127.0.0.1:8080).
	Listen string
	// Home holds state.db.
	Home string
	// ChainGRPC and ChainRPC name the chain's nodes, each a comma-separated
	// list tried in order (chainclient.Config); ChainID is asked of them
	// when empty.
	ChainGRPC, ChainRPC, ChainID string
	Key                          *signing.PrivKey
	// Keys are the apps' API keys, hashed.
	Keys []APIKey
	// Synchronous is the state file's SQLite durability (default FULL).
	Synchronous string
	// MaxInFlight per API key (default 256).
	MaxInFlight int
	// Gateway carries the rest (amount, models, limits, timeouts); its Key,
	// ChainID, Chain, State, Auth, Logger and Metrics are filled in here.
	Gateway Config
	Logger  *slog.Logger
}

// Daemon is a running gateway with its HTTP server.
type Daemon struct {
	Gateway *Gateway
	ln      net.Listener
	srv     *http.Server
	state   *State
	chainc  *chainclient.Client
	served  chan error
}

// Open starts a gateway: it binds the listener, opens the state file,
// resumes stored sessions and serves the API.
//
// Every error it returns is one sentence that names the cause and the
// setting that fixes it; what it took is released first.
func Open(ctx context.Context, cfg DaemonConfig) (_ *Daemon, err error) {
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:8080"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Key == nil {
		return nil, errors.New("gateway: a signing key is required")
	}
	if len(cfg.Keys) == 0 {
		return nil, errors.New("gateway: at least one API key is required: list its id and SHA-256 in the keys file (--api-keys-file), or set DEVSHARD_GATEWAY_API_KEY=id:key")
	}
	switch strings.ToUpper(cfg.Synchronous) {
	case "", "FULL", "NORMAL":
	default:
		return nil, fmt.Errorf("storage.synchronous is %q: set --storage-synchronous (DEVSHARD_GATEWAY_STORAGE_SYNCHRONOUS) to FULL or NORMAL", cfg.Synchronous)
	}
	// d is not the named result: a failed Open returns nil, and the
	// deferred release must still see what was taken.
	d := &Daemon{served: make(chan error, 1)}
	defer func() {
		if err != nil {
			d.release()
		}
	}()
	if d.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("cannot listen on %q (%v): set --listen (DEVSHARD_GATEWAY_LISTEN) to a free host:port such as 127.0.0.1:8080", cfg.Listen, err)
	}
	if d.state, err = OpenState(filepath.Join(cfg.Home, "state.db"), cfg.Synchronous); err != nil {
		return nil, err
	}
	if d.chainc, err = chainclient.Dial(chainclient.Config{GRPC: cfg.ChainGRPC, RPC: cfg.ChainRPC, Logger: cfg.Logger, Key: cfg.Key, ChainID: cfg.ChainID}); err != nil {
		return nil, fmt.Errorf("%v: set --chain-grpc (DEVSHARD_GATEWAY_CHAIN_GRPC) to the chain nodes' gRPC, host:port, comma-separated, and --chain-rpc (DEVSHARD_GATEWAY_CHAIN_RPC) to their CometBFT RPC, http://host:port, comma-separated", err)
	}
	if cfg.ChainID == "" {
		if cfg.ChainID, err = d.chainc.ChainID(ctx); err != nil {
			return nil, fmt.Errorf("the chain is unreachable at %s (%v): start a chain node there, or set --chain-rpc (DEVSHARD_GATEWAY_CHAIN_RPC) to a running node's RPC, or --chain-id to skip asking", cfg.ChainRPC, err)
		}
	}
	gc := cfg.Gateway
	gc.Key, gc.State, gc.Logger, gc.ChainID = cfg.Key, d.state, cfg.Logger, cfg.ChainID
	gc.Chain = d.chainc
	gc.Auth = d.chainc.Authorizer()
	d.Gateway = New(gc)
	if err = d.Gateway.Start(ctx); err != nil {
		if status.Code(err) == codes.Unavailable {
			return nil, fmt.Errorf("the chain is unreachable at %s (%v): start a chain node there, or set --chain-grpc (DEVSHARD_GATEWAY_CHAIN_GRPC) to a running node's gRPC host:port", cfg.ChainGRPC, err)
		}
		return nil, err
	}
	d.srv = httpserve.Server(Handler(d.Gateway, APIConfig{Keys: cfg.Keys, MaxInFlight: cfg.MaxInFlight}))
	go func() { d.served <- d.srv.Serve(d.ln) }()
	cfg.Logger.Info("gateway listening", "addr", d.ln.Addr().String(), "account", d.chainc.Address(cfg.Key.Address()))
	return d, nil
}

// Addr is the API's bound address.
func (d *Daemon) Addr() string { return d.ln.Addr().String() }

// URL is the API's base URL.
func (d *Daemon) URL() string { return "http://" + d.Addr() }

// Served reports the HTTP server's end.
func (d *Daemon) Served() <-chan error { return d.served }

// Close stops serving, settles every open escrow within ctx, and closes the
// state file. What is not settled by then resumes at the next Open.
func (d *Daemon) Close(ctx context.Context) error {
	shut, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := d.srv.Shutdown(shut)
	if cerr := d.Gateway.Close(ctx); cerr != nil {
		err = errors.Join(err, cerr)
	}
	d.release()
	return err
}

// Halt stops serving and every background loop at once, settling nothing:
// what a crash leaves behind, short of the process exiting. The next Open
// on the same home resumes the sessions and any settlement in flight.
func (d *Daemon) Halt() {
	_ = d.srv.Close()
	d.Gateway.halt()
	d.release()
}

func (d *Daemon) release() {
	if d.ln != nil {
		d.ln.Close()
	}
	if d.chainc != nil {
		d.chainc.Close()
	}
	if d.state != nil {
		d.state.Close()
	}
}
