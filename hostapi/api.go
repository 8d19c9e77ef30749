// Package hostapi is the host's HTTP API, defined once: its routes, the
// bodies that travel on them, the limits both sides hold to, and the one
// client that gateways and hosts use to call it. The host's server
// (host.Handler) serves these routes with these types; docs/host.md
// describes them, and a test keeps that page and this package in step.
//
// Binary protocol messages (diffs, txs, state signatures) travel as the
// base64 of their protobuf encoding inside JSON: a []byte field here.
package hostapi

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/devshard/devshard/executor"
)

// MaxBody bounds every request body a host reads.
const MaxBody = 4 << 20

// MaxDiffsPerDelivery bounds the diffs of one POST .../diffs.
const MaxDiffsPerDelivery = 256

// The pages of GET .../diffs: limit defaults to DefaultDiffsPerPage and
// may be at most MaxDiffsPerPage.
const (
	DefaultDiffsPerPage = 100
	MaxDiffsPerPage     = 1000
)

// Query parameters of the read routes.
const (
	ParamFrom  = "from"  // GET .../diffs: the first nonce listed, 1 by default
	ParamLimit = "limit" // GET .../diffs: how many at most
	ParamNonce = "nonce" // GET .../signatures: the nonce signed
)

// RuntimeURL is where the host registered at base serves the sessions of
// escrows created under runtime version: versiond's route to that
// version's process, base/devshard/<version>, or base itself for an
// escrow that names no version (a host not behind versiond). Gateways and
// hosts build every session call's URL here.
func RuntimeURL(base, version string) string {
	if version == "" {
		return base
	}
	return strings.TrimRight(base, "/") + "/devshard/" + url.PathEscape(version)
}

// Route is one route of the API: a method and a path pattern, where a
// session route's path names its escrow as {escrow}.
type Route struct {
	Method string
	Path   string
}

// Pattern is the route as net/http's ServeMux takes it.
func (r Route) Pattern() string { return r.Method + " " + r.Path }

// For is the route's path for escrow id.
func (r Route) For(escrow uint64) string {
	return strings.Replace(r.Path, "{escrow}", fmt.Sprint(escrow), 1)
}

// The routes. Health, readiness, version, metrics and the open-sessions
// count answer anyone; the session routes need a request signed (package
// httpauth) for the host and the chain, by a signer the route admits.
var (
	Healthz = Route{"GET", "/healthz"}
	Readyz  = Route{"GET", "/readyz"}
	Version = Route{"GET", "/version"}
	Metrics = Route{"GET", "/metrics"}
	// OpenSessions counts the sessions the host serves that are not
	// finished, for versiond's drain of a retired version. It answers
	// anyone: /metrics already shows anyone the sessions by phase.
	OpenSessions = Route{"GET", "/devshard/open-sessions"}
	PostDiffs    = Route{"POST", "/v1/sessions/{escrow}/diffs"}
	Inference    = Route{"POST", "/v1/sessions/{escrow}/inference"}
	Gossip       = Route{"POST", "/v1/sessions/{escrow}/gossip"}
	GetDiffs     = Route{"GET", "/v1/sessions/{escrow}/diffs"}
	// Signatures lists the host's stored state signatures at a nonce.
	Signatures = Route{"GET", "/v1/sessions/{escrow}/signatures"}
	Mempool    = Route{"GET", "/v1/sessions/{escrow}/mempool"}
)

// Routes lists every route, in the order docs/host.md gives them.
func Routes() []Route {
	return append([]Route{Healthz, Readyz, Version, Metrics, OpenSessions, PostDiffs, Inference, Gossip, GetDiffs, Signatures, Mempool, Follow}, WorkerRoutes()...)
}

// OpenSessionsResponse is the body of GET /devshard/open-sessions.
type OpenSessionsResponse struct {
	// OpenSessions is how many sessions the host serves that have not
	// reached their settlement phase, or are still being loaded.
	OpenSessions int `json:"open_sessions"`
}

// ErrorResponse is every refusal's body, with a 4xx or 5xx status.
type ErrorResponse struct {
	Error string `json:"error"`
}

// Initializing is the ErrorResponse of a session route, with 503, until
// the host's storage is ready.
const Initializing = "initializing"

// StatusResponse answers GET /healthz, GET /readyz, and an accepted gossip.
type StatusResponse struct {
	Status string `json:"status"`
}

// VersionResponse answers GET /version.
type VersionResponse struct {
	Address  string `json:"address"`  // the host's account
	Protocol int    `json:"protocol"` // session.ProtocolVersion
	Version  string `json:"version"`  // the build
	// ChainID is the chain the host serves on, once it has reached it
	// (readiness); a worker signs its requests for it.
	ChainID string `json:"chain_id,omitempty"`
}

// DiffRequest is the body of POST .../diffs: either one diff (Diff,
// Requests), or in Diffs a run of consecutive diffs that the host applies
// in order, stores in one durable commit, and answers for with the last
// one's reply.
type DiffRequest struct {
	// Diff is the marshalled sessionpb.Diff.
	Diff []byte `json:"diff,omitempty"`
	// Requests are the payloads of the inferences the diff starts.
	Requests map[uint64]executor.Request `json:"requests,omitempty"`
	// Diffs are consecutive diffs, oldest first.
	Diffs []DiffItem `json:"diffs,omitempty"`
}

// DiffItem is one diff of a DiffRequest's run.
type DiffItem struct {
	Diff     []byte                      `json:"diff"`
	Requests map[uint64]executor.Request `json:"requests,omitempty"`
}

// DiffResponse answers an accepted diff, or run, for its last diff.
type DiffResponse struct {
	Nonce      uint64   `json:"nonce"`
	Root       string   `json:"root"`       // hex
	Signatures [][]byte `json:"signatures"` // marshalled sessionpb.StateSignature
	// Withheld says why the host did not sign, when it did not.
	Withheld string   `json:"withheld,omitempty"`
	Mempool  [][]byte `json:"mempool"` // marshalled sessionpb.Tx
}

// InferenceRequest is the body of POST .../inference.
type InferenceRequest struct {
	Nonce   uint64           `json:"nonce"`
	Request executor.Request `json:"request"`
}

// StreamEvent is the data of one server-sent event of an inference stream:
// pieces of text, then one done event, or an error.
type StreamEvent struct {
	Text         string          `json:"text,omitempty"`
	Done         bool            `json:"done,omitempty"`
	Usage        *executor.Usage `json:"usage,omitempty"`
	FinishReason string          `json:"finish_reason,omitempty"`
	ResponseHash string          `json:"response_hash,omitempty"`
	// Txs, on the done event, are the executor's signed ConfirmStart and
	// FinishInference (marshalled sessionpb.Tx) for the gateway to carry.
	Txs   [][]byte `json:"txs,omitempty"`
	Error string   `json:"error,omitempty"`
}

// GossipRequest is the body of POST .../gossip: a peer's signed tx, which
// the gateway keeps leaving out, to pool and carry too.
type GossipRequest struct {
	Tx []byte `json:"tx"` // marshalled sessionpb.Tx
}

// Pooled is the StatusResponse of an accepted gossip, with 202.
const Pooled = "pooled"

// DiffsResponse answers GET .../diffs: stored diffs in nonce order.
type DiffsResponse struct {
	Diffs []StoredDiff `json:"diffs"`
}

// StoredDiff is a diff as a host stored it.
type StoredDiff struct {
	Nonce uint64 `json:"nonce"`
	Root  string `json:"root"` // hex post-state root
	Data  []byte `json:"data"` // marshalled sessionpb.Diff
}

// SignaturesResponse answers GET .../signatures.
type SignaturesResponse struct {
	Signatures [][]byte `json:"signatures"` // marshalled sessionpb.StateSignature
}

// MempoolResponse answers GET .../mempool.
type MempoolResponse struct {
	Txs [][]byte `json:"txs"` // marshalled sessionpb.Tx
}
