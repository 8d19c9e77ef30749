package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/host"
	"github.com/devshard/devshard/httpauth"
	"github.com/devshard/devshard/signing"
)

// HostError is a host's answer other than success: its status and its
// sentence. Status 0 means the host was not reached at all.
type HostError struct {
	URL     string
	Status  int
	Message string
}

func (e *HostError) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("host %s unreachable: %s", e.URL, e.Message)
	}
	return fmt.Sprintf("host %s answered %d: %s", e.URL, e.Status, e.Message)
}

// unreachable reports whether err means the host is down rather than that
// it refused the request.
func unreachable(err error) bool {
	var he *HostError
	return errors.As(err, &he) && (he.Status == 0 || he.Status >= 500)
}

// peers talks to hosts over their HTTP API (docs/host.md). Every request
// is signed (package httpauth) for the host it goes to and the chain.
type peers struct {
	client  *http.Client // for short calls: diffs, mempools
	stream  *http.Client // for inference streams: no overall timeout
	key     signing.Signer
	chainID string
}

// initializing reports whether err is a host's answer that its storage is
// not ready yet (503).
func initializing(err error) bool {
	var he *HostError
	return errors.As(err, &he) && he.Status == http.StatusServiceUnavailable
}

func newPeers(key signing.Signer, chainID string, timeout time.Duration) *peers {
	tr := &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second}
	return &peers{
		client:  &http.Client{Transport: tr, Timeout: timeout},
		stream:  &http.Client{Transport: tr},
		key:     key,
		chainID: chainID,
	}
}

// sign signs req, whose body is body, for the host of account to.
func (p *peers) sign(req *http.Request, body []byte, to signing.Address) error {
	return httpauth.Sign(req, body, p.key, httpauth.Audience{ChainID: p.chainID, Host: to}, time.Now())
}

// diffBody is the request body that posts diff raw with the payloads of
// the inferences it starts.
func diffBody(raw []byte, reqs map[uint64]executor.Request) ([]byte, error) {
	return json.Marshal(host.DiffRequest{Diff: raw, Requests: reqs})
}

// runBody is the request body that posts a run of consecutive diffs,
// given each one's diffBody: the items of a run have the same fields.
func runBody(bodies [][]byte) []byte {
	n := len(`{"diffs":[]}`) + len(bodies)
	for _, b := range bodies {
		n += len(b)
	}
	out := make([]byte, 0, n)
	out = append(out, `{"diffs":[`...)
	for i, b := range bodies {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, b...)
	}
	return append(out, `]}`...)
}

// postDiff sends one diff, encoded by diffBody, or a run, encoded by
// runBody, to the host of account to at url.
func (p *peers) postDiff(ctx context.Context, url string, to signing.Address, escrow uint64, body []byte) (*host.DiffResponse, error) {
	var out host.DiffResponse
	if err := p.do(ctx, http.MethodPost, fmt.Sprintf("%s/v1/sessions/%d/diffs", url, escrow), to, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// mempool reads a host's pooled txs for escrow, as the escrow's creator,
// undecoded: the sequencer decodes and verifies each (admit).
func (p *peers) mempool(ctx context.Context, url string, to signing.Address, escrow uint64) ([][]byte, error) {
	var out struct {
		Txs [][]byte `json:"txs"`
	}
	if err := p.do(ctx, http.MethodGet, fmt.Sprintf("%s/v1/sessions/%d/mempool", url, escrow), to, nil, &out); err != nil {
		return nil, err
	}
	return out.Txs, nil
}

// storedDiff is a diff as a host's GET .../diffs lists it.
type storedDiff struct {
	Nonce uint64 `json:"nonce"`
	Data  []byte `json:"data"`
}

// diffs reads up to limit of a host's stored diffs of escrow from nonce
// from on, as the escrow's creator.
func (p *peers) diffs(ctx context.Context, url string, to signing.Address, escrow, from uint64, limit int) ([]storedDiff, error) {
	var out struct {
		Diffs []storedDiff `json:"diffs"`
	}
	if err := p.do(ctx, http.MethodGet, fmt.Sprintf("%s/v1/sessions/%d/diffs?from=%d&limit=%d", url, escrow, from, limit), to, nil, &out); err != nil {
		return nil, err
	}
	return out.Diffs, nil
}

func (p *peers) do(ctx context.Context, method, url string, to signing.Address, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if err := p.sign(req, body, to); err != nil {
		return err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return &HostError{URL: hostOf(url), Message: err.Error()}
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return readHostError(url, resp)
	}
	if err := json.NewDecoder(bounded(resp.Body, maxHostAnswer)).Decode(out); err != nil {
		var tl *tooLargeError
		if errors.As(err, &tl) {
			return &HostError{URL: hostOf(url), Status: http.StatusBadGateway, Message: "answer refused: " + tl.Error()}
		}
		return &HostError{URL: hostOf(url), Status: resp.StatusCode, Message: "undecodable answer: " + err.Error()}
	}
	return nil
}

// Bounds on what the gateway reads from a host, so that a host cannot make
// it buffer without end. An honest answer is far smaller: a diff carries
// at most session.MaxTxsPerDiff txs, and a stream's events are pieces of
// text.
const (
	// maxHostAnswer bounds a JSON answer: a diff's reply, a mempool, stored
	// diffs.
	maxHostAnswer = 2 * host.MaxBody
	// maxStreamEvent bounds one line of an inference stream.
	maxStreamEvent = 1 << 20
	// maxStreamBytes bounds a whole inference stream.
	maxStreamBytes = 64 << 20
)

// tooLargeError is a host answer longer than the gateway reads.
type tooLargeError struct{ limit int64 }

func (e *tooLargeError) Error() string {
	return fmt.Sprintf("the host's answer is longer than the %d bytes the gateway reads", e.limit)
}

// boundedReader reads at most limit bytes of r, and fails with a
// *tooLargeError rather than cut an answer that goes on.
type boundedReader struct {
	r     io.Reader
	left  int64
	limit int64
}

func bounded(r io.Reader, limit int64) *boundedReader {
	return &boundedReader{r: r, left: limit, limit: limit}
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// At the limit: an answer that ends here is whole.
		var one [1]byte
		if n, err := b.r.Read(one[:]); n == 0 {
			return 0, err
		}
		return 0, &tooLargeError{limit: b.limit}
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	return n, err
}

func readHostError(url string, resp *http.Response) error {
	var e struct {
		Error string `json:"error"`
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(raw, &e) != nil || e.Error == "" {
		e.Error = strings.TrimSpace(string(raw))
	}
	return &HostError{URL: hostOf(url), Status: resp.StatusCode, Message: e.Error}
}

func hostOf(url string) string {
	if i := strings.Index(url, "/v1/"); i > 0 {
		return url[:i]
	}
	return url
}

// streamResult is the end of an inference stream.
type streamResult struct {
	Usage        executor.Usage
	FinishReason string
	ResponseHash string
	// Txs are the executor's signed ConfirmStart and FinishInference, as
	// they came: the sequencer decodes and verifies them (admit).
	Txs [][]byte
}

// inference runs inference nonce on its executor, the host of account to
// at url, calling onText for
// each piece of text. A stream that goes quiet for longer than stall is cut
// and reported as an unreachable host, so the caller retries elsewhere.
func (p *peers) inference(ctx context.Context, url string, to signing.Address, escrow, nonce uint64, req executor.Request, stall time.Duration, onText func(string) error) (*streamResult, error) {
	body, err := json.Marshal(host.InferenceRequest{Nonce: nonce, Request: req})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("%s/v1/sessions/%d/inference", url, escrow), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	if err := p.sign(hreq, body, to); err != nil {
		return nil, err
	}
	// The watchdog cuts a stalled stream: every event resets it.
	watchdog := time.AfterFunc(stall, cancel)
	defer watchdog.Stop()
	resp, err := p.stream.Do(hreq)
	if err != nil {
		if !watchdog.Stop() {
			return nil, &HostError{URL: url, Message: fmt.Sprintf("no answer within %s", stall)}
		}
		return nil, &HostError{URL: url, Message: err.Error()}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, readHostError(url, resp)
	}
	sc := bufio.NewScanner(bounded(resp.Body, maxStreamBytes))
	sc.Buffer(make([]byte, 64<<10), maxStreamEvent)
	for sc.Scan() {
		watchdog.Reset(stall)
		line := sc.Text()
		if !strings.HasPrefix(line, "data: ") {
			continue
		}
		var ev host.StreamEvent
		if err := json.Unmarshal([]byte(line[len("data: "):]), &ev); err != nil {
			return nil, &HostError{URL: url, Status: http.StatusBadGateway, Message: "undecodable stream event: " + err.Error()}
		}
		switch {
		case ev.Error != "":
			return nil, &HostError{URL: url, Status: http.StatusBadGateway, Message: "inference failed: " + ev.Error}
		case ev.Done:
			if ev.Usage == nil {
				return nil, &HostError{URL: url, Status: http.StatusBadGateway, Message: "stream ended without usage"}
			}
			return &streamResult{Usage: *ev.Usage, FinishReason: ev.FinishReason, ResponseHash: ev.ResponseHash, Txs: ev.Txs}, nil
		case ev.Text != "":
			if err := onText(ev.Text); err != nil {
				return nil, err
			}
		}
	}
	var tl *tooLargeError
	switch err := sc.Err(); {
	case errors.Is(err, bufio.ErrTooLong):
		return nil, &HostError{URL: url, Status: http.StatusBadGateway, Message: fmt.Sprintf("stream refused: an event is longer than the %d bytes the gateway reads", maxStreamEvent)}
	case errors.As(err, &tl):
		return nil, &HostError{URL: url, Status: http.StatusBadGateway, Message: "stream refused: " + tl.Error()}
	case err != nil:
		return nil, &HostError{URL: url, Message: "stream ended before it was done: " + err.Error()}
	}
	return nil, &HostError{URL: url, Message: "stream ended before it was done"}
}
