package host

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/httpauth"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
)

// The proxy host (docs/workers.md, "The proxy host"). A primary host with
// Config.ProxyValidation samples and re-runs nothing: a proxy host, a
// separate process with its own job queue and workers, does it for it.
//
// The proxy keeps a replica of each of the primary's sessions in memory
// (replicaStore), fed from the primary's POST /v1/proxy/follow, a long
// poll answered only to the primary's account or a warm key it granted.
// The replica is an ordinary Engine serving as the primary's account with
// the proxy's warm key, so the sampling, the validation jobs and the votes
// are the engine's own code: applying a diff samples its finished
// inferences (maybeValidate), a job re-runs one on the proxy's workers,
// and its end signs the votes with the warm key (applyValidation). The
// votes are then pushed to the primary through the gossip route the peers
// use, and the primary carries them to the gateway as its own.

// Timings of a proxy's link to its primary.
const (
	// followWait is how long the proxy's follow request may wait on the
	// primary for a new diff: short enough that a dead primary is noticed,
	// long enough that a quiet one costs few requests.
	followWait = 20 * time.Second
	// pushEvery is how often finished votes are looked for and pushed: a
	// vote late by this much is still far inside the seal grace.
	pushEvery = 200 * time.Millisecond
	// followRetry is the pause after a failed round.
	followRetry = time.Second
	// maxFollowAnswer bounds the diffs and payloads of one follow answer,
	// leaving the client's bound (twice MaxBody) room for the encoding.
	maxFollowAnswer = hostapi.MaxBody * 3 / 2
)

// actsForAccount reports whether signer is this host's account, or a
// warm key the account granted to sign its validations.
func (e *Engine) actsForAccount(signer signing.Address) bool {
	if signer == e.addr {
		return true
	}
	return e.cfg.Auth != nil && e.cfg.Auth.MayActFor(e.addr, signer, session.KindValidation)
}

// follow serves POST /v1/proxy/follow. The signer is checked before the
// body is decoded or any session read.
func (h *handler) follow(w http.ResponseWriter, r *http.Request) {
	e := h.e
	if !e.Ready() {
		writeError(w, http.StatusServiceUnavailable, hostapi.Initializing)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, hostapi.MaxBody)
	who, body, err := httpauth.Verify(r, e.audience(), hostapi.MaxBody, time.Now())
	switch {
	case bodyRefused(w, err):
		return
	case err != nil:
		writeError(w, http.StatusUnauthorized, fmt.Sprintf("%s %s needs a request signed by this host's account %s or a warm key it granted, for chain %q: %v", r.Method, r.URL.Path, e.addr, e.cfg.ChainID, err))
		return
	case !e.actsForAccount(who):
		writeError(w, http.StatusForbidden, fmt.Sprintf("%s is neither this host's account %s nor a key it granted (x/authz) to sign its validations; only its proxy host reads its sessions", who, e.addr))
		return
	case !e.cfg.ProxyValidation:
		writeError(w, http.StatusConflict, "this host runs its validations itself, so a proxy would vote for the same slots; set validation.proxy = true on this host to hand them to the proxy")
		return
	}
	var req hostapi.FollowRequest
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "malformed JSON body: "+err.Error())
		return
	}
	wait := time.Duration(req.WaitMS) * time.Millisecond
	switch {
	case len(req.Sessions) > hostapi.MaxFollowSessions:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("at most %d sessions per follow request; got %d", hostapi.MaxFollowSessions, len(req.Sessions)))
		return
	case req.WaitMS < 0 || wait > hostapi.MaxFollowWait:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("wait_ms must be 0 to %d, got %d", hostapi.MaxFollowWait.Milliseconds(), req.WaitMS))
		return
	}
	writeJSON(w, http.StatusOK, e.followAnswer(r.Context(), req.Sessions, wait))
}

// changes is a channel closed at the next applied diff or loaded session.
func (rs *runs) changes() <-chan struct{} {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.changed
}

// followAnswer is what the proxy that follows known (escrow → nonce) has
// not seen, waiting up to wait for there to be something.
func (e *Engine) followAnswer(ctx context.Context, known map[uint64]uint64, wait time.Duration) hostapi.FollowResponse {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		changed := e.runs.changes() // taken first: a diff applied meanwhile wakes the wait
		out, news := e.followOnce(ctx, known)
		if news || wait <= 0 {
			return out
		}
		select {
		case <-changed:
		case <-timer.C:
			return out
		case <-ctx.Done():
			return out
		}
	}
}

// followOnce lists the sessions the proxy follows or should, with the
// stored diffs it lacks, and reports whether any of it is news: a diff, a
// session new to the proxy, one gone, or one finished that it has caught
// up with.
func (e *Engine) followOnce(ctx context.Context, known map[uint64]uint64) (hostapi.FollowResponse, bool) {
	out := hostapi.FollowResponse{Sessions: []hostapi.FollowedSession{}}
	news := false
	budget := maxFollowAnswer
	var ens []*entry
	seen := map[uint64]bool{}
	e.mu.Lock()
	for id, en := range e.sessions {
		select {
		case <-en.done:
			if en.loadErr == nil {
				ens = append(ens, en)
			}
		default:
			// Still loading (a restarted primary recovers its sessions):
			// listed once loaded, and not gone meanwhile.
			seen[id] = true
		}
	}
	e.mu.Unlock()
	slices.SortFunc(ens, func(a, b *entry) int { return cmp.Compare(a.snap.EscrowId, b.snap.EscrowId) })
	for _, en := range ens {
		en.mu.Lock()
		if !en.loaded || en.evicted {
			en.mu.Unlock()
			continue
		}
		id := en.snap.EscrowId
		from, named := known[id]
		done := en.s.Phase() == sessionpb.Phase_PHASE_SETTLEMENT
		if !named && done {
			en.mu.Unlock()
			continue // finished before the proxy saw it: nothing left to validate
		}
		seen[id] = true
		fs := hostapi.FollowedSession{Escrow: id, Nonce: en.s.Nonce(), Done: done}
		news = news || !named || (done && from >= fs.Nonce)
		if from < fs.Nonce && budget > 0 {
			// Read under the session's lock, as GET .../diffs does: a diff
			// being applied is listed once its write has landed.
			diffs, err := e.cfg.Store.Diffs(ctx, id, from+1, hostapi.MaxFollowDiffs)
			if err != nil {
				e.log.Warn("proxy follow: read stored diffs", "escrow", id, "from", from+1, "err", err)
			}
			for _, d := range diffs {
				item := hostapi.DiffItem{Diff: d.Data, Requests: proxyPayloads(en, d.Data)}
				size := len(d.Data)*4/3 + payloadSize(item.Requests)
				if size > budget && !(len(fs.Diffs) == 0 && budget == maxFollowAnswer) {
					budget = 0 // the answer is full; the proxy asks again
					break
				}
				budget -= size
				fs.Diffs = append(fs.Diffs, item)
			}
			news = news || len(fs.Diffs) > 0
		}
		en.mu.Unlock()
		out.Sessions = append(out.Sessions, fs)
	}
	for _, id := range slices.Sorted(maps.Keys(known)) {
		if !seen[id] {
			// Its load failed or it was dropped: the proxy stops following.
			out.Sessions = append(out.Sessions, hostapi.FollowedSession{Escrow: id, Gone: true})
			news = true
		}
	}
	return out, news
}

// proxyPayloads are the payloads of the inferences diff raw starts that
// other hosts execute: what the proxy re-runs. Those of this host's own
// inferences are left out, so the proxy, which serves as this host's
// account, never runs them. Call with en.mu held.
func proxyPayloads(en *entry, raw []byte) map[uint64]executor.Request {
	var d sessionpb.Diff
	if err := d.Unmarshal(raw); err != nil {
		return nil
	}
	var out map[uint64]executor.Request
	for _, tx := range d.Txs {
		st := tx.GetStart()
		if st == nil || executes(en.snap, en.slots, st.InferenceId) {
			continue
		}
		if req, ok := en.requests[st.InferenceId]; ok {
			if out == nil {
				out = map[uint64]executor.Request{}
			}
			out[st.InferenceId] = req
		}
	}
	return out
}

// executes reports whether one of slots executes inference id of the
// escrow of snap (session.Session.Executor).
func executes(snap *sessionpb.EscrowSnapshot, slots []uint32, id uint64) bool {
	if len(snap.Group) == 0 {
		return false
	}
	return slices.Contains(slots, uint32(id%uint64(len(snap.Group))))
}

// payloadSize estimates the encoded size of payloads.
func payloadSize(reqs map[uint64]executor.Request) int {
	n := 0
	for _, r := range reqs {
		n += 128 + len(r.Model)
		for _, m := range r.Messages {
			n += 32 + len(m.Role) + 2*len(m.Content) // JSON may escape
		}
	}
	return n
}

// NewProxy returns the engine of a proxy host: it serves as cfg.Account
// (the primary's account) with cfg.Key (a warm key the account granted),
// keeps its replicas in memory, and serves no session route. Run
// FollowPrimary once it is ready.
func NewProxy(cfg Config) *Engine {
	cfg.Proxy = true
	cfg.ProxyValidation = false
	cfg.Store = newReplicaStore()
	cfg.InferenceJobs = false // a proxy runs no inference of its own
	return New(cfg)
}

// proxyLink is a proxy's link to its primary.
type proxyLink struct {
	e      *Engine
	url    string
	wait   time.Duration
	client *hostapi.Client
	known  map[uint64]uint64 // escrow → the replica's nonce
	pushed map[string]bool   // votes delivered to the primary (or refused for good), by session.TxKey
}

// FollowPrimary keeps the engine's replicas of the primary's sessions, at
// primaryURL, and pushes the votes its validations cast to the primary,
// until ctx ends. The engine must be a proxy's (NewProxy), ready.
func (e *Engine) FollowPrimary(ctx context.Context, primaryURL string) {
	e.followPrimary(ctx, primaryURL, followWait)
}

func (e *Engine) followPrimary(ctx context.Context, primaryURL string, wait time.Duration) {
	p := &proxyLink{e: e, url: strings.TrimRight(primaryURL, "/"), wait: wait,
		client: hostapi.NewClient(e.cfg.Key, e.cfg.ChainID, &http.Client{Timeout: wait + 10*time.Second}),
		known:  map[uint64]uint64{}, pushed: map[string]bool{}}
	pushes := hostapi.NewClient(e.cfg.Key, e.cfg.ChainID, gossipHTTP)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(pushEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				p.push(ctx, pushes)
			}
		}
	}()
	defer func() { <-done }()
	for ctx.Err() == nil {
		if err := p.round(ctx); err != nil && ctx.Err() == nil {
			e.log.Warn("proxy: following the primary", "primary", p.url, "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(followRetry):
			}
		}
	}
}

// round asks the primary once and applies what it answered.
func (p *proxyLink) round(ctx context.Context) error {
	e := p.e
	resp, err := p.client.Follow(ctx, p.url, e.addr, hostapi.FollowRequest{Sessions: maps.Clone(p.known), WaitMS: p.wait.Milliseconds()})
	if err != nil {
		return err
	}
	var failed error
	for _, s := range resp.Sessions {
		if s.Gone {
			p.forget(s.Escrow)
			continue
		}
		if len(s.Diffs) > 0 {
			if err := p.apply(ctx, s); err != nil {
				failed = errors.Join(failed, fmt.Errorf("escrow %d: %w", s.Escrow, err))
			}
		}
		nonce := p.replicaNonce(s.Escrow)
		p.known[s.Escrow] = nonce
		if s.Done && nonce >= s.Nonce {
			p.forget(s.Escrow) // settling: nothing more to validate
		}
	}
	// A replica the proxy does not follow (a validation that ended after
	// its session was forgotten loads it again) is dropped.
	e.mu.Lock()
	var stray []uint64
	for id := range e.sessions {
		if _, ok := p.known[id]; !ok {
			stray = append(stray, id)
		}
	}
	e.mu.Unlock()
	for _, id := range stray {
		p.forget(id)
	}
	return failed
}

// apply applies s's diffs to the replica. Payloads of inferences that the
// primary's account executes are dropped however they came, so the proxy
// never runs the primary's inferences.
func (p *proxyLink) apply(ctx context.Context, s hostapi.FollowedSession) error {
	snap, err := p.e.escrow(ctx, s.Escrow)
	if err != nil {
		return err
	}
	slots := p.e.slotsIn(snap)
	items := make([]DiffItem, len(s.Diffs))
	for i, d := range s.Diffs {
		reqs := map[uint64]executor.Request{}
		for id, req := range d.Requests {
			if !executes(snap, slots, id) {
				reqs[id] = req
			}
		}
		items[i] = DiffItem{Raw: d.Diff, Requests: reqs}
	}
	_, err = p.e.ApplyDiffs(ctx, s.Escrow, items)
	return err
}

// replicaNonce is the nonce the replica of escrow has applied; 0 when it
// has none.
func (p *proxyLink) replicaNonce(escrow uint64) uint64 {
	p.e.mu.Lock()
	en, ok := p.e.sessions[escrow]
	p.e.mu.Unlock()
	if !ok {
		return 0
	}
	select {
	case <-en.done:
		if en.loadErr != nil {
			return 0
		}
		return en.nonce.Load()
	default:
		return 0
	}
}

// forget drops the replica of escrow.
func (p *proxyLink) forget(escrow uint64) {
	delete(p.known, escrow)
	p.e.mu.Lock()
	delete(p.e.sessions, escrow)
	p.e.mu.Unlock()
	if rs, ok := p.e.cfg.Store.(*replicaStore); ok {
		rs.forget(escrow)
	}
}

// push delivers the votes pooled in the replicas to the primary, each
// once; one refused for good is not retried.
func (p *proxyLink) push(ctx context.Context, c *hostapi.Client) {
	pooled := map[string]bool{}
	for _, en := range p.e.entries() {
		en.mu.Lock()
		if !en.loaded {
			en.mu.Unlock()
			continue
		}
		escrow := en.snap.EscrowId
		var due []*sessionpb.Tx
		var keys []string
		for _, k := range en.pool.order {
			pp, ok := en.pool.byKey[k]
			if !ok || !pp.own || pooled[k] {
				continue
			}
			pooled[k] = true
			if !p.pushed[k] {
				due, keys = append(due, pp.tx), append(keys, k)
			}
		}
		en.mu.Unlock()
		for i, tx := range due {
			raw, err := tx.Marshal()
			if err != nil {
				continue
			}
			err = c.Gossip(ctx, p.url, p.e.addr, escrow, raw)
			switch {
			case err == nil:
				p.pushed[keys[i]] = true
				p.e.log.Info("proxy: vote handed to the primary", "escrow", escrow, "inference", txID(tx), "slot", tx.Slot)
			case finalRefusal(err):
				p.pushed[keys[i]] = true
				p.e.log.Warn("proxy: the primary refused a vote", "escrow", escrow, "inference", txID(tx), "err", err)
			default:
				p.e.log.Debug("proxy: vote not delivered; retrying", "escrow", escrow, "inference", txID(tx), "err", err)
			}
		}
	}
	for k := range p.pushed {
		if !pooled[k] {
			delete(p.pushed, k)
		}
	}
}
