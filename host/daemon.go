package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/internal/httpserve"
	"github.com/devshard/devshard/jobs"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/store/boot"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
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
	// ChainGRPC and ChainRPC are the node addresses Chain dials (each a
	// comma-separated list), named in what the host says while its chain
	// does not answer.
	ChainGRPC, ChainRPC string
	// ChainStallAfter is how old the chain's latest block may grow before
	// /readyz says the chain is stalled (default 30s).
	ChainStallAfter time.Duration
	// Sender sends the account's reward claims and the settlements of
	// escrows the gateway left open; it must sign with the account's own
	// key (AccountKey). Nil, as with a warm or keyring key, claims and
	// settles nothing.
	Sender   ChainSender
	Executor executor.Executor
	// Storage opens the store. Retention.Current defaults to the chain's
	// current epoch, so a host that missed an epoch change still prunes,
	// Retention.OnError to a warning in the log, and EpochOf, for a legacy
	// database, to the epoch the chain gives the escrow.
	Storage boot.Config
	// SnapshotEvery is the engine's K (Config.SnapshotEvery).
	SnapshotEvery uint64
	// RecoveryWorkers recover stored sessions in parallel at startup.
	RecoveryWorkers int
	// Version is what GET /version reports.
	Version string
	// RuntimeVersion is the runtime version this process serves behind
	// versiond (Config.RuntimeVersion).
	RuntimeVersion string
	Logger         *slog.Logger
	// Jobs configures the job queue, its workers and the admin endpoint.
	Jobs JobsConfig
	// ProxyValidation hands the host's validations to a proxy host
	// (Config.ProxyValidation).
	ProxyValidation bool
}

// JobsConfig is the host's job plane (docs/jobs.md): the queue's timings,
// the external workers it accepts and the operator's admin endpoint. The
// queue lives where the host stores: a SQLite file in the storage
// directory, or a schema of the host's Postgres.
type JobsConfig struct {
	// HeartbeatTimeout, MaxTry and Lifetime are the queue's
	// (jobs.Options); zero takes its defaults.
	HeartbeatTimeout time.Duration
	MaxTry           int
	Lifetime         time.Duration
	// Workers are the accounts of the external workers accepted on the
	// worker routes; none runs every job in process.
	Workers []signing.Address
	// Inference sends this host's inferences to the workers too
	// (Config.InferenceJobs).
	Inference bool
	// AdminListen is the admin endpoint's address; empty serves none.
	AdminListen string
	// AdminFile is where the admin endpoint's URL and token are written at
	// start (mode 0600, hostapi.AdminFile); required with AdminListen.
	AdminFile string
}

// Daemon is a running host: its HTTP API, its storage, and the loops that
// recover stored sessions, follow the chain's epochs, tick the sessions,
// claim the account's rewards and settle what the gateway left open.
type Daemon struct {
	Engine  *Engine
	ln      net.Listener
	srv     *http.Server
	st      *boot.Opened
	jobs    *jobs.Queue
	admin   *http.Server
	adminLn net.Listener
	served  chan error
	stop    context.CancelFunc // ends the loops
	loops   sync.WaitGroup
	// waiting is why the host is not ready while it waits for its chain;
	// nil once the chain has answered.
	waiting atomic.Pointer[string]
}

// Open starts a host in the order its readiness depends on: it binds the
// listener first, so health answers while the rest comes up; then it waits
// for the chain node (its chain id names signed requests, its epoch the
// storage to keep), retrying with backoff while /readyz says why; then it
// opens storage, migrating a legacy database on first boot, opens the
// session routes, and starts recovering stored sessions, following epochs
// and ticking in the background until Close. If ctx ends while it waits,
// Open returns an error wrapping ctx's.
func Open(ctx context.Context, cfg DaemonConfig) (_ *Daemon, err error) {
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:8081"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ChainStallAfter <= 0 {
		cfg.ChainStallAfter = 30 * time.Second
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
		return nil, fmt.Errorf("cannot listen on %q (%v): set listen (--listen, DEVSHARD_HOST_LISTEN) to a free host:port such as 127.0.0.1:8081", cfg.Listen, err)
	}
	peers := newChainPeers(cfg.Chain)
	escrows := chainEscrows{cfg.Chain}
	d.Engine = New(Config{Key: cfg.Key, Account: account, Escrows: escrows, Seq: escrows, UnseenWait: DefaultUnseenWait, Executor: cfg.Executor,
		Auth: cfg.Chain.Authorizer(), SnapshotEvery: cfg.SnapshotEvery, Peers: peers, Logger: log, Metrics: NewMetrics(),
		Workers: cfg.Jobs.Workers, InferenceJobs: cfg.Jobs.Inference, ProxyValidation: cfg.ProxyValidation,
		RuntimeVersion: cfg.RuntimeVersion})
	d.srv = httpserve.Server(d.explainReadyz(Handler(d.Engine, cfg.Version)))
	go func() { d.served <- d.srv.Serve(d.ln) }()
	log.Info("host listening", "addr", d.Addr(), "account", cfg.Chain.Address(account))

	chainID, err := d.awaitChain(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if d.st, err = openStorage(ctx, cfg, d.Engine, log); err != nil {
		return nil, fmt.Errorf("open storage: %w", err)
	}
	d.Engine.SetStore(d.st)
	d.Engine.SetChainID(chainID)
	if d.jobs, err = openJobs(ctx, cfg, d.st.Mode, d.Engine.cfg.Metrics.registerer()); err != nil {
		return nil, err
	}
	d.Engine.SetJobs(d.jobs)
	if err := d.serveAdmin(cfg); err != nil {
		return nil, err
	}
	d.Engine.MarkReady()
	log.Info("storage ready", "mode", d.st.Mode, "synchronous", d.st.Synchronous)
	if cfg.ProxyValidation {
		log.Info("validations are left to a proxy host (validation.proxy): this host samples and re-runs nothing")
	} else if len(cfg.Jobs.Workers) == 0 {
		log.Info("jobs run in process: no external worker is configured")
	} else {
		log.Info("jobs wait for external workers", "workers", len(cfg.Jobs.Workers))
	}

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
	watch := func() { watchChain(run, cfg.Chain, cfg.ChainStallAfter, d.Engine.cfg.Metrics) }
	d.spawn(watch)
	d.spawn(func() { d.followEpochs(run, cfg.Chain, claims, log) })
	d.spawn(func() { d.tick(run, claims, settler, watch) })
	return d, nil
}

// openStorage opens the store cfg names, migrating a legacy database
// first if one is where cfg.Storage.Legacy says, and logs the migration.
func openStorage(ctx context.Context, cfg DaemonConfig, eng *Engine, log *slog.Logger) (*boot.Opened, error) {
	storage := cfg.Storage
	if storage.Retention.Unsettled == nil {
		storage.Retention.Unsettled = openEscrows(eng, cfg.Chain)
	}
	if storage.Retention.Current == nil {
		storage.Retention.Current = cfg.Chain.CurrentEpoch
	}
	if storage.Retention.OnError == nil {
		storage.Retention.OnError = func(err error) { log.Warn("storage retention", "err", err) }
	}
	if storage.Legacy != "" && storage.EpochOf == nil {
		storage.EpochOf = func(ctx context.Context, id uint64, _ *sessionpb.EscrowSnapshot) (uint64, error) {
			esc, err := cfg.Chain.Escrow(ctx, id)
			if err != nil {
				return 0, err
			}
			return esc.Snapshot.Epoch, nil
		}
	}
	migrating := false
	if _, err := os.Stat(storage.Legacy); storage.Legacy != "" && err == nil {
		migrating = true
		log.Info("migrating the legacy database into the epoch layout; the host is ready when it is done", "legacy", storage.Legacy, "into", storage.Dir)
		var last time.Time
		storage.Progress = func(done, total int) {
			if time.Since(last) >= legacyProgressEvery || done == total {
				last = time.Now()
				log.Info("migrating the legacy database", "sessions_done", done, "sessions", total)
			}
		}
	}
	st, err := boot.Open(ctx, storage)
	if err != nil {
		return nil, err
	}
	if rep := st.Legacy; migrating && rep != nil {
		log.Info("legacy database migrated", "sessions", rep.Sessions, "diffs", rep.Diffs, "dropped_pruned", len(rep.Pruned), "renamed_to", rep.RenamedTo)
	}
	return st, nil
}

// openEscrows is the retention guard: it reports whether the host holds an
// escrow of epoch that is still open on chain, so no prune takes sessions
// the host (or its gateway) has yet to settle. An escrow the chain does not
// answer for counts as open. An escrow found closed (settled or expired)
// never opens again, so it is remembered and not asked about on the next
// pass: a host holding thousands of settled escrows asks the chain about
// each once, not every pass.
func openEscrows(eng *Engine, c Chain) func(ctx context.Context, epoch uint64) (bool, error) {
	var mu sync.Mutex
	closed := map[uint64]bool{}
	return func(ctx context.Context, epoch uint64) (bool, error) {
		held := eng.Settleables()
		mu.Lock()
		defer mu.Unlock()
		if len(closed) > 4*len(held)+1024 {
			// Escrows of pruned epochs leave the engine; forget them.
			live := make(map[uint64]bool, len(held))
			for _, st := range held {
				if closed[st.Snapshot.EscrowId] {
					live[st.Snapshot.EscrowId] = true
				}
			}
			closed = live
		}
		for _, st := range held {
			id := st.Snapshot.EscrowId
			if st.Snapshot.Epoch != epoch || closed[id] {
				continue
			}
			esc, err := c.Escrow(ctx, id)
			if err != nil {
				return true, fmt.Errorf("escrow %d of epoch %d: %w", id, epoch, err)
			}
			if esc.Status == devshardtypes.EscrowOpen {
				return true, nil
			}
			closed[id] = true
		}
		return false, nil
	}
}

// legacyProgressEvery spaces the progress lines of a legacy migration.
const legacyProgressEvery = 5 * time.Second

// Waiting for the chain at startup: the first retry comes after
// chainRetryFirst, each later one after twice the last wait, at most
// chainRetryMax; each attempt may take chainAttempt.
var (
	chainRetryFirst = time.Second
	chainRetryMax   = 30 * time.Second
	chainAttempt    = 10 * time.Second
)

// awaitChain asks the chain node its chain id and current epoch until it
// answers both, backing off between attempts. Meanwhile /readyz answers
// 503 with the reason, and each failure is a warning in the log.
func (d *Daemon) awaitChain(ctx context.Context, cfg DaemonConfig) (string, error) {
	wait := chainRetryFirst
	for {
		id, err := askChain(ctx, cfg)
		if err == nil {
			d.waiting.Store(nil)
			return id, nil
		}
		if ctx.Err() != nil {
			return "", fmt.Errorf("stopped while waiting for the chain (%v): %w", err, ctx.Err())
		}
		why := err.Error()
		d.waiting.Store(&why)
		cfg.Logger.Warn(why, "retry_in", wait)
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("stopped while waiting for the chain (%v): %w", err, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, chainRetryMax)
	}
}

// askChain asks the node its chain id (CometBFT RPC) and current epoch
// (gRPC); an error names the address that did not answer and the setting
// that changes it.
func askChain(ctx context.Context, cfg DaemonConfig) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, chainAttempt)
	defer cancel()
	id, err := cfg.Chain.ChainID(ctx)
	if err != nil {
		return "", fmt.Errorf("chain unreachable at %s: %v; start the node, or set chain.rpc (--chain-rpc, DEVSHARD_HOST_CHAIN_RPC) to a running node's RPC", nodeAddr(cfg.ChainRPC), err)
	}
	if _, err := cfg.Chain.CurrentEpoch(ctx); err != nil {
		return "", fmt.Errorf("chain unreachable at %s: %v; start the node, or set chain.grpc (--chain-grpc, DEVSHARD_HOST_CHAIN_GRPC) to a running node's gRPC host:port", nodeAddr(cfg.ChainGRPC), err)
	}
	return id, nil
}

func nodeAddr(addr string) string {
	if addr == "" {
		return "the configured node"
	}
	return addr
}

// explainReadyz answers /readyz with why the host is not ready while it
// waits for its chain; next answers everything else, and /readyz after.
func (d *Daemon) explainReadyz(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if why := d.waiting.Load(); why != nil && r.Method == hostapi.Readyz.Method && r.URL.Path == hostapi.Readyz.Path {
			writeJSON(w, http.StatusServiceUnavailable, hostapi.StatusResponse{Status: hostapi.Initializing + ": " + *why})
			return
		}
		next.ServeHTTP(w, r)
	})
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
// claims and settles (claims also land between epoch changes, and an
// escrow's settlement deadline passes at any block) and runs watch.
func (d *Daemon) tick(ctx context.Context, claims *claimer, settler *selfSettler, watch func()) {
	ticker := time.NewTicker(tickEvery)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-ticker.C:
			d.Engine.Tick(ctx)
			if now.Unix()%roundEvery == 0 {
				d.spawn(func() { probeStorage(ctx, d.st, d.Engine.cfg.Metrics) })
				d.spawn(func() { claims.claim(ctx) })
				d.spawn(func() { settler.round(ctx) })
				d.spawn(watch)
				d.spawn(func() { d.Engine.collect(ctx) }) // jobs finished by another host's workers, or failed by the rescuer
			}
		}
	}
}

// probeTimeout bounds one storage probe: storage slower than this is
// failing as far as the requests are concerned.
const probeTimeout = 2 * time.Second

// probeStorage lists the stored epochs, a read every driver answers from
// its database, and records the outcome, so that /readyz and
// devshard_host_storage_up report an outage even on a host no request
// writes to.
func probeStorage(ctx context.Context, s interface {
	Epochs(context.Context) ([]uint64, error)
}, m *Metrics) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	_, err := s.Epochs(ctx)
	if err != nil && ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) {
		return // the host is closing
	}
	if err != nil {
		err = fmt.Errorf("storage probe: %w", err)
	}
	m.storageProbed(err)
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
	if d.admin != nil {
		_ = d.admin.Shutdown(shut)
	}
	d.Engine.Close()
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
	if d.admin != nil {
		_ = d.admin.Close()
	}
	if d.adminLn != nil {
		_ = d.adminLn.Close()
	}
	if d.Engine != nil {
		d.Engine.Close()
	}
	if d.jobs != nil {
		_ = d.jobs.Close()
	}
	if d.st != nil {
		_ = d.st.Close()
	}
}
