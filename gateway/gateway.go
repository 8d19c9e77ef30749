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
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
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
	// start settles the previous epoch's escrows (default 2s).
	EpochPoll time.Duration
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
	Lanes   int
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
	peers   *peers
	auth    session.Authorizer
	log     *slog.Logger
	metrics *Metrics
	memo    *signing.Memo // host tx signatures checked on arrival, so building a diff does not check them again

	mu       sync.Mutex
	closed   bool
	epoch    uint64                // latest epoch seen on chain
	lanes    []*sequencer          // the escrows taking new requests; nil: none yet
	creating []chan struct{}       // per lane, held while its escrow is being created
	next     uint64                // round-robin over the lanes
	all      map[uint64]*sequencer // every escrow not yet settled

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
		cfg: cfg, key: cfg.Key, state: cfg.State, chain: cfg.Chain, auth: cfg.Auth,
		peers: newPeers(cfg.Key, cfg.ChainID, cfg.HostTimeout), log: cfg.Logger, metrics: cfg.Metrics, memo: signing.NewMemo(memoSize),
		all: map[uint64]*sequencer{}, lanes: make([]*sequencer, cfg.Lanes), creating: make([]chan struct{}, cfg.Lanes),
		stop: cancel, loopCx: ctx,
	}
	for i := range g.creating {
		g.creating[i] = make(chan struct{}, 1)
	}
	return g
}

// memoSize bounds the gateway's memo of checked host tx signatures: far
// more than the txs in flight between two diffs of every lane.
const memoSize = 1 << 16

// takeLane puts q in a free lane; false if every lane is taken.
func (g *Gateway) takeLane(q *sequencer) bool {
	for i, l := range g.lanes {
		if l == nil {
			g.lanes[i] = q
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
	for _, e := range stored {
		q, err := g.restore(ctx, e)
		if err != nil {
			return fmt.Errorf("resume escrow %d: %w", e.Snapshot.EscrowId, err)
		}
		g.all[q.id()] = q
		q.mu.Lock()
		tail := q.adoptTail(ctx)
		q.mu.Unlock()
		switch {
		case tail != nil:
			g.log.Warn("resumed escrow waits for a host; it will be settled once the host answers", "escrow", q.id(), "err", tail)
			g.settleLater(q)
		case q.status == StatusSettling || e.Snapshot.Epoch < epoch:
			g.settleLater(q)
		case !g.takeLane(q):
			g.settleLater(q) // more open escrows than lanes
		}
		g.log.Info("resumed escrow", "escrow", q.id(), "nonce", q.replica.Nonce(), "status", q.status)
	}
	g.bg.Add(2)
	go g.every(g.cfg.FlushEvery, g.flushLanes)
	go g.every(g.cfg.EpochPoll, g.settleEnded)
	return nil
}

// restore rebuilds a sequencer from its stored diffs.
func (g *Gateway) restore(ctx context.Context, e StoredEscrow) (*sequencer, error) {
	q, err := g.newSequencer(ctx, e.Snapshot)
	if err != nil {
		return nil, err
	}
	q.status = e.Status
	for from := uint64(1); ; {
		diffs, err := g.state.Diffs(ctx, q.id(), from, 512)
		if err != nil {
			return nil, err
		}
		for _, sd := range diffs {
			var d sessionpb.Diff
			if err := d.Unmarshal(sd.Data); err != nil {
				return nil, fmt.Errorf("stored diff %d: %w", sd.Nonce, err)
			}
			if _, err := q.replica.Apply(&d); err != nil {
				return nil, fmt.Errorf("replaying stored diff %d: %w", sd.Nonce, err)
			}
			from = sd.Nonce + 1
		}
		if len(diffs) < 512 {
			break
		}
	}
	// Optimistic: hosts that are behind answer 409 and are replayed.
	for i := range q.members {
		q.acked[i] = q.replica.Nonce()
	}
	q.sigNonce = q.replica.Nonce()
	q.tailUnknown = q.status != StatusSettled
	return q, nil
}

// newSequencer resolves the group's hosts and starts an empty replica.
func (g *Gateway) newSequencer(ctx context.Context, snap *sessionpb.EscrowSnapshot) (*sequencer, error) {
	replica, err := session.New(snap, g.auth)
	if err != nil {
		return nil, err
	}
	replica.UseMemo(g.memo)
	q := &sequencer{g: g, snap: snap, replica: replica, status: StatusOpen,
		pending: map[string]*pooled{}, known: map[string]bool{}, acked: map[int]uint64{}, down: map[int]time.Time{}, sigs: map[uint32]*sessionpb.StateSignature{}}
	byAddr := map[signing.Address]*member{}
	for slot, raw := range snap.Group {
		a, err := signing.AddressFromBytes(raw)
		if err != nil {
			return nil, err
		}
		m, ok := byAddr[a]
		if !ok {
			url, err := g.chain.HostURL(ctx, a)
			if err != nil {
				return nil, err
			}
			m = &member{addr: a, url: url}
			byAddr[a] = m
			q.members = append(q.members, m)
		}
		m.slots = append(m.slots, uint32(slot))
	}
	q.waiting = make([]int, len(q.members))
	return q, nil
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

// Complete runs one request: it starts it in a session, streams the
// executor's text to emit, and on an executor that refuses, dies or stalls,
// retries under a new nonce on another host. Text already emitted is not
// emitted twice: a retry's output must repeat it (deterministic models do)
// or the request fails. req must have been normalized.
func (g *Gateway) Complete(ctx context.Context, req executor.Request, emit func(string) error) (*Completion, error) {
	var delivered []byte // text already given to emit, across attempts
	rotations := 0       // escrows retired for this request
	var lastErr error
	for attempt := 1; attempt <= g.cfg.Attempts; attempt++ {
		q, err := g.sequencerFor(ctx)
		if err != nil {
			return nil, err
		}
		began := time.Now()
		st, err := q.start(ctx, req)
		if errors.Is(err, errEscrowLow) {
			g.retire(q)
			if rotations++; rotations > maxRotations {
				return nil, fmt.Errorf("%w: %d fresh escrows could not take the request", ErrNoHost, maxRotations)
			}
			attempt-- // not the executor's fault
			continue
		}
		if err != nil {
			return nil, err
		}
		nonce, url, addr := st.nonce, st.url, st.addr
		g.metrics.phase(PhaseSequence, began)
		began = time.Now()
		// The stream is asked for at once, beside the diff's delivery: the
		// executor starts the inference when it has checked the diff, and
		// its stream waits for it. A delivery that fails ends the stream.
		streamCx, cancelStream := context.WithCancel(ctx)
		taken := make(chan error, 1)
		go func() {
			err := st.sent.wait(streamCx, st.exec)
			if err == nil {
				g.metrics.phase(PhaseExecutor, began)
			} else {
				cancelStream()
			}
			taken <- err
		}()
		// Nothing of the answer reaches the app before the diff that
		// started it is stored: the app's answer is always on the books.
		// Pieces that come before the write has landed are held, and the
		// stream read on meanwhile.
		var storeErr error
		isStored := false
		stored := func(block bool) (bool, error) {
			if !isStored {
				if block {
					storeErr = <-st.stored // the write is not cut short by ctx
				} else {
					select {
					case storeErr = <-st.stored:
					default:
						return false, nil
					}
				}
				isStored = true
			}
			return true, storeErr
		}
		var text []byte
		var held []string // pieces not yet passed on
		pass := func(piece string) error {
			text = append(text, piece...)
			n := min(len(text), len(delivered))
			if string(text[:n]) != string(delivered[:n]) {
				return errDiverged
			}
			if len(text) <= len(delivered) {
				return nil // a retry repeating what the app already has
			}
			fresh := text[max(len(delivered), len(text)-len(piece)):]
			delivered = append(delivered, fresh...)
			return emit(string(fresh))
		}
		release := func() error {
			for len(held) > 0 {
				piece := held[0]
				held = held[1:]
				if err := pass(piece); err != nil {
					return err
				}
			}
			return nil
		}
		forward := func(piece string) error {
			held = append(held, piece)
			if ok, err := stored(false); !ok || err != nil {
				return err
			}
			return release()
		}
		res, err := g.peers.inference(streamCx, url, addr, q.id(), nonce, req, g.cfg.StallTimeout, forward)
		g.metrics.phase(PhaseStream, began)
		if _, serr := stored(true); serr != nil {
			cancelStream()
			<-taken
			return nil, serr // the diff stays unwritten: its nonce is taken (sequencer.store)
		}
		if err == nil {
			err = release()
		}
		cancelStream()
		// A whole answer stands whatever became of the delivery: the
		// executor streams only a diff it has checked. A failed stream
		// whose delivery failed is the delivery's failure (a delivery still
		// pending was cut by cancelStream above and does not count).
		if deliveryErr := <-taken; err != nil && deliveryErr != nil && !errors.Is(deliveryErr, context.Canceled) && ctx.Err() == nil {
			// The executor did not take the diff that starts the request:
			// retry on another host, as if it had failed the stream.
			lastErr = deliveryErr
			g.metrics.retries.Inc()
			g.log.Warn("executor did not take the start; retrying on another host", "escrow", q.id(), "nonce", nonce, "attempt", attempt, "err", deliveryErr)
			q.markDown(url)
			continue
		}
		if err == nil {
			if len(text) < len(delivered) {
				return nil, fmt.Errorf("%w: the retried answer is shorter than what was already streamed", ErrNoHost)
			}
			// Verified now, so that they are carried by the next diff even
			// if the host dies now; the memo makes carrying them cheap.
			q.admit(st.exec, res.Txs)
			c := &Completion{Text: string(text), Usage: res.Usage, FinishReason: res.FinishReason, Model: req.Model,
				EscrowID: q.id(), Nonce: nonce, Attempts: attempt, Cost: q.cost(res.Usage, req)}
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, errDiverged) {
			return nil, fmt.Errorf("%w: the executor died mid-stream and the retry's answer differs from what was already streamed", ErrNoHost)
		}
		if !isHostError(err) {
			return nil, err // the app went away: emit failed
		}
		lastErr = err
		g.metrics.retries.Inc()
		g.log.Warn("executor failed; retrying on another host", "escrow", q.id(), "nonce", nonce, "attempt", attempt, "err", err)
		q.markDown(url)
	}
	return nil, fmt.Errorf("%w after %d attempts: %v", ErrNoHost, g.cfg.Attempts, lastErr)
}

var errDiverged = errors.New("retried output diverged")

// maxRotations bounds how many escrows one request may retire for being
// too low: a request no fresh escrow can cover must not lock escrow after
// escrow.
const maxRotations = 2

func isHostError(err error) bool {
	var he *HostError
	return errors.As(err, &he)
}

// sequencerFor returns an escrow that takes new requests, in round robin
// over the lanes, creating the lane's escrow if it has none.
func (g *Gateway) sequencerFor(ctx context.Context) (*sequencer, error) {
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
		if q := g.lanes[lane]; q != nil {
			g.mu.Unlock()
			return q, nil
		}
		g.mu.Unlock()
		select {
		case g.creating[lane] <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		g.mu.Lock()
		q := g.lanes[lane]
		g.mu.Unlock()
		if q != nil { // another request created it while this one waited
			<-g.creating[lane]
			return q, nil
		}
		q, err := g.createEscrow(ctx)
		<-g.creating[lane]
		if err != nil {
			return nil, err
		}
		g.mu.Lock()
		g.all[q.id()] = q
		if g.lanes[lane] == nil {
			g.lanes[lane] = q
		}
		g.mu.Unlock()
	}
}

// createEscrow locks a new escrow in the current epoch.
func (g *Gateway) createEscrow(ctx context.Context) (*sequencer, error) {
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
	snap, err := g.chain.CreateEscrow(ctx, g.cfg.EscrowAmount)
	if err != nil {
		return nil, err
	}
	q, err := g.newSequencer(ctx, snap)
	if err != nil {
		return nil, err
	}
	if err := g.state.AddEscrow(ctx, snap); err != nil {
		return nil, err
	}
	g.metrics.escrows.Inc()
	g.log.Info("escrow created", "escrow", snap.EscrowId, "epoch", snap.Epoch, "amount", snap.Amount, "group", len(snap.Group))
	return q, nil
}

// retire stops new requests on q and settles it in the background.
func (g *Gateway) retire(q *sequencer) {
	g.mu.Lock()
	for i, l := range g.lanes {
		if l == q {
			g.lanes[i] = nil
		}
	}
	g.mu.Unlock()
	g.settleLater(q)
}

func (g *Gateway) settleLater(q *sequencer) {
	q.mu.Lock()
	if q.settling {
		q.mu.Unlock()
		return
	}
	q.settling = true
	q.mu.Unlock()
	g.bg.Add(1)
	go func() {
		defer g.bg.Done()
		for attempt := 0; ; attempt++ {
			err := q.settle(g.loopCx)
			if err == nil {
				g.forget(q)
				return
			}
			if g.loopCx.Err() != nil {
				return
			}
			g.log.Warn("settlement not done; retrying", "escrow", q.id(), "err", err)
			select {
			case <-g.loopCx.Done():
				return
			case <-time.After(min(time.Duration(attempt+1)*2*time.Second, 30*time.Second)):
			}
		}
	}()
}

func (g *Gateway) forget(q *sequencer) {
	g.mu.Lock()
	delete(g.all, q.id())
	g.mu.Unlock()
}

// SettleAll retires every open escrow and waits until each is settled or
// ctx ends.
func (g *Gateway) SettleAll(ctx context.Context) error {
	g.mu.Lock()
	qs := make([]*sequencer, 0, len(g.all))
	for _, q := range g.all {
		qs = append(qs, q)
	}
	clear(g.lanes)
	g.mu.Unlock()
	errs := make([]error, len(qs))
	var wg sync.WaitGroup
	for i, q := range qs {
		wg.Add(1)
		go func() { // escrows settle independently: each waits on its own hosts
			defer wg.Done()
			if errs[i] = q.settle(ctx); errs[i] == nil {
				g.forget(q)
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
	all := make([]*sequencer, 0, len(g.all))
	for _, q := range g.all {
		all = append(all, q)
	}
	g.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.HostTimeout)
	for _, q := range all {
		q.sendHeld(ctx)
	}
	cancel()
	g.stop()
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
	for _, q := range lanes {
		if q != nil {
			q.flush(g.loopCx, g.cfg.FlushEvery)
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
	var old []*sequencer
	for _, q := range g.all {
		if q.snap.Epoch < epoch {
			old = append(old, q)
		}
	}
	g.mu.Unlock()
	for _, q := range old {
		g.log.Info("epoch turned; settling escrow", "escrow", q.id(), "escrow_epoch", q.snap.Epoch, "epoch", epoch)
		g.retire(q)
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
	// NextExecutor is the URL of the host that executes the next nonce.
	NextExecutor string `json:"next_executor"`
	Current      bool   `json:"current"`
}

// Escrows describes every escrow not yet settled, by id.
func (g *Gateway) Escrows() []EscrowView {
	g.mu.Lock()
	qs := make([]*sequencer, 0, len(g.all))
	for _, q := range g.all {
		qs = append(qs, q)
	}
	lanes := slices.Clone(g.lanes)
	g.mu.Unlock()
	sort.Slice(qs, func(i, j int) bool { return qs[i].id() < qs[j].id() })
	out := make([]EscrowView, 0, len(qs))
	for _, q := range qs {
		q.mu.Lock()
		root := q.replica.Root()
		v := EscrowView{ID: q.id(), Epoch: q.snap.Epoch, Status: q.status, Phase: q.replica.Phase().String(), Nonce: q.replica.Nonce(),
			Root: fmt.Sprintf("%x", root), Balance: q.replica.Balance(), NextExecutor: q.members[q.executorMember(q.replica.Nonce()+1)].url,
			Current: slices.Contains(lanes, q)}
		q.mu.Unlock()
		out = append(out, v)
	}
	return out
}
