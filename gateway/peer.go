package gateway

import (
	"context"
	"net/http"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/signing"
)

// HostError is a host's answer other than success: hostapi.Error under the
// name the sequencer and Complete know it by.
type HostError = hostapi.Error

// unreachable reports whether err means the host is down rather than that
// it refused the request.
func unreachable(err error) bool { return hostapi.IsUnreachable(err) }

// initializing reports whether err is a host's answer that its storage is
// not ready yet.
func initializing(err error) bool { return hostapi.IsInitializing(err) }

// peers talks to hosts over their HTTP API (package hostapi), signed as
// the gateway.
type peers struct{ *hostapi.Client }

func newPeers(key signing.Signer, chainID string, timeout time.Duration) *peers {
	tr := &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second}
	return &peers{hostapi.NewClient(key, chainID, &http.Client{Transport: tr, Timeout: timeout})}
}

// diffBody and runBody encode a delivery (hostapi.EncodeDiff, EncodeRun).
var (
	diffBody = hostapi.EncodeDiff
	runBody  = hostapi.EncodeRun
)

// The sequencer's and Complete's names for the client's calls.

func (p *peers) postDiff(ctx context.Context, url string, to signing.Address, escrow uint64, body []byte) (*hostapi.DiffResponse, error) {
	return p.PostDiffs(ctx, url, to, escrow, body)
}

func (p *peers) mempool(ctx context.Context, url string, to signing.Address, escrow uint64) ([][]byte, error) {
	return p.Mempool(ctx, url, to, escrow)
}

func (p *peers) diffs(ctx context.Context, url string, to signing.Address, escrow, from uint64, limit int) ([]hostapi.StoredDiff, error) {
	return p.Diffs(ctx, url, to, escrow, from, limit)
}

func (p *peers) inference(ctx context.Context, url string, to signing.Address, escrow, nonce uint64, req executor.Request, stall time.Duration, onText func(string) error) (*hostapi.InferenceResult, error) {
	return p.Inference(ctx, url, to, escrow, nonce, req, stall, onText)
}
