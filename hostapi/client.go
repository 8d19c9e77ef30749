package hostapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/httpauth"
	"github.com/devshard/devshard/internal/sse"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
)

// Bounds on what a client reads from a host, so that a host cannot make
// it buffer without end. An honest answer is far smaller: a diff's reply
// carries at most session.MaxTxsPerDiff txs, and a stream's events are
// pieces of text.
const (
	// maxAnswer bounds a JSON answer: a diff's reply, a mempool, stored
	// diffs, signatures.
	maxAnswer = 2 * MaxBody
	// maxStreamEvent bounds one line of an inference stream.
	maxStreamEvent = 1 << 20
	// maxStreamBytes bounds a whole inference stream.
	maxStreamBytes = 64 << 20
)

// Client calls hosts' APIs. Every request is signed (package httpauth) by
// its key for the host it goes to and the chain, so a host can tell the
// escrow's creator and its members from anyone else, and no other host or
// chain takes the request. Every answer is read bounded, and every failure
// is an *Error. A Client is safe for concurrent use.
type Client struct {
	key     signing.Signer
	chainID string
	http    *http.Client // for calls that answer at once
	stream  *http.Client // for inference streams: the same, without an overall timeout
}

// NewClient returns a client that signs with key for chain chainID and
// sends through hc, whose Timeout bounds every call but an inference
// stream (which Inference bounds by its stall instead).
func NewClient(key signing.Signer, chainID string, hc *http.Client) *Client {
	stream := *hc
	stream.Timeout = 0
	return &Client{key: key, chainID: chainID, http: hc, stream: &stream}
}

// EncodeDiff is the body of a PostDiffs that delivers diff raw (a
// marshalled sessionpb.Diff) with the payloads of the inferences it
// starts.
func EncodeDiff(raw []byte, reqs map[uint64]executor.Request) ([]byte, error) {
	return json.Marshal(DiffRequest{Diff: raw, Requests: reqs})
}

// EncodeRun is the body of a PostDiffs that delivers a run of consecutive
// diffs, given each one's EncodeDiff: a DiffItem has the fields of a
// one-diff DiffRequest, so a diff encoded once for every member joins a
// run as it is.
func EncodeRun(diffs [][]byte) []byte {
	n := len(`{"diffs":[]}`) + len(diffs)
	for _, b := range diffs {
		n += len(b)
	}
	out := make([]byte, 0, n)
	out = append(out, `{"diffs":[`...)
	for i, b := range diffs {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, b...)
	}
	return append(out, `]}`...)
}

// PostDiffs delivers body, an EncodeDiff or EncodeRun, to escrow's session
// on the host of account to at baseURL, and returns its reply.
func (c *Client) PostDiffs(ctx context.Context, baseURL string, to signing.Address, escrow uint64, body []byte) (*DiffResponse, error) {
	var out DiffResponse
	if err := c.call(ctx, PostDiffs, baseURL, to, escrow, nil, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Mempool reads the host's pooled txs for escrow, undecoded: the caller
// decodes and verifies each.
func (c *Client) Mempool(ctx context.Context, baseURL string, to signing.Address, escrow uint64) ([][]byte, error) {
	var out MempoolResponse
	if err := c.call(ctx, Mempool, baseURL, to, escrow, nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Txs, nil
}

// Diffs reads up to limit of the host's stored diffs of escrow, from nonce
// from on. They are consecutive from from, or an answer that is not is
// refused: a caller applies them in order.
func (c *Client) Diffs(ctx context.Context, baseURL string, to signing.Address, escrow, from uint64, limit int) ([]StoredDiff, error) {
	q := url.Values{ParamFrom: {strconv.FormatUint(from, 10)}, ParamLimit: {strconv.Itoa(limit)}}
	var out DiffsResponse
	if err := c.call(ctx, GetDiffs, baseURL, to, escrow, q, nil, &out); err != nil {
		return nil, err
	}
	for i, d := range out.Diffs {
		if want := from + uint64(i); d.Nonce != want {
			return nil, &Error{URL: baseURL, Status: http.StatusBadGateway, Message: fmt.Sprintf("answer refused: diffs from %d are not consecutive: diff %d where %d belongs", from, d.Nonce, want)}
		}
	}
	return out.Diffs, nil
}

// Signatures reads the host's stored state signatures of escrow at nonce.
// Those that do not decode are left out; the caller verifies the rest.
func (c *Client) Signatures(ctx context.Context, baseURL string, to signing.Address, escrow, nonce uint64) ([]*sessionpb.StateSignature, error) {
	q := url.Values{ParamNonce: {strconv.FormatUint(nonce, 10)}}
	var out SignaturesResponse
	if err := c.call(ctx, Signatures, baseURL, to, escrow, q, nil, &out); err != nil {
		return nil, err
	}
	list := make([]*sessionpb.StateSignature, 0, len(out.Signatures))
	for _, raw := range out.Signatures {
		if ss, err := session.DecodeStateSignature(raw); err == nil {
			list = append(list, ss)
		}
	}
	return list, nil
}

// Gossip hands the host tx, a marshalled signed sessionpb.Tx, to pool and
// carry.
func (c *Client) Gossip(ctx context.Context, baseURL string, to signing.Address, escrow uint64, tx []byte) error {
	body, err := json.Marshal(GossipRequest{Tx: tx})
	if err != nil {
		return err
	}
	var out StatusResponse
	return c.call(ctx, Gossip, baseURL, to, escrow, nil, body, &out)
}

// InferenceResult is the end of an inference stream.
type InferenceResult struct {
	Usage        executor.Usage
	FinishReason string
	ResponseHash string // hex
	// Txs are the executor's signed ConfirmStart and FinishInference, as
	// they came: the caller decodes and verifies them.
	Txs [][]byte
}

// Inference runs inference nonce of escrow on its executor, the host of
// account to at baseURL, calling onText for each piece of text; an error
// from onText ends the stream and is returned as it came. A stream that
// goes quiet for longer than stall is cut and reported as an unreachable
// host, so the caller can retry elsewhere.
func (c *Client) Inference(ctx context.Context, baseURL string, to signing.Address, escrow, nonce uint64, req executor.Request, stall time.Duration, onText func(string) error) (*InferenceResult, error) {
	body, err := json.Marshal(InferenceRequest{Nonce: nonce, Request: req})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hreq, err := c.request(ctx, Inference.Method, baseURL, Inference.For(escrow), to, body)
	if err != nil {
		return nil, err
	}
	if id := RequestID(ctx); id != "" {
		hreq.Header.Set(RequestIDHeader, id)
	}
	// The watchdog cuts a stalled stream: every event resets it.
	watchdog := time.AfterFunc(stall, cancel)
	defer watchdog.Stop()
	resp, err := c.stream.Do(hreq)
	if err != nil {
		if !watchdog.Stop() {
			return nil, &Error{URL: baseURL, Message: fmt.Sprintf("no answer within %s", stall)}
		}
		return nil, &Error{URL: baseURL, Message: err.Error()}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, readError(baseURL, resp)
	}
	refused := func(msg string) error { return &Error{URL: baseURL, Status: http.StatusBadGateway, Message: msg} }
	events := sse.NewReader(bounded(resp.Body, maxStreamBytes), maxStreamEvent)
	for {
		raw, err := events.Next()
		var (
			failed *sse.Error
			long   *sse.TooLongError
			large  *tooLargeError
		)
		switch {
		case errors.As(err, &failed):
			return nil, refused("inference failed: " + failed.Message)
		case errors.As(err, &long):
			return nil, refused(fmt.Sprintf("stream refused: an event is longer than the %d bytes a client reads", long.Limit))
		case errors.As(err, &large):
			return nil, refused("stream refused: " + large.Error())
		case errors.Is(err, io.EOF):
			return nil, &Error{URL: baseURL, Message: "stream ended before it was done"}
		case err != nil:
			return nil, &Error{URL: baseURL, Message: "stream ended before it was done: " + err.Error()}
		}
		watchdog.Reset(stall)
		var ev StreamEvent
		if err := json.Unmarshal([]byte(raw.Data), &ev); err != nil {
			return nil, refused("undecodable stream event: " + err.Error())
		}
		switch {
		case ev.Error != "":
			return nil, refused("inference failed: " + ev.Error)
		case ev.Done:
			if ev.Usage == nil {
				return nil, refused("stream ended without usage")
			}
			return &InferenceResult{Usage: *ev.Usage, FinishReason: ev.FinishReason, ResponseHash: ev.ResponseHash, Txs: ev.Txs}, nil
		case ev.Text != "":
			if err := onText(ev.Text); err != nil {
				return nil, err
			}
		}
	}
}

// request is a signed request with method to baseURL+path, on the host of
// account to. The signature covers path, the route as the host serves it,
// not the base URL's own path: a router in front of the host, such as
// versiond's /devshard/<version>/ (RuntimeURL), strips that part, and the
// host checks the signature against the path it receives.
func (c *Client) request(ctx context.Context, method, baseURL, path string, to signing.Address, body []byte) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, baseURL+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	route, err := url.ParseRequestURI(path)
	if err != nil {
		return nil, fmt.Errorf("route %q: %w", path, err)
	}
	// Signed as a request at route alone; the header lands on req.
	signed := &http.Request{Method: method, URL: route, Header: req.Header}
	if err := httpauth.Sign(signed, body, c.key, httpauth.Audience{ChainID: c.chainID, Host: to}, time.Now()); err != nil {
		return nil, err
	}
	return req, nil
}

// call sends a signed request for route r of escrow and decodes the
// host's JSON answer into out.
func (c *Client) call(ctx context.Context, r Route, baseURL string, to signing.Address, escrow uint64, q url.Values, body []byte, out any) error {
	path := r.For(escrow)
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	_, err := c.send(ctx, r, baseURL, path, to, body, out)
	return err
}

// send sends a signed request for route r at path and decodes the host's
// JSON answer into out. A 204 is an answer without a body: got is false
// and out is left as it was.
func (c *Client) send(ctx context.Context, r Route, baseURL, path string, to signing.Address, body []byte, out any) (got bool, err error) {
	req, err := c.request(ctx, r.Method, baseURL, path, to, body)
	if err != nil {
		return false, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return false, &Error{URL: baseURL, Message: err.Error()}
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNoContent {
		return false, nil
	}
	if resp.StatusCode/100 != 2 {
		return false, readError(baseURL, resp)
	}
	if err := json.NewDecoder(bounded(resp.Body, maxAnswer)).Decode(out); err != nil {
		var tl *tooLargeError
		if errors.As(err, &tl) {
			return false, &Error{URL: baseURL, Status: http.StatusBadGateway, Message: "answer refused: " + tl.Error()}
		}
		return false, &Error{URL: baseURL, Status: resp.StatusCode, Message: "undecodable answer: " + err.Error()}
	}
	return true, nil
}

// RequestIDHeader carries an app's request id, which the gateway answers
// with, to the executor, so one request can be followed through the
// gateway's logs and the host's. It is for logs only: it is not signed.
const RequestIDHeader = "X-Request-Id"

type requestIDKey struct{}

// WithRequestID returns ctx carrying the request id id, which Inference
// sends the executor.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// RequestID is the request id ctx carries, or "".
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// ValidRequestID reports whether id may be logged and echoed as a request
// id: 1 to 128 letters, digits and "-_.:".
func ValidRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_.:", c)) {
			return false
		}
	}
	return true
}
