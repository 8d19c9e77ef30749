// Package gateway is the app-facing side of devshard: an OpenAI-compatible
// API whose requests are paid from escrows the gateway locks on chain. The
// gateway is the sequencer of its sessions: it assigns nonces, builds and
// signs each diff from its StartInference and the hosts' pooled txs, sends
// it to the group, streams the executor's answer back, and settles the
// session with the group's signatures.
//
// Its own state (escrows, every diff it sequenced, pending settlements,
// usage) lives in one SQLite file, written before anything is sent, so a
// restart resumes where it stopped.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/signing"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// Config assembles a Gateway.
type Config struct {
	// Key signs diffs; its account creates and pays for the escrows.
	Key *signing.PrivKey
	// ChainID is the chain the escrows live on; requests to hosts are
	// signed for it.
	ChainID string
	Chain   Chain
	State   *State
	// Auth accepts hosts' warm keys; nil accepts only holders' own keys.
	Auth session.Authorizer
	// EscrowAmount is what each new escrow locks (default 10,000,000).
	EscrowAmount uint64
	// Models are the model names apps may ask for (default: the built-in
	// model).
	Models []string
	// MaxTokens is the largest max_tokens a request may ask (default 4096);
	// DefaultMaxTokens is used when a request names none (default 256).
	MaxTokens, DefaultMaxTokens int
	// HostTimeout bounds one call to a host for a diff or a mempool
	// (default 5s).
	HostTimeout time.Duration
	// StallTimeout cuts an inference stream that sends nothing for this long
	// and retries elsewhere (default 15s).
	StallTimeout time.Duration
	// Attempts is how many executors a request is tried on (default 3).
	Attempts int
	// FlushEvery is how often idle sessions collect the hosts' pooled txs
	// and carry them in a diff (default 1s).
	FlushEvery time.Duration
	// EpochPoll is how often the gateway checks for a new epoch, whose
	// start settles the previous epoch's escrows, and for the chain's
	// latest block (default 2s).
	EpochPoll time.Duration
	// ChainStallAfter is how old the chain's latest block may grow before
	// the chain counts as stalled (default 30s): readiness fails, and a
	// request that needs a new escrow fails at once with 503, while those
	// on open escrows are still served.
	ChainStallAfter time.Duration
	// HoldFor is how long a diff may wait for a member that does not
	// execute it, so that it goes out with later diffs in one delivery:
	// one durable commit and one signature for the run on that host
	// (default 50ms). A member gets its held diffs at once when it is the
	// executor of a new one, when maxHeld are waiting, and when the
	// session finalizes. Negative sends every diff at once.
	HoldFor time.Duration
	// Lanes is how many escrows take requests at once (default 1). Each
	// lane's diffs are sequenced independently, so more lanes carry more
	// requests in parallel, at one creation fee per escrow.
	Lanes int
	// Keyring, when set, is the keys the HTTP API admits, in place of
	// APIConfig.Keys: the daemon's keys file, followed as it changes.
	Keyring *Keyring
	Logger  *slog.Logger
	Metrics *Metrics
}

func (c *Config) defaults() {
	if c.EscrowAmount == 0 {
		c.EscrowAmount = 10_000_000
	}
	if len(c.Models) == 0 {
		c.Models = []string{executor.BuiltinModel}
	}
	if c.MaxTokens == 0 {
		c.MaxTokens = 4096
	}
	if c.DefaultMaxTokens == 0 {
		c.DefaultMaxTokens = min(256, c.MaxTokens)
	}
	if c.HostTimeout == 0 {
		c.HostTimeout = 5 * time.Second
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = 15 * time.Second
	}
	if c.Attempts == 0 {
		c.Attempts = 3
	}
	if c.FlushEvery == 0 {
		c.FlushEvery = time.Second
	}
	if c.EpochPoll == 0 {
		c.EpochPoll = 2 * time.Second
	}
	if c.ChainStallAfter == 0 {
		c.ChainStallAfter = 30 * time.Second
	}
	if c.Lanes <= 0 {
		c.Lanes = 1
	}
	if c.HoldFor == 0 {
		c.HoldFor = 50 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Metrics == nil {
		c.Metrics = NewMetrics()
	}
}

// Errors the API maps to statuses.
var (
	// ErrNoHost: no executor answered (503).
	ErrNoHost = errors.New("no host could serve the request")
	// ErrClosed: the gateway is shutting down (503).
	ErrClosed = errors.New("gateway is shutting down")
	// ErrRequest: the request is not acceptable (400).
	ErrRequest = errors.New("invalid request")
	// ErrModel: no host serves the model (404).
	ErrModel = errors.New("unknown model")
)

// errEscrowLow: the current escrow cannot cover the request's reservation.
var errEscrowLow = errors.New("escrow balance too low")

// Gateway sequences sessions and serves completions.
type Gateway struct {
	cfg     Config
	key     *signing.PrivKey
	state   *State
	chain   Chain
	peers   *hostapi.Client
	auth    session.Authorizer
	log     *slog.Logger
	metrics *Metrics
	memo    *signing.Memo // host tx signatures checked on arrival, so building a diff does not check them again
	// runtimes follows which runtime versions the hosts serve, to create
	// escrows under one they share.
	runtimes *runtimes

	mu       sync.Mutex
	closed   bool
	epoch    uint64             // latest epoch seen on chain
	lanes    []*escrow          // the escrows taking new requests; nil: none yet
	creating []chan struct{}    // per lane, held while its escrow is being created
	next     uint64             // round-robin over the lanes
	all      map[uint64]*escrow // every escrow not yet settled

	// block is the chain's latest block as last asked for; nil until the
	// first answer.
	block atomic.Pointer[chainBlock]

	bg     sync.WaitGroup // settlements and loops
	stop   context.CancelFunc
	loopCx context.Context
}

// New returns a gateway. Call Start to resume stored sessions and run its
// background loops.
func New(cfg Config) *Gateway {
	cfg.defaults()
	ctx, cancel := context.WithCancel(context.Background())
	g := &Gateway{
		cfg: cfg, key: cfg.Key, state: cfg.State, chain: cfg.Metrics.countChain(cfg.Chain), auth: cfg.Auth,
		peers: newPeers(cfg.Key, cfg.ChainID, cfg.HostTimeout), log: cfg.Logger, metrics: cfg.Metrics, memo: signing.NewMemo(memoSize),
		all: map[uint64]*escrow{}, lanes: make([]*escrow, cfg.Lanes), creating: make([]chan struct{}, cfg.Lanes),
		stop: cancel, loopCx: ctx, runtimes: newRuntimes(ctx, cfg.Logger),
	}
	for i := range g.creating {
		g.creating[i] = make(chan struct{}, 1)
	}
	cfg.Metrics.watchEscrows(g)
	return g
}

// memoSize bounds the gateway's memo of checked host tx signatures: far
// more than the txs in flight between two diffs of every lane.
const memoSize = 1 << 16

// takeLane puts e in a free lane; false if every lane is taken.
func (g *Gateway) takeLane(e *escrow) bool {
	for i, l := range g.lanes {
		if l == nil {
			g.lanes[i] = e
			return true
		}
	}
	return false
}

// Metrics are the gateway's metrics.
func (g *Gateway) Metrics() *Metrics { return g.metrics }

// Address is the gateway's account.
func (g *Gateway) Address() signing.Address { return g.key.Address() }

// Start rebuilds every unsettled escrow from the state file, resumes the
// settlements that were in flight, and starts the flush and epoch loops.
func (g *Gateway) Start(ctx context.Context) error {
	epoch, _, err := g.chain.Epoch(ctx)
	if err != nil {
		return err
	}
	g.epoch = epoch
	stored, err := g.state.Escrows(ctx)
	if err != nil {
		return err
	}
	for _, se := range stored {
		e, err := g.restore(ctx, se)
		if err != nil {
			return fmt.Errorf("resume escrow %d: %w", se.Snapshot.EscrowId, err)
		}
		g.all[e.id()] = e
		tail := e.seq.adoptTail(ctx)
		switch {
		case tail != nil:
			g.log.Warn("resumed escrow waits for a host; it will be settled once the host answers", "escrow", e.id(), "err", tail)
			g.settleLater(e)
		case se.Status == StatusSettling || se.Snapshot.Epoch < epoch:
			g.settleLater(e)
		case !g.takeLane(e):
			g.settleLater(e) // more open escrows than lanes
		}
		g.log.Info("resumed escrow", "escrow", e.id(), "nonce", e.seq.nonce(), "status", se.Status)
	}
	g.bg.Add(5)
	go g.every(g.cfg.FlushEvery, g.flushLanes)
	go g.every(g.cfg.EpochPoll, g.settleEnded)
	go g.every(g.cfg.EpochPoll, g.retireUnapproved)
	go g.every(g.cfg.EpochPoll, g.pruneSettled)
	go g.every(g.cfg.EpochPoll, g.watchChain)
	return nil
}

// Completion is a finished request.
type Completion struct {
	Text         string
	Usage        executor.Usage
	FinishReason string
	Model        string
	EscrowID     uint64
	Nonce        uint64
	// Attempts is how many executors were tried.
	Attempts int
	// Cost is what the escrow was charged for it.
	Cost uint64
}

// Normalize fills the defaults into a request and checks it against the
// gateway's limits. The error wraps ErrRequest or ErrModel.
func (g *Gateway) Normalize(req *executor.Request) error {
	if req.MaxTokens == 0 {
		req.MaxTokens = g.cfg.DefaultMaxTokens
	}
	if err := req.Validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrRequest, err)
	}
	if req.MaxTokens > g.cfg.MaxTokens {
		return fmt.Errorf("%w: max_tokens is %d; this gateway allows at most %d", ErrRequest, req.MaxTokens, g.cfg.MaxTokens)
	}
	for _, m := range g.cfg.Models {
		if m == req.Model {
			return nil
		}
	}
	return fmt.Errorf("%w: the model %q does not exist; available: %v", ErrModel, req.Model, g.cfg.Models)
}

// Models lists the models apps may ask for.
func (g *Gateway) Models() []string { return append([]string(nil), g.cfg.Models...) }

// maxRotations bounds how many escrows one request may retire for being
// too low: a request no fresh escrow can cover must not lock escrow after
// escrow.
const maxRotations = 2

func isHostError(err error) bool {
	var he *hostapi.Error
	return errors.As(err, &he)
}

// escrowFor returns an escrow that takes new requests, in round robin
// over the lanes, creating the lane's escrow if it has none.
func (g *Gateway) escrowFor(ctx context.Context) (*escrow, error) {
	g.mu.Lock()
	lane := int(g.next % uint64(len(g.lanes)))
	g.next++
	g.mu.Unlock()
	for {
		g.mu.Lock()
		if g.closed {
			g.mu.Unlock()
			return nil, ErrClosed
		}
		if e := g.lanes[lane]; e != nil {
			g.mu.Unlock()
			return e, nil
		}
		g.mu.Unlock()
		select {
		case g.creating[lane] <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		g.mu.Lock()
		e := g.lanes[lane]
		g.mu.Unlock()
		if e != nil { // another request created it while this one waited
			<-g.creating[lane]
			return e, nil
		}
		e, err := g.createEscrow(ctx)
		if err != nil {
			<-g.creating[lane]
			return nil, err
		}
		// Publish the escrow before giving up the lane's creation slot: a
		// request waiting for the slot must find it, or it would lock a
		// second escrow that no lane ever uses.
		g.mu.Lock()
		g.all[e.id()] = e
		if g.lanes[lane] == nil {
			g.lanes[lane] = e
		}
		g.mu.Unlock()
		<-g.creating[lane]
	}
}

// createEscrow locks a new escrow in the current epoch. On a chain that
// makes no blocks the tx could not land, so the request that needs the
// escrow is told so at once rather than kept waiting for it.
func (g *Gateway) createEscrow(ctx context.Context) (*escrow, error) {
	if err := g.chainMoving(ctx); err != nil {
		var stalled *chainclient.StalledError
		if errors.As(err, &stalled) {
			return nil, fmt.Errorf("%w; no new escrow can be opened until it resumes, and this request needs one", err)
		}
		return nil, err
	}
	epoch, state, err := g.chain.Epoch(ctx)
	if err != nil {
		return nil, err
	}
	if state != devshardtypes.EpochActive {
		return nil, fmt.Errorf("%w: epoch %d is %s; escrows are created only while an epoch is ACTIVE", ErrNoEpoch, epoch, state.Short())
	}
	bal, err := g.chain.Balance(ctx)
	if err != nil {
		return nil, err
	}
	if bal < g.cfg.EscrowAmount {
		return nil, fmt.Errorf("%w: the gateway account holds %d and an escrow locks %d", ErrFunds, bal, g.cfg.EscrowAmount)
	}
	version, err := g.runtimeForNewEscrow(ctx)
	if err != nil {
		return nil, err
	}
	snap, err := g.chain.CreateEscrowUnder(ctx, g.cfg.EscrowAmount, version)
	if err != nil {
		return nil, err
	}
	e, err := g.newEscrow(ctx, snap, StatusOpen)
	if err != nil {
		return nil, err
	}
	if err := g.state.AddEscrow(ctx, snap); err != nil {
		return nil, err
	}
	g.metrics.escrows.Inc()
	g.log.Info("escrow created", "escrow", snap.EscrowId, "epoch", snap.Epoch, "amount", snap.Amount, "group", len(snap.Group), "runtime", snap.RuntimeVersion)
	return e, nil
}

// runtimeForNewEscrow is the runtime version a new escrow is created
// under: the one the hosts it may be grouped with share (runtimes.choose).
func (g *Gateway) runtimeForNewEscrow(ctx context.Context) (string, error) {
	approved, err := g.chain.ApprovedVersions(ctx)
	if err != nil {
		return "", err
	}
	if len(approved) == 0 {
		return "", nil // hosts run no versiond: no need to ask them
	}
	names := make([]string, len(approved))
	for i, v := range approved {
		names[i] = v.Name
	}
	hosts, err := g.chain.CandidateURLs(ctx)
	if err != nil {
		return "", err
	}
	return g.runtimes.choose(ctx, names, hosts)
}

// retire stops new requests on e and settles it in the background.
func (g *Gateway) retire(e *escrow) {
	g.mu.Lock()
	for i, l := range g.lanes {
		if l == e {
			g.lanes[i] = nil
		}
	}
	g.mu.Unlock()
	g.settleLater(e)
}

// settleLater settles e in the background, retrying until it is settled
// or the gateway halts, unless it is already retried in the background.
func (g *Gateway) settleLater(e *escrow) {
	e.seq.stopTaking()
	if !e.settle.retrying.CompareAndSwap(false, true) {
		return
	}
	g.bg.Add(1)
	go func() {
		defer g.bg.Done()
		for attempt := 0; ; attempt++ {
			err := e.settle.settle(g.loopCx)
			if err == nil {
				g.forget(e)
				return
			}
			if g.loopCx.Err() != nil {
				return
			}
			g.log.Warn("settlement not done; retrying", "escrow", e.id(), "err", err)
			select {
			case <-g.loopCx.Done():
				return
			case <-time.After(min(time.Duration(attempt+1)*2*time.Second, 30*time.Second)):
			}
		}
	}()
}

func (g *Gateway) forget(e *escrow) {
	g.mu.Lock()
	delete(g.all, e.id())
	g.mu.Unlock()
}

// SettleAll retires every open escrow and waits until each is settled or
// ctx ends.
func (g *Gateway) SettleAll(ctx context.Context) error {
	g.mu.Lock()
	es := make([]*escrow, 0, len(g.all))
	for _, e := range g.all {
		es = append(es, e)
	}
	clear(g.lanes)
	g.mu.Unlock()
	errs := make([]error, len(es))
	var wg sync.WaitGroup
	for i, e := range es {
		wg.Add(1)
		go func() { // escrows settle independently: each waits on its own hosts
			defer wg.Done()
			if errs[i] = e.settle.settle(ctx); errs[i] == nil {
				g.forget(e)
			} else {
				g.settleLater(e) // the answered requests are paid before the deadline
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Close stops taking requests, settles every open escrow within ctx, and
// stops the background loops. Settlements not finished are resumed by the
// next Start.
func (g *Gateway) Close(ctx context.Context) error {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	err := g.SettleAll(ctx)
	g.stop()
	g.bg.Wait()
	return err
}

// halt stops the loops and settlements in progress without settling. The
// diffs held for members go out first (within HostTimeout), so that every
// host ends at the latest nonce, where the group can settle without the
// gateway.
func (g *Gateway) halt() {
	g.mu.Lock()
	g.closed = true
	all := make([]*escrow, 0, len(g.all))
	for _, e := range g.all {
		all = append(all, e)
	}
	g.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.HostTimeout)
	for _, e := range all {
		e.out.sendHeld(ctx)
	}
	cancel()
	g.stop()
	g.runtimes.close()
	g.bg.Wait()
}

// every runs fn every d until the gateway halts.
func (g *Gateway) every(d time.Duration, fn func()) {
	defer g.bg.Done()
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-g.loopCx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// flushLanes carries the hosts' pooled txs (finishes, validations, timeout
// votes) of lanes that have gone quiet, so work is recorded without waiting
// for the next request.
func (g *Gateway) flushLanes() {
	g.mu.Lock()
	lanes := slices.Clone(g.lanes)
	g.mu.Unlock()
	for _, e := range lanes {
		if e != nil {
			e.flush(g.loopCx, g.cfg.FlushEvery)
		}
	}
}

// settleEnded settles the escrows of epochs that have ended.
func (g *Gateway) settleEnded() {
	epoch, _, err := g.chain.Epoch(g.loopCx)
	if err != nil {
		return
	}
	g.mu.Lock()
	g.epoch = epoch
	var old []*escrow
	for _, e := range g.all {
		if e.snap.Epoch < epoch {
			old = append(old, e)
		}
	}
	g.mu.Unlock()
	for _, e := range old {
		g.log.Info("epoch turned; settling escrow", "escrow", e.id(), "escrow_epoch", e.snap.Epoch, "epoch", epoch)
		g.retire(e)
	}
}

// pruneBatch bounds one pruning pass, so that its write transaction stays
// short and a diff's write never waits long behind it. At one pass per
// epoch poll (2s) it outpaces any gateway's diffs.
const pruneBatch = 5000

// pruneSettled deletes a batch of the diffs settled escrows no longer need
// (State.PruneSettled); the escrows still in memory keep theirs.
func (g *Gateway) pruneSettled() {
	g.mu.Lock()
	live := slices.Collect(maps.Keys(g.all))
	g.mu.Unlock()
	n, err := g.state.PruneSettled(g.loopCx, pruneBatch, live)
	if err != nil {
		if g.loopCx.Err() == nil {
			g.log.Warn("pruning settled escrows' diffs failed; next pass retries", "err", err)
		}
		return
	}
	if n > 0 {
		g.log.Debug("pruned settled escrows' diffs", "diffs", n)
	}
}

// Settled lists the escrows this gateway has settled, with their txs.
func (g *Gateway) Settled(ctx context.Context) ([]SettledEscrow, error) { return g.state.Settled(ctx) }

// SettledCount is how many escrows this gateway has settled.
func (g *Gateway) SettledCount(ctx context.Context) (int, error) {
	s, err := g.state.Settled(ctx)
	return len(s), err
}

// EscrowView is an operator's view of one escrow the gateway holds.
type EscrowView struct {
	ID      uint64       `json:"id"`
	Epoch   uint64       `json:"epoch"`
	Status  EscrowStatus `json:"status"`
	Phase   string       `json:"phase"`
	Nonce   uint64       `json:"nonce"`
	Root    string       `json:"root"`
	Balance uint64       `json:"balance"`
	// Runtime is the runtime version the escrow was created under; every
	// call of its session goes to that version's route on each host.
	Runtime string `json:"runtime_version,omitempty"`
	// NextExecutor is the URL of the host that executes the next nonce.
	NextExecutor string `json:"next_executor"`
	Current      bool   `json:"current"`
}

// Escrows describes every escrow not yet settled, by id.
func (g *Gateway) Escrows() []EscrowView {
	g.mu.Lock()
	es := make([]*escrow, 0, len(g.all))
	for _, e := range g.all {
		es = append(es, e)
	}
	lanes := slices.Clone(g.lanes)
	g.mu.Unlock()
	sort.Slice(es, func(i, j int) bool { return es[i].id() < es[j].id() })
	out := make([]EscrowView, 0, len(es))
	for _, e := range es {
		out = append(out, e.view(slices.Contains(lanes, e)))
	}
	return out
}
