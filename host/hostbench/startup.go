package hostbench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/host"
	"github.com/devshard/devshard/internal/httpserve"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionbench"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/store"
)

// StartupOptions shape the stored state a startup recovers. Zero fields take
// the defaults the speed target names: 1,000 sessions of 1,000 nonces, a
// snapshot every 500 nonces (the host's default K) and the host's default 4
// recovery workers.
type StartupOptions struct {
	Sessions      int
	Nonces        int
	SnapshotEvery uint64
	Workers       int
}

func (o StartupOptions) withDefaults() StartupOptions {
	if o.Sessions <= 0 {
		o.Sessions = 1000
	}
	if o.Nonces <= 0 {
		o.Nonces = 1000
	}
	if o.SnapshotEvery == 0 {
		o.SnapshotEvery = store.DefaultSnapshotEvery
	}
	if o.Workers <= 0 {
		o.Workers = host.DefaultConfig().Recovery.Workers
	}
	return o
}

// Startup is a store holding Sessions sessions of Nonces diffs each, with
// the snapshots a host writes, and what a daemon needs to serve them.
//
// Signing and applying a million diffs takes longer than the benchmark may
// (about a millisecond a diff here), so only what recovery reads is built
// per session, and it is built genuinely:
//
//   - One real session (sessionbench's steady-state pipeline) is run to
//     Nonces. A session's state depends on its escrow id only through the
//     id itself: records, host stats, books and the sealed accumulator hash
//     no escrow id, and txs carry none outside their signatures. So the
//     state of escrow X after the same txs is the base state with EscrowId
//     set to X, and session.Restore computes its root for X.
//   - For every escrow X, the diffs from the last snapshot's nonce S on (S
//     itself, whose stored root recovery checks the snapshot against, and
//     the tail it replays) are the base diffs re-signed for X (every host
//     tx and the gateway's diff signature) with X's roots, each applied to
//     X's replica with every check. The snapshot is that replica's state at
//     S.
//   - The diffs before S, which recovery never reads, are the base diffs
//     with EscrowId set to X: filler of the real size and shape, with the
//     real sealed-index rows, but signed for the base escrow, so a replay
//     from nonce 1 would reject them. Run therefore fails unless every
//     session was recovered from its snapshot, replaying exactly the tail.
//
// Host state signatures are not stored: recovery does not read them.
type Startup struct {
	opts      StartupOptions
	key       *signing.PrivKey
	escrows   Escrows
	snapNonce uint64
}

// baseEscrow is the escrow id the shared real session runs under; no stored
// session has it.
const baseEscrow = 1 << 40

// SnapshotNonce is the nonce of every session's latest snapshot, where
// recovery starts (0: no snapshot).
func (s *Startup) SnapshotNonce() uint64 { return s.snapNonce }

// Tail is how many diffs recovery replays per session.
func (s *Startup) Tail() int { return s.opts.Nonces - int(s.snapNonce) }

// Options are the options the state was built with, defaults applied.
func (s *Startup) Options() StartupOptions { return s.opts }

// BuildStartup fills st, which must be empty, and reports progress (sessions
// stored so far) if progress is not nil.
func BuildStartup(ctx context.Context, st store.Store, o StartupOptions, progress func(done int)) (*Startup, error) {
	o = o.withDefaults()
	p, err := sessionbench.NewPipeline(baseEscrow, o.Nonces)
	if err != nil {
		return nil, err
	}
	f := p.Fixture
	s := &Startup{opts: o, key: f.SlotKey(0), escrows: Escrows{}}
	s.snapNonce = uint64(o.Nonces) - uint64(o.Nonces)%o.SnapshotEvery
	first := max(s.snapNonce, 1) // first nonce stored genuinely

	// Replay the base session up to the genuine part: its state there, and
	// the sealed rows of every filler diff.
	base, err := session.New(f.Snapshot, nil)
	if err != nil {
		return nil, err
	}
	sealed := make([][]*sessionpb.InferenceRecord, first-1)
	for i := range sealed {
		res, err := base.Apply(p.Diffs[i])
		if err != nil {
			return nil, fmt.Errorf("base session, diff %d: %w", i+1, err)
		}
		sealed[i] = res.Sealed
	}
	before := base.State()

	for id := uint64(1); id <= uint64(o.Sessions); id++ {
		if err := s.storeSession(ctx, st, f, p, id, first, before, sealed); err != nil {
			return nil, err
		}
		if progress != nil {
			progress(int(id))
		}
	}
	return s, nil
}

// storeSession stores escrow id: filler diffs below first, genuine diffs
// from first on, and the snapshot.
func (s *Startup) storeSession(ctx context.Context, st store.Store, f *sessiontest.Fixture, p *sessionbench.Pipeline,
	id, first uint64, before *sessionpb.SessionState, sealed [][]*sessionpb.InferenceRecord) error {
	snap := *f.Snapshot
	snap.EscrowId = id
	s.escrows[id] = &snap
	if err := st.CreateSession(ctx, &snap); err != nil {
		return err
	}
	const chunk = 500
	batch := make([]store.Diff, 0, chunk)
	add := func(d *sessionpb.Diff, root []byte, recs []*sessionpb.InferenceRecord) error {
		data, err := d.Marshal()
		if err != nil {
			return err
		}
		rows, err := sealedRows(id, d.Nonce, recs)
		if err != nil {
			return err
		}
		batch = append(batch, store.Diff{EscrowID: id, Nonce: d.Nonce, Root: root, Data: data, Sealed: rows})
		if len(batch) == chunk {
			err = st.AppendDiffs(ctx, batch)
			batch = batch[:0]
		}
		return err
	}
	for n := uint64(1); n < first; n++ {
		d := *p.Diffs[n-1] // shallow: only the escrow id changes
		d.EscrowId = id
		if err := add(&d, d.PostStateRoot, sealed[n-1]); err != nil {
			return err
		}
	}

	var replica *session.Session
	var err error
	if first > 1 {
		state := *before
		state.EscrowId = id
		replica, err = session.Restore(&snap, &state, nil)
	} else {
		replica, err = session.New(&snap, nil)
	}
	if err != nil {
		return fmt.Errorf("escrow %d: %w", id, err)
	}
	var snapshot *store.Snapshot
	for n := first; n <= uint64(s.opts.Nonces); n++ {
		d, err := resign(f, p.Diffs[n-1], replica)
		if err != nil {
			return fmt.Errorf("escrow %d, diff %d: %w", id, n, err)
		}
		res, err := replica.Apply(d)
		if err != nil {
			return fmt.Errorf("escrow %d, re-signed diff %d does not apply: %w", id, n, err)
		}
		if err := add(d, res.Root[:], res.Sealed); err != nil {
			return err
		}
		if n == s.snapNonce {
			state, err := replica.State().Marshal()
			if err != nil {
				return err
			}
			snapshot = &store.Snapshot{EscrowID: id, Nonce: n, Root: res.Root[:], State: state}
		}
	}
	if len(batch) > 0 {
		if err := st.AppendDiffs(ctx, batch); err != nil {
			return err
		}
	}
	if snapshot != nil {
		return st.PutSnapshot(ctx, *snapshot)
	}
	return nil
}

// resign returns base diff d for replica's escrow: every host tx signed
// again by its slot's key, the post-state root computed on replica, and the
// gateway's signature over the result.
func resign(f *sessiontest.Fixture, d *sessionpb.Diff, replica *session.Session) (*sessionpb.Diff, error) {
	raw, err := d.Marshal()
	if err != nil {
		return nil, err
	}
	out := &sessionpb.Diff{}
	if err := out.Unmarshal(raw); err != nil {
		return nil, err
	}
	snap := replica.Snapshot()
	out.EscrowId = snap.EscrowId
	for _, tx := range out.Txs {
		if tx.Sig != nil {
			if err := session.SignTx(f.SlotKey(tx.Slot), snap.ChainId, snap.EscrowId, tx); err != nil {
				return nil, err
			}
		}
	}
	root, err := replica.Next(out)
	if err != nil {
		return nil, err
	}
	out.PostStateRoot = root[:]
	if err := session.SignDiff(f.Gateway, snap.ChainId, out); err != nil {
		return nil, err
	}
	return out, nil
}

func sealedRows(id, nonce uint64, recs []*sessionpb.InferenceRecord) ([]store.Sealed, error) {
	rows := make([]store.Sealed, 0, len(recs))
	for _, r := range recs {
		b, err := r.Marshal()
		if err != nil {
			return nil, err
		}
		rows = append(rows, store.Sealed{EscrowID: id, InferenceID: r.Id, Nonce: nonce, Record: b})
	}
	return rows, nil
}

// StartupTimes are one daemon start, each measured from its first step.
type StartupTimes struct {
	// Listening is until GET /healthz first answered 200.
	Listening time.Duration
	// StorageReady is until the store was open and session routes served.
	StorageReady time.Duration
	// Recovered is until RecoverAll returned, every session recovered.
	Recovered time.Duration
}

// Run starts a host daemon in process over the store open returns, the way
// `devshard host` does (host.Open): bind the listener, build the engine and
// its metrics, serve HTTP, open storage, mark ready, recover every session
// with the configured workers. Loading the key from
// its file and dialling the chain client (which does not block) are left
// out, and with no chain the store learns no epoch. A client polls /healthz
// from the start. Run fails unless every session was recovered from its
// snapshot at the expected nonce, replaying exactly the tail.
func (s *Startup) Run(ctx context.Context, open func(context.Context) (store.Store, error)) (StartupTimes, error) {
	var times StartupTimes
	addr, err := freeAddr()
	if err != nil {
		return times, err
	}
	log := &recoveryLog{}
	pollCtx, stopPoll := context.WithCancel(ctx)
	defer stopPoll()
	listening := make(chan time.Duration, 1)

	start := time.Now()
	go pollHealth(pollCtx, addr, start, listening)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return times, err
	}
	eng := host.New(host.Config{Key: s.key, Escrows: s.escrows, Executor: executor.Builtin{},
		SnapshotEvery: s.opts.SnapshotEvery, Logger: slog.New(log), Metrics: host.NewMetrics()})
	srv := httpserve.Server(host.Handler(eng, "bench"))
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	st, err := open(ctx)
	if err != nil {
		return times, fmt.Errorf("open storage: %w", err)
	}
	defer st.Close()
	eng.SetStore(st)
	eng.MarkReady()
	times.StorageReady = time.Since(start)
	if err := eng.RecoverAll(ctx, s.opts.Workers); err != nil {
		return times, err
	}
	times.Recovered = time.Since(start)

	select {
	case times.Listening = <-listening:
	case <-time.After(10 * time.Second):
		return times, errors.New("/healthz never answered 200")
	}
	return times, log.check(s.opts.Sessions, uint64(s.opts.Nonces), s.snapNonce)
}

// pollHealth GETs /healthz until it answers 200 and sends the time since
// start. Connection refusals before the listener is bound return at once;
// it waits 200µs between attempts so as not to take a core from the daemon.
func pollHealth(ctx context.Context, addr string, start time.Time, out chan<- time.Duration) {
	client := &http.Client{Timeout: time.Second}
	url := "http://" + addr + "/healthz"
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				out <- time.Since(start)
				return
			}
		}
		time.Sleep(200 * time.Microsecond)
	}
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// recoveryLog is the engine's logger during Run: it keeps, from the
// engine's "recovered session" records, how each session was recovered,
// and counts warnings and errors (a session not recovered is a warning).
type recoveryLog struct {
	mu        sync.Mutex
	recovered map[uint64]recovery
	problems  []string
}

type recovery struct {
	nonce, snapshot uint64
	replayed        int64
}

func (h *recoveryLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *recoveryLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *recoveryLog) WithGroup(string) slog.Handler            { return h }

func (h *recoveryLog) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if r.Level >= slog.LevelWarn {
		msg := r.Message
		r.Attrs(func(a slog.Attr) bool { msg += " " + a.String(); return true })
		h.problems = append(h.problems, msg)
		return nil
	}
	if r.Message != "recovered session" {
		return nil
	}
	var id uint64
	var rec recovery
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "escrow":
			id = uint64(asInt(a.Value))
		case "nonce":
			rec.nonce = uint64(asInt(a.Value))
		case "snapshot":
			rec.snapshot = uint64(asInt(a.Value))
		case "replayed":
			rec.replayed = asInt(a.Value)
		}
		return true
	})
	if h.recovered == nil {
		h.recovered = map[uint64]recovery{}
	}
	h.recovered[id] = rec
	return nil
}

func asInt(v slog.Value) int64 {
	switch v.Kind() {
	case slog.KindInt64:
		return v.Int64()
	case slog.KindUint64:
		return int64(v.Uint64())
	}
	return -1
}

// check requires sessions 1..n recovered to nonce from snapshot snap.
func (h *recoveryLog) check(n int, nonce, snap uint64) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.problems) > 0 {
		return fmt.Errorf("recovery logged %d warnings, the first: %s", len(h.problems), h.problems[0])
	}
	want := recovery{nonce: nonce, snapshot: snap, replayed: int64(nonce - snap)}
	for id := uint64(1); id <= uint64(n); id++ {
		got, ok := h.recovered[id]
		if !ok {
			return fmt.Errorf("escrow %d was not recovered (%d of %d were)", id, len(h.recovered), n)
		}
		if got != want {
			return fmt.Errorf("escrow %d recovered to nonce %d from the snapshot at %d replaying %d diffs; want nonce %d from %d replaying %d",
				id, got.nonce, got.snapshot, got.replayed, want.nonce, want.snapshot, want.replayed)
		}
	}
	if len(h.recovered) != n {
		return fmt.Errorf("%d sessions recovered, %d stored", len(h.recovered), n)
	}
	return nil
}

// String renders the options for a report line.
func (o StartupOptions) String() string {
	return strconv.Itoa(o.Sessions) + " sessions of " + strconv.Itoa(o.Nonces) + " nonces, a snapshot every " +
		strconv.FormatUint(o.SnapshotEvery, 10) + ", " + strconv.Itoa(o.Workers) + " recovery workers"
}
