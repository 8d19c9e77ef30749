package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/internal/httpserve"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/store/boot"
)

// DaemonConfig is a whole host process: where it listens, the chain it
// serves on, its key, its storage and its model.
type DaemonConfig struct {
	// Listen is the HTTP API's address (default 127.0.0.1:8081).
	Listen string
	// Key signs the host's txs, state signatures and requests to peers.
	Key signing.Signer
	// Account is the participant the host serves as when Key is a warm key
	// it granted; zero means Key's own account.
	Account signing.Address
	// Chain is read for escrows, epochs, grants and the peers' URLs.
	Chain Chain
	// Sender sends the account's reward claims and the settlements of
	// escrows the gateway left open; it must sign with the account's own
	// key (AccountKey). Nil, as with a warm or keyring key, claims and
	// settles nothing.
	Sender   ChainSender
	Executor executor.Executor
	// Storage opens the store. Retention.Current defaults to the chain's
	// current epoch, so a host that missed an epoch change still prunes,
	// and Retention.OnError to a warning in the log.
	Storage boot.Config
	// SnapshotEvery is the engine's K (Config.SnapshotEvery).
	SnapshotEvery uint64
	// RecoveryWorkers recover stored sessions in parallel at startup.
	RecoveryWorkers int
	// Version is what GET /version reports.
	Version string
	Logger  *slog.Logger
}

// Daemon is a running host: its HTTP API, its storage, and the loops that
// recover stored sessions, follow the chain's epochs, tick the sessions,
// claim the account's rewards and settle what the gateway left open.
type Daemon struct {
	Engine *Engine
	ln     net.Listener
	srv    *http.Server
	st     *boot.Opened
	served chan error
	stop   context.CancelFunc // ends the loops
	loops  sync.WaitGroup
}

// Open starts a host in the order its readiness depends on: it binds the
// listener first, so health answers while storage opens; then it opens
// storage, asks the node its chain id (signed requests name it), opens the
// session routes, and starts recovering stored sessions, following epochs
// and ticking in the background until Close.
func Open(ctx context.Context, cfg DaemonConfig) (_ *Daemon, err error) {
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:8081"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	switch {
	case cfg.Key == nil:
		return nil, errors.New("host: a signing key is required")
	case cfg.Chain == nil:
		return nil, errors.New("host: a chain to read is required")
	case cfg.Executor == nil:
		return nil, errors.New("host: an executor is required")
	}
	log := cfg.Logger
	account := cfg.Account
	if account == (signing.Address{}) {
		account = cfg.Key.PubKey().Address()
	}
	d := &Daemon{served: make(chan error, 1), stop: func() {}}
	defer func() {
		if err != nil {
			d.release()
		}
	}()
	if d.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	peers := newChainPeers(cfg.Chain)
	d.Engine = New(Config{Key: cfg.Key, Account: account, Escrows: chainEscrows{cfg.Chain}, Executor: cfg.Executor,
		Auth: cfg.Chain.Authorizer(), SnapshotEvery: cfg.SnapshotEvery, Peers: peers, Logger: log, Metrics: NewMetrics()})
	d.srv = httpserve.Server(Handler(d.Engine, cfg.Version))
	go func() { d.served <- d.srv.Serve(d.ln) }()
	log.Info("host listening", "addr", d.Addr(), "account", cfg.Chain.Address(account))

	storage := cfg.Storage
	if storage.Retention.Current == nil {
		storage.Retention.Current = cfg.Chain.CurrentEpoch
	}
	if storage.Retention.OnError == nil {
		storage.Retention.OnError = func(err error) { log.Warn("storage retention", "err", err) }
	}
	if d.st, err = boot.Open(ctx, storage); err != nil {
		return nil, fmt.Errorf("open storage: %w", err)
	}
	d.Engine.SetStore(d.st)
	chainID, err := cfg.Chain.ChainID(ctx)
	if err != nil {
		return nil, fmt.Errorf("ask the chain node its chain id: %w", err)
	}
	d.Engine.SetChainID(chainID)
	d.Engine.MarkReady()
	log.Info("storage ready", "mode", d.st.Mode)

	// The loops outlive Open's ctx: they end at Close.
	run, stop := context.WithCancel(context.WithoutCancel(ctx))
	d.stop = stop
	d.spawn(func() {
		if err := d.Engine.RecoverAll(run, cfg.RecoveryWorkers); err != nil && run.Err() == nil {
			log.Error("recovery", "err", err)
		}
	})
	if cfg.Sender == nil {
		log.Info("rewards are not claimed automatically: the host signs with a warm or keyring key; claim with the account's key")
	}
	claims := newClaimer(cfg.Chain, cfg.Sender, account, log)
	settler := newSelfSettler(d.Engine, cfg.Chain, cfg.Sender, newPeerReads(d.Engine, peers), log)
	d.spawn(func() { d.followEpochs(run, cfg.Chain, claims, log) })
	d.spawn(func() { d.tick(run, claims, settler) })
	return d, nil
}

// Background periods: how often sessions are ticked (stalled inferences
// timed out), how often claims and self-settlement look for work between
// epoch changes, how often the epoch is polled while the node pushes no
// blocks, and how long Close waits for requests in flight and the loops.
const (
	tickEvery   = time.Second
	roundEvery  = 5 // seconds, on the wall clock
	pollEpochs  = 5 * time.Second
	closeServer = 10 * time.Second
)

// followEpochs prunes storage and prepares the next epoch's at every
// epoch change, and claims what the closing epochs made claimable.
func (d *Daemon) followEpochs(ctx context.Context, c Chain, claims *claimer, log *slog.Logger) {
	_ = c.FollowEpochs(ctx, pollEpochs, func(epoch uint64) {
		log.Info("epoch", "current", epoch)
		d.spawn(func() { claims.claim(ctx) })
		if err := d.st.SetEpoch(ctx, epoch); err != nil {
			log.Warn("prune on epoch change", "epoch", epoch, "err", err)
		}
		if err := d.st.PrepareEpoch(ctx, epoch+1); err != nil {
			log.Warn("prepare next epoch's storage", "epoch", epoch+1, "err", err)
		}
	})
}

// tick times out stalled inferences every second and, every few seconds,
// claims and settles: claims also land between epoch changes, and an
// escrow's settlement deadline passes at any block.
func (d *Daemon) tick(ctx context.Context, claims *claimer, settler *selfSettler) {
	ticker := time.NewTicker(tickEvery)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-ticker.C:
			d.Engine.Tick(ctx)
			if now.Unix()%roundEvery == 0 {
				d.spawn(func() { claims.claim(ctx) })
				d.spawn(func() { settler.round(ctx) })
			}
		}
	}
}

// spawn runs fn in the background until Close.
func (d *Daemon) spawn(fn func()) {
	d.loops.Add(1)
	go func() {
		defer d.loops.Done()
		fn()
	}()
}

// Addr is the API's bound address.
func (d *Daemon) Addr() string { return d.ln.Addr().String() }

// URL is the API's base URL.
func (d *Daemon) URL() string { return "http://" + d.Addr() }

// Served reports the HTTP server's end.
func (d *Daemon) Served() <-chan error { return d.served }

// Close stops the background loops and the HTTP server, waiting within
// ctx (and at most 10s) for requests in flight and the loops to end, then
// for the engine's own background work, and closes storage.
func (d *Daemon) Close(ctx context.Context) error {
	d.stop()
	shut, cancel := context.WithTimeout(ctx, closeServer)
	defer cancel()
	err := d.srv.Shutdown(shut)
	loops := make(chan struct{})
	go func() {
		d.loops.Wait()
		close(loops)
	}()
	select {
	case <-loops:
	case <-shut.Done():
	}
	d.Engine.Wait()
	d.release()
	return err
}

// release frees what Open took, after a failed Open or at Close.
func (d *Daemon) release() {
	if d.srv != nil {
		_ = d.srv.Close()
	}
	if d.ln != nil {
		_ = d.ln.Close() // at once: Serve may not have taken it yet
	}
	if d.st != nil {
		_ = d.st.Close()
	}
}
