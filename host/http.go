package host

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/httpauth"
	"github.com/devshard/devshard/internal/httpserve"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/store"
)

// ReadyzFailures is how many consecutive storage failures turn /readyz 503.
const ReadyzFailures = 3

// Handler serves the engine over HTTP. Health, version and metrics answer
// from the first moment; session routes answer 503 until storage is ready.
func Handler(e *Engine, version string) http.Handler {
	mux := http.NewServeMux()
	h := &handler{e: e}
	mux.HandleFunc(hostapi.Healthz.Pattern(), func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, hostapi.StatusResponse{Status: "ok"})
	})
	mux.HandleFunc(hostapi.Readyz.Pattern(), h.readyz)
	mux.HandleFunc(hostapi.Version.Pattern(), func(w http.ResponseWriter, r *http.Request) {
		v := hostapi.VersionResponse{Version: version, Protocol: session.ProtocolVersion, Address: e.addr.String()}
		if e.Ready() {
			v.ChainID = e.ChainID() // set before the engine is ready, and fixed after
		}
		writeJSON(w, http.StatusOK, v)
	})
	mux.HandleFunc(hostapi.OpenSessions.Pattern(), h.openSessions)
	if e.cfg.Metrics != nil {
		mux.Handle(hostapi.Metrics.Pattern(), promhttp.HandlerFor(e.cfg.Metrics.Registry, promhttp.HandlerOpts{}))
	}
	// The proxy host's read route (proxy.go) answers only this host's
	// account and its warm keys.
	mux.HandleFunc(hostapi.Follow.Pattern(), h.follow)
	if e.cfg.Proxy {
		// A proxy's replicas are fed by its primary alone; its workers
		// still reach it on the worker routes.
		registerWorkerRoutes(mux, h)
		return mux
	}
	// Every session route is signed, and the signer's role checked, before
	// any work: the body is decoded, the diff applied, the model run only
	// for a caller the route admits.
	mux.HandleFunc(hostapi.PostDiffs.Pattern(), h.session(h.signed(memberOrCreator, h.postDiff)))
	mux.HandleFunc(hostapi.Inference.Pattern(), h.session(h.signed(creator, h.inference)))
	mux.HandleFunc(hostapi.Gossip.Pattern(), h.session(h.signed(memberOrCreator, h.gossip)))
	mux.HandleFunc(hostapi.GetDiffs.Pattern(), h.session(h.signed(memberOrCreator, h.getDiffs)))
	mux.HandleFunc(hostapi.Signatures.Pattern(), h.session(h.signed(memberOrCreator, h.getSignatures)))
	mux.HandleFunc(hostapi.Mempool.Pattern(), h.session(h.signed(memberOrCreator, h.getMempool)))
	registerWorkerRoutes(mux, h)
	return mux
}

// registerWorkerRoutes serves the worker routes (workerapi.go), which
// admit only the operator's workers.
func registerWorkerRoutes(mux *http.ServeMux, h *handler) {
	mux.HandleFunc(hostapi.ClaimJob.Pattern(), h.worker(h.claimJob))
	mux.HandleFunc(hostapi.HeartbeatJob.Pattern(), h.worker(h.heartbeatJob))
	mux.HandleFunc(hostapi.JobPieces.Pattern(), h.worker(h.jobPieces))
	mux.HandleFunc(hostapi.FinishJob.Pattern(), h.worker(h.finishJob))
	mux.HandleFunc(hostapi.FailJob.Pattern(), h.worker(h.failJob))
}

type handler struct{ e *Engine }

// openSessions answers versiond's drain probe. Until storage is ready the
// count is unknown (sessions are yet to be recovered), so it answers 503
// and versiond keeps the version draining.
func (h *handler) openSessions(w http.ResponseWriter, _ *http.Request) {
	if !h.e.Ready() {
		writeError(w, http.StatusServiceUnavailable, hostapi.Initializing)
		return
	}
	writeJSON(w, http.StatusOK, hostapi.OpenSessionsResponse{OpenSessions: h.e.OpenSessions()})
}

type sessionHandler func(w http.ResponseWriter, r *http.Request, escrowID uint64)

// session gates a route on readiness, parses the escrow id and bounds the
// body.
func (h *handler) session(next sessionHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !h.e.Ready() {
			writeError(w, http.StatusServiceUnavailable, hostapi.Initializing)
			return
		}
		id, err := strconv.ParseUint(r.PathValue("escrow"), 10, 64)
		if err != nil || id == 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("escrow id %q is not a positive integer", r.PathValue("escrow")))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, hostapi.MaxBody)
		next(w, r, id)
	}
}

// role says whether a signer may call a route about an escrow; its
// sentence says who may, for the refusal.
type role struct {
	who string
	may func(snap *sessionpb.EscrowSnapshot, signer signing.Address, auth session.Authorizer) bool
}

var (
	// creator: only the gateway that sequences the escrow opens an
	// inference stream. Whoever opens it receives the answer and the
	// executor's signed txs, and an inference runs once.
	creator = role{"the escrow's creator (or a key it granted)", session.ActsForCreator}
	// memberOrCreator: diffs, gossip and reads come from the gateway or a
	// group member; members deliver diffs to each other when they catch up.
	// Own keys are matched before warm keys are asked about, so a member's
	// request asks the Authorizer nothing.
	memberOrCreator = role{"a group member or the escrow's creator (or a key one of them granted)", func(snap *sessionpb.EscrowSnapshot, signer signing.Address, auth session.Authorizer) bool {
		return session.ActsForCreator(snap, signer, nil) || session.ActsForMember(snap, signer, nil) ||
			session.ActsForCreator(snap, signer, auth) || session.ActsForMember(snap, signer, auth)
	}}
)

// signed admits requests signed for this host and chain (package httpauth)
// by a signer r admits. The body is read, bounded, to check the signature;
// next reads the verified bytes.
func (h *handler) signed(r role, next sessionHandler) sessionHandler {
	return func(w http.ResponseWriter, req *http.Request, escrowID uint64) {
		who, _, err := httpauth.Verify(req, h.e.audience(), hostapi.MaxBody, time.Now())
		if bodyRefused(w, err) {
			return
		}
		if err != nil {
			writeError(w, http.StatusForbidden, fmt.Sprintf("%s %s needs a request signed by %s, for host %s on chain %q: %v", req.Method, req.URL.Path, r.who, h.e.addr, h.e.cfg.ChainID, err))
			return
		}
		snap, err := h.e.escrow(req.Context(), escrowID)
		if err != nil {
			h.fail(w, err)
			return
		}
		if !r.may(snap, who, h.e.cfg.Auth) {
			writeError(w, http.StatusForbidden, fmt.Sprintf("%s %s of escrow %d is for %s; %s is neither", req.Method, req.URL.Path, escrowID, r.who, who))
			return
		}
		next(w, req, escrowID)
	}
}

func (h *handler) readyz(w http.ResponseWriter, r *http.Request) {
	switch {
	case !h.e.Ready():
		writeJSON(w, http.StatusServiceUnavailable, hostapi.StatusResponse{Status: hostapi.Initializing})
	case h.e.cfg.Metrics.StorageFailures() >= ReadyzFailures:
		writeJSON(w, http.StatusServiceUnavailable, hostapi.StatusResponse{Status: fmt.Sprintf("storage failing: %d consecutive write errors", h.e.cfg.Metrics.StorageFailures())})
	case h.e.cfg.Metrics.StorageProbeError() != "":
		writeJSON(w, http.StatusServiceUnavailable, hostapi.StatusResponse{Status: "storage failing: " + h.e.cfg.Metrics.StorageProbeError()})
	default:
		// A chain that makes no blocks, or whose node does not answer,
		// leaves the host able to serve every session it holds: it is
		// degraded, not unready, so that its gateway, which counts only a
		// 200 as ready, keeps sending it the open escrows' work.
		if why := h.e.cfg.Metrics.ChainDegraded(time.Now()); why != "" {
			writeJSON(w, http.StatusOK, hostapi.StatusResponse{Status: "degraded: " + why + "; open escrows are still served, settlements and claims wait until it resumes"})
			return
		}
		writeJSON(w, http.StatusOK, hostapi.StatusResponse{Status: "ready"})
	}
}

func (h *handler) postDiff(w http.ResponseWriter, r *http.Request, escrowID uint64) {
	var req hostapi.DiffRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	var items []DiffItem
	switch {
	case len(req.Diff) > 0 && len(req.Diffs) > 0:
		writeError(w, http.StatusBadRequest, "body carries either one diff in \"diff\" or a run in \"diffs\", not both")
		return
	case len(req.Diff) > 0:
		items = []DiffItem{{Raw: req.Diff, Requests: req.Requests}}
	case len(req.Diffs) > hostapi.MaxDiffsPerDelivery:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("at most %d diffs per delivery; got %d", hostapi.MaxDiffsPerDelivery, len(req.Diffs)))
		return
	case len(req.Diffs) > 0:
		if len(req.Requests) > 0 {
			writeError(w, http.StatusBadRequest, "with \"diffs\", each diff carries its own \"requests\"")
			return
		}
		items = make([]DiffItem, len(req.Diffs))
		for i, it := range req.Diffs {
			if len(it.Diff) == 0 {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("diffs[%d] carries no \"diff\"", i))
				return
			}
			items[i] = DiffItem{Raw: it.Diff, Requests: it.Requests}
		}
	default:
		writeError(w, http.StatusBadRequest, "body must carry the diff (base64 protobuf) in \"diff\", or consecutive diffs in \"diffs\"")
		return
	}
	reply, err := h.e.ApplyDiffs(r.Context(), escrowID, items)
	if err != nil {
		h.fail(w, err)
		return
	}
	resp := hostapi.DiffResponse{Nonce: reply.Nonce, Root: hex.EncodeToString(reply.Root[:]), Withheld: reply.Withheld, Signatures: [][]byte{}, Mempool: [][]byte{}}
	for _, s := range reply.Signatures {
		b, _ := s.Marshal()
		resp.Signatures = append(resp.Signatures, b)
	}
	for _, tx := range reply.Mempool {
		b, _ := tx.Marshal()
		resp.Mempool = append(resp.Mempool, b)
	}
	writeJSON(w, http.StatusOK, resp)
}

func (h *handler) inference(w http.ResponseWriter, r *http.Request, escrowID uint64) {
	var req hostapi.InferenceRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	if err := req.Request.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	flusher, _ := w.(http.Flusher)
	started := false
	emit := func(text string) error {
		if !started {
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Cache-Control", "no-cache")
			w.WriteHeader(http.StatusOK)
			started = true
		}
		if err := writeEvent(w, hostapi.StreamEvent{Text: text}); err != nil {
			return err
		}
		if flusher != nil {
			flusher.Flush()
		}
		return nil
	}
	res, txs, err := h.e.Inference(r.Context(), escrowID, req.Nonce, req.Request, emit)
	if id := r.Header.Get(hostapi.RequestIDHeader); hostapi.ValidRequestID(id) {
		h.e.log.Info("inference served", "request_id", id, "escrow", escrowID, "nonce", req.Nonce, "err", err)
	}
	if err != nil {
		if started {
			_ = writeEvent(w, hostapi.StreamEvent{Error: err.Error()})
			return
		}
		h.fail(w, err)
		return
	}
	if !started {
		_ = emit("")
	}
	hash := res.ResponseHash()
	done := hostapi.StreamEvent{Done: true, Usage: &res.Usage, FinishReason: res.FinishReason, ResponseHash: hex.EncodeToString(hash[:])}
	for _, tx := range txs {
		b, _ := tx.Marshal()
		done.Txs = append(done.Txs, b)
	}
	_ = writeEvent(w, done)
	if flusher != nil {
		flusher.Flush()
	}
}

func writeEvent(w http.ResponseWriter, ev hostapi.StreamEvent) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "data: %s\n\n", b)
	return err
}

func (h *handler) gossip(w http.ResponseWriter, r *http.Request, escrowID uint64) {
	var req hostapi.GossipRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	if len(req.Tx) == 0 {
		writeError(w, http.StatusBadRequest, "body must carry the signed tx (base64 protobuf) in \"tx\"")
		return
	}
	if err := h.e.Gossip(r.Context(), escrowID, req.Tx); err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, hostapi.StatusResponse{Status: hostapi.Pooled})
}

func (h *handler) getDiffs(w http.ResponseWriter, r *http.Request, escrowID uint64) {
	from, err := uintParam(r, hostapi.ParamFrom, 1)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	limit, err := uintParam(r, hostapi.ParamLimit, hostapi.DefaultDiffsPerPage)
	if err != nil || limit == 0 || limit > hostapi.MaxDiffsPerPage {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%s must be 1 to %d", hostapi.ParamLimit, hostapi.MaxDiffsPerPage))
		return
	}
	// Read under the session's lock: a diff being applied is listed once
	// its write has landed, never left out while it is about to.
	en, err := h.e.session(r.Context(), escrowID)
	if err != nil {
		h.fail(w, err)
		return
	}
	diffs, err := h.e.cfg.Store.Diffs(r.Context(), escrowID, from, int(limit))
	en.mu.Unlock()
	if err != nil {
		h.fail(w, err)
		return
	}
	out := hostapi.DiffsResponse{Diffs: make([]hostapi.StoredDiff, 0, len(diffs))}
	for _, d := range diffs {
		out.Diffs = append(out.Diffs, hostapi.StoredDiff{Nonce: d.Nonce, Root: hex.EncodeToString(d.Root), Data: d.Data})
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handler) getSignatures(w http.ResponseWriter, r *http.Request, escrowID uint64) {
	nonce, err := uintParam(r, hostapi.ParamNonce, 0)
	if err != nil || nonce == 0 {
		writeError(w, http.StatusBadRequest, hostapi.ParamNonce+" must be a positive integer")
		return
	}
	sigs, err := h.e.cfg.Store.Signatures(r.Context(), escrowID, nonce)
	if err != nil {
		h.fail(w, err)
		return
	}
	out := hostapi.SignaturesResponse{Signatures: make([][]byte, 0, len(sigs))}
	for _, s := range sigs {
		out.Signatures = append(out.Signatures, s.Data)
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *handler) getMempool(w http.ResponseWriter, r *http.Request, escrowID uint64) {
	en, err := h.e.session(r.Context(), escrowID)
	if err != nil {
		h.fail(w, err)
		return
	}
	txs := en.pool.txs()
	en.mu.Unlock()
	out := hostapi.MempoolResponse{Txs: make([][]byte, 0, len(txs))}
	for _, tx := range txs {
		b, _ := tx.Marshal()
		out.Txs = append(out.Txs, b)
	}
	writeJSON(w, http.StatusOK, out)
}

// fail maps an engine error to a status and a sentence.
func (h *handler) fail(w http.ResponseWriter, err error) {
	var de *session.DiffError
	var mbe *http.MaxBytesError
	status := http.StatusInternalServerError
	switch {
	case errors.As(err, &mbe):
		status = http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrInitializing), errors.Is(err, store.ErrUnavailable):
		status = http.StatusServiceUnavailable
	case errors.Is(err, ErrUnknownEscrow), errors.Is(err, store.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, ErrNotMember), errors.Is(err, ErrForbidden), errors.Is(err, ErrNotExecutor):
		status = http.StatusForbidden
	case errors.Is(err, store.ErrFork), errors.Is(err, store.ErrNonceGap), errors.Is(err, ErrNotIncludable), errors.Is(err, ErrOverdue), errors.Is(err, ErrWrongRuntime):
		status = http.StatusConflict
	case errors.As(err, &de):
		switch de.Reason {
		case session.ReasonSignature, session.ReasonUnauthorized:
			status = http.StatusForbidden
		case session.ReasonNonce:
			status = http.StatusConflict
		default:
			status = http.StatusBadRequest
		}
	case errors.Is(err, ErrBadInput), errors.Is(err, executor.ErrBadRequest), errors.Is(err, executor.ErrUnknownModel):
		status = http.StatusBadRequest
	case errors.Is(err, store.ErrQuarantined):
		status = http.StatusConflict
	}
	if status == http.StatusInternalServerError {
		h.e.log.Error("request failed", "err", err)
	}
	writeError(w, status, err.Error())
}

// bodyRefused answers a request whose body could not be read for its
// signature check: too large (413) or too slow (408). It says whether it
// answered; any other error is the caller's to answer in its route's words.
func bodyRefused(w http.ResponseWriter, err error) bool {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body exceeds %d bytes", mbe.Limit))
		return true
	case errors.Is(err, httpserve.ErrSlowBody):
		writeError(w, http.StatusRequestTimeout, err.Error())
		return true
	}
	return false
}

func decodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body exceeds %d bytes", mbe.Limit))
			return false
		}
		writeError(w, http.StatusBadRequest, "malformed JSON body: "+err.Error())
		return false
	}
	return true
}

func uintParam(r *http.Request, name string, def uint64) (uint64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s must be a non-negative integer, got %q", name, v)
	}
	return n, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, hostapi.ErrorResponse{Error: msg})
}
