// Package host is the session engine of a host: it applies the gateway's
// diffs through the protocol package, persists them before publishing them,
// signs roots, runs the inferences it executes, validates its peers' work,
// and keeps a mempool of signed txs for the gateway to collect.
//
// The engine is transport-free; http.go serves it, and Daemon (daemon.go)
// runs both as the host process, with its storage and its background work:
// recovery, epoch following, rewards claims and self-settlement. The chain
// and the peers are reached through small interfaces, so tests run it
// against a fake chain and real storage.
package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/httpauth"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/store"
)

// Escrows is what the host reads from the chain about escrows.
type Escrows interface {
	// EscrowSnapshot returns the escrow's snapshot, or an error wrapping
	// ErrUnknownEscrow if the chain has no such escrow.
	EscrowSnapshot(ctx context.Context, escrowID uint64) (*sessionpb.EscrowSnapshot, error)
}

// EscrowSeq is what the host reads to tell an escrow its chain node has
// not applied yet from one that does not exist (unseen.go).
type EscrowSeq interface {
	// NextEscrowID is the id the chain gives the next escrow it creates,
	// as the host's chain node knows it now.
	NextEscrowID(ctx context.Context) (uint64, error)
}

// Config assembles an Engine.
type Config struct {
	// Key signs this host's txs and state signatures.
	Key signing.Signer
	// Account is the participant account the host serves as, when Key is a
	// warm key the account granted (through x/authz). Zero means Key's own
	// address.
	Account  signing.Address
	Store    store.Store
	Escrows  Escrows
	Executor executor.Executor
	// Auth accepts warm keys; nil accepts only holders' own keys.
	Auth session.Authorizer
	// SnapshotEvery is K: a snapshot every K nonces and at settlement
	// (default 500).
	SnapshotEvery uint64
	// LoadWait is how long a request waits for its session to be recovered
	// before it gets 503 initializing (default 5s).
	LoadWait time.Duration
	// Now stamps ConfirmStart and times out stalled inferences (default
	// time.Now). The protocol never reads it; only this host's txs do.
	Now    func() time.Time
	Logger *slog.Logger
	// Metrics receive what the engine records (NewMetrics); New adds its
	// count of loaded sessions by phase to their registry, so they serve
	// this engine only. Nil records nothing, and /metrics is not served.
	Metrics *Metrics
	// Peers finds the other members' hosts for re-gossip; nil gossips nothing.
	Peers Peers
	// StartWait is how long an inference request waits for the diff that
	// starts it, when it arrives first (default 5s).
	StartWait time.Duration
	// ChainID is the chain this host serves on. Signed HTTP requests name
	// it (package httpauth), so one signed for another chain is refused.
	ChainID string
	// MissFor is how long an escrow that failed to load (the chain does
	// not know it, this host holds no slot of it) is remembered, so that
	// requests naming it are answered at once instead of asking the chain
	// again (default 2s). It is short: a chain node a block behind the
	// gateway learns of a new escrow soon.
	MissFor time.Duration
	// Lookups bounds the escrow lookups on the chain in flight at once
	// (default 4): requests naming many unknown escrows queue for them.
	Lookups int
	// Seq reads the chain's next escrow id for UnseenWait; nil waits for
	// no escrow.
	Seq EscrowSeq
	// UnseenWait is how long the load of an escrow the chain node does not
	// know waits for the node to catch up, when its id is at most
	// unseenAhead past the node's next one (unseen.go): a node a block
	// behind the gateway's has not applied the escrow the gateway has just
	// made. Keep it below LoadWait, or the request gets 503 first. Zero or
	// negative: such an escrow is unknown at once.
	UnseenWait time.Duration
	// Workers are the accounts of the external workers this host accepts
	// on its worker routes. None: the host runs its jobs in process.
	Workers []signing.Address
	// InferenceJobs runs this host's inferences as jobs of its external
	// workers, their output streamed back through the worker routes
	// (inferencejobs.go), instead of on Executor. It needs Workers.
	InferenceJobs bool
	// ProxyValidation hands this host's validations to a proxy host
	// (proxy.go): the host samples and re-runs nothing itself, answers its
	// proxy on POST /v1/proxy/follow, and carries the proxy's votes.
	ProxyValidation bool
	// Proxy makes the engine a proxy host's replica of its primary's
	// sessions (NewProxy): it serves no session route, so nothing but the
	// primary feeds it.
	Proxy bool
	// RuntimeVersion is the approved runtime version this process serves
	// behind versiond; it serves only the escrows created under it
	// (checkRuntime). Empty serves every escrow.
	RuntimeVersion string
}

// Engine serves the sessions of the escrows whose group this host is in.
type Engine struct {
	cfg  Config
	addr signing.Address
	log  *slog.Logger

	mu       sync.Mutex
	sessions map[uint64]*entry
	ready    chan struct{}     // closed once storage is open and recovery may run
	wg       sync.WaitGroup    // background validations and gossip pushes
	gossiped gossipLog         // own txs pushed to peers (regossip.go)
	memo     *signing.Memo     // tx signatures made or checked already: a diff carrying them checks a hash
	runs     *runs             // inferences started beside their diff's durable write (run.go)
	lookups  chan struct{}     // a slot per escrow lookup on the chain in flight
	next     nextID            // the chain's next escrow id, shared by the loads waiting for it (unseen.go)
	plane    jobPlane          // the job queue and the validations awaited (jobs.go)
	infer    executor.Executor // runs this host's inferences: Config.Executor, or the workers (jobExecutor)
	streams  jobStreams        // inference jobs whose output a user waits for (inferencejobs.go)
}

// DefaultUnseenWait is the daemon's UnseenWait: a few blocks at the
// chain's default block time of 1 s, and below LoadWait's default, so the
// request gets its answer rather than a 503.
const DefaultUnseenWait = 3 * time.Second

// memoSize bounds the engine's memo of checked tx signatures.
const memoSize = 1 << 16

// Errors the transport maps to statuses.
var (
	ErrUnknownEscrow = errors.New("unknown escrow")
	ErrNotMember     = errors.New("not a member of the escrow's group")
	ErrBadInput      = errors.New("bad input")
	ErrNotExecutor   = errors.New("not the executor")
	ErrInitializing  = errors.New("initializing")
	ErrForbidden     = errors.New("forbidden")
	// ErrNotIncludable is a gossiped tx the session cannot include.
	ErrNotIncludable = errors.New("the session cannot include this tx")
	// ErrOverdue is an executor refusing new work while the gateway leaves
	// its own txs out past the escrow's seal grace (409).
	ErrOverdue = errors.New("own txs overdue")
)

// New returns an engine. It serves nothing until MarkReady is called, so a
// daemon can bind its listener before storage is open.
func New(cfg Config) *Engine {
	if cfg.SnapshotEvery == 0 {
		cfg.SnapshotEvery = 500
	}
	if cfg.LoadWait <= 0 {
		cfg.LoadWait = 5 * time.Second
	}
	if cfg.StartWait <= 0 {
		cfg.StartWait = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MissFor <= 0 {
		cfg.MissFor = 2 * time.Second
	}
	if cfg.Lookups <= 0 {
		cfg.Lookups = 4
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	addr := cfg.Account
	if addr == (signing.Address{}) {
		addr = cfg.Key.PubKey().Address()
	}
	e := &Engine{
		cfg:      cfg,
		addr:     addr,
		log:      cfg.Logger,
		sessions: make(map[uint64]*entry),
		ready:    make(chan struct{}),
		memo:     signing.NewMemo(memoSize),
		runs:     newRuns(),
		lookups:  make(chan struct{}, cfg.Lookups),
	}
	e.infer = cfg.Executor
	if cfg.InferenceJobs && len(cfg.Workers) > 0 {
		e.infer = jobExecutor{e}
	}
	e.infer = cfg.Metrics.measure(e.infer)
	e.cfg.Executor = cfg.Metrics.measure(cfg.Executor)
	cfg.Metrics.countSessions(e)
	return e
}

// signTx signs tx for the escrow of snap with the host's key and remembers
// the signature, so the diff that carries the tx back costs no
// verification.
func (e *Engine) signTx(snap *sessionpb.EscrowSnapshot, tx *sessionpb.Tx) error {
	if err := session.SignTx(e.cfg.Key, snap.ChainId, snap.EscrowId, tx); err != nil {
		return err
	}
	if msg, err := session.TxSignBytes(snap.ChainId, snap.EscrowId, tx); err == nil {
		e.memo.Remember(tx.Sig.PubKey, msg, tx.Sig.Sig)
	}
	return nil
}

// SetStore gives the engine its storage once it is open; the daemon binds
// its listener before storage is ready. Call it before MarkReady.
func (e *Engine) SetStore(s store.Store) { e.cfg.Store = s }

// SetChainID names the chain the host serves on, once the daemon has
// asked its node; signed requests must name it. Call it before MarkReady:
// every route that takes a signed request answers 503 until then.
func (e *Engine) SetChainID(id string) { e.cfg.ChainID = id }

// ChainID is the chain the host serves on.
func (e *Engine) ChainID() string { return e.cfg.ChainID }

// Address is the participant account the host serves as.
func (e *Engine) Address() signing.Address { return e.addr }

// audience is what a signed request to this host must be signed for.
func (e *Engine) audience() httpauth.Audience {
	return httpauth.Audience{ChainID: e.cfg.ChainID, Host: e.addr}
}

// MarkReady opens session routes: storage is usable from now on. It
// starts the job plane first, on the queue SetJobs gave or, without one,
// on a queue in memory.
func (e *Engine) MarkReady() {
	select {
	case <-e.ready:
	default:
		if err := e.startJobs(); err != nil {
			e.log.Error("start the job queue; validations do not run", "err", err)
		}
		close(e.ready)
	}
}

// Ready reports whether storage is open.
func (e *Engine) Ready() bool {
	select {
	case <-e.ready:
		return true
	default:
		return false
	}
}

// entry is one escrow's live session. mu serializes everything that reads
// or changes the session, its mempool and its payloads.
type entry struct {
	done    chan struct{} // closed when the load finished, well or not
	loadErr error         // set before done is closed

	mu       sync.Mutex
	loaded   bool
	evicted  bool // memory went ahead of storage: dropped, to be recovered afresh
	s        *session.Session
	snap     *sessionpb.EscrowSnapshot
	slots    []uint32 // the slots this host holds
	pool     *mempool
	requests map[uint64]executor.Request // payloads of live inferences, for executing and validating
	seen     map[uint64]time.Time        // when this host first saw an open record, for timeouts
	ran      map[uint64]bool             // inferences this host has started executing
	nonce    atomic.Uint64               // the applied nonce, for streams that must not take mu
}

// session returns the escrow's entry, loading or creating it on first use
// (lazy recovery), locked. A load runs in its own goroutine; a caller waits
// for it at most LoadWait, then gets ErrInitializing (503) and can retry,
// while the load goes on.
func (e *Engine) session(ctx context.Context, escrowID uint64) (*entry, error) {
	return e.acquire(ctx, escrowID, e.cfg.LoadWait)
}

// acquire is session with an explicit wait; 0 waits as long as ctx allows.
func (e *Engine) acquire(ctx context.Context, escrowID uint64, wait time.Duration) (*entry, error) {
	en, err := e.loaded(ctx, escrowID, wait)
	if err != nil {
		return nil, err
	}
	en.mu.Lock()
	if en.evicted {
		en.mu.Unlock()
		return e.acquire(ctx, escrowID, wait)
	}
	return en, nil
}

// escrow returns the escrow's snapshot, loading its session if needed,
// without taking the session's lock: a request is authorized against it
// before any work, and a stream must not wait for a diff's durable write.
func (e *Engine) escrow(ctx context.Context, escrowID uint64) (*sessionpb.EscrowSnapshot, error) {
	en, err := e.loaded(ctx, escrowID, e.cfg.LoadWait)
	if err != nil {
		return nil, err
	}
	return en.snap, nil // set before done was closed, and never after
}

// loaded returns the escrow's entry once its load has finished well,
// starting the load if needed, unlocked. It waits at most wait (0: as
// long as ctx allows), then answers ErrInitializing.
func (e *Engine) loaded(ctx context.Context, escrowID uint64, wait time.Duration) (*entry, error) {
	if !e.Ready() {
		return nil, ErrInitializing
	}
	en := e.entryFor(escrowID)
	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-en.done: // already loaded: never lose a race with a short timer
	default:
		select {
		case <-en.done:
		case <-timeout:
			return nil, fmt.Errorf("%w: escrow %d is still being recovered; retry shortly", ErrInitializing, escrowID)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if en.loadErr != nil {
		return nil, en.loadErr
	}
	return en, nil
}

// evict drops en, whose memory went ahead of what storage holds: the
// escrow's next use recovers it from storage, as a restart would. Call
// with en.mu held.
func (e *Engine) evict(en *entry) {
	en.evicted, en.loaded = true, false
	id := en.snap.EscrowId
	e.mu.Lock()
	if e.sessions[id] == en {
		delete(e.sessions, id)
	}
	e.mu.Unlock()
	e.log.Warn("session dropped after a failed write; it is recovered from storage on its next use", "escrow", id)
}

// OpenSessions counts the sessions this host serves that are not
// finished: loaded and not yet in their settlement phase (they may take
// more diffs and inferences), being loaded, or in use right now. It never
// waits for a session's lock, so a busy session counts as open rather than
// holding up the count; and it asks the chain nothing, so it is cheap to
// poll. A session in its settlement phase has its final root signed; the
// chain settles it from signatures already handed out.
func (e *Engine) OpenSessions() int {
	n := 0
	for _, en := range e.entries() {
		select {
		case <-en.done:
		default:
			n++ // still loading
			continue
		}
		if en.loadErr != nil {
			continue // no session: the chain or storage does not know it
		}
		if !en.mu.TryLock() {
			n++
			continue
		}
		if en.loaded && en.s.Phase() != sessionpb.Phase_PHASE_SETTLEMENT {
			n++
		}
		en.mu.Unlock()
	}
	return n
}

// entryFor returns the escrow's entry, starting its load if it has none.
// An entry whose load failed stays for MissFor (loadEntry), so requests
// naming an escrow the chain does not know meet the same error at once.
func (e *Engine) entryFor(escrowID uint64) *entry {
	e.mu.Lock()
	defer e.mu.Unlock()
	en, ok := e.sessions[escrowID]
	if !ok {
		en = &entry{done: make(chan struct{})}
		e.sessions[escrowID] = en
		go e.loadEntry(escrowID, en)
	}
	return en
}

// loadEntry loads the entry once. A failed load is remembered for MissFor,
// then forgotten, so a later request tries again (the chain may have
// caught up, storage come back).
func (e *Engine) loadEntry(escrowID uint64, en *entry) {
	err := e.load(context.Background(), escrowID, en)
	if err != nil {
		en.loadErr = err
		time.AfterFunc(e.cfg.MissFor, func() {
			e.mu.Lock()
			if e.sessions[escrowID] == en {
				delete(e.sessions, escrowID)
			}
			e.mu.Unlock()
		})
	}
	close(en.done)
	e.runs.poke() // streams waiting on this escrow look again
}

// load recovers the escrow from storage, or starts it from the chain's
// snapshot if this host has never seen it. It takes en.mu only to publish
// the session: Tick, Settleables and the metrics lock every entry, loading
// or not, and a load may wait on storage or the chain.
func (e *Engine) load(ctx context.Context, escrowID uint64, en *entry) error {
	var snap *sessionpb.EscrowSnapshot
	info, err := e.cfg.Store.Session(ctx, escrowID)
	switch {
	case err == nil:
		snap = info.Snapshot
	case errors.Is(err, store.ErrNotFound):
		if snap, err = e.lookupNew(ctx, escrowID); err != nil {
			return err
		}
		if snap.EscrowId != escrowID {
			return fmt.Errorf("chain returned escrow %d when asked for %d", snap.EscrowId, escrowID)
		}
	default:
		return err
	}
	if err := e.checkRuntime(snap); err != nil {
		return err
	}
	slots := e.slotsIn(snap)
	if len(slots) == 0 {
		return fmt.Errorf("%w: host %s holds no slot of escrow %d", ErrNotMember, e.addr, escrowID)
	}
	var s *session.Session
	if info != nil {
		start := time.Now()
		var rec store.Recovery
		if s, rec, err = store.Recover(ctx, e.cfg.Store, escrowID, e.cfg.Auth); err != nil {
			return err
		}
		e.log.Info("recovered session", "escrow", escrowID, "nonce", s.Nonce(), "snapshot", rec.SnapshotNonce, "replayed", rec.Replayed, "index_rebuilt", rec.IndexRebuilt, "took", time.Since(start))
	} else {
		if err := e.cfg.Store.CreateSession(ctx, snap); err != nil {
			return err
		}
		if s, err = session.New(snap, e.cfg.Auth); err != nil {
			return err
		}
	}
	s.UseMemo(e.memo)
	en.mu.Lock()
	defer en.mu.Unlock()
	en.s, en.snap, en.slots = s, snap, slots
	en.pool = newMempool(e.cfg.Now)
	en.requests = map[uint64]executor.Request{}
	en.seen = map[uint64]time.Time{}
	en.ran = map[uint64]bool{}
	en.nonce.Store(s.Nonce())
	en.loaded = true
	e.cfg.Metrics.sessionLoaded(s.Phase())
	return nil
}

// lookup asks the chain for an escrow's snapshot, holding one of the
// Lookups slots, so requests naming many unknown escrows cost at most that
// many lookups at a time.
func (e *Engine) lookup(ctx context.Context, escrowID uint64) (*sessionpb.EscrowSnapshot, error) {
	e.lookups <- struct{}{}
	defer func() { <-e.lookups }()
	return e.cfg.Escrows.EscrowSnapshot(ctx, escrowID)
}

func (e *Engine) slotsIn(snap *sessionpb.EscrowSnapshot) []uint32 {
	var slots []uint32
	for i, a := range snap.Group {
		if string(a) == string(e.addr[:]) {
			slots = append(slots, uint32(i))
		}
	}
	return slots
}

func (en *entry) holds(slot uint32) bool {
	for _, s := range en.slots {
		if s == slot {
			return true
		}
	}
	return false
}

// staticEscrows serves one fixed snapshot: for benchmarks and tools that
// replay a known escrow without a chain.
type staticEscrows struct{ snap *sessionpb.EscrowSnapshot }

func (s staticEscrows) EscrowSnapshot(_ context.Context, id uint64) (*sessionpb.EscrowSnapshot, error) {
	if id != s.snap.EscrowId {
		return nil, fmt.Errorf("%w: %d", ErrUnknownEscrow, id)
	}
	return s.snap, nil
}
