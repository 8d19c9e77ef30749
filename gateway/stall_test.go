package gateway

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Issue 19: a chain whose validators make no blocks fails readiness with
// one sentence that says for how long, from which block, and what still
// works; status.json and the block age gauge show the same block.
func TestReadyzSaysTheChainMakesNoBlocks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	srv := b.api(t, APIConfig{})
	var body struct{ Status string }
	require.Equal(t, http.StatusOK, getJSON(t, srv.URL, "/readyz", &body), body.Status)

	last := time.Now().Add(-42 * time.Second)
	b.chain.halt(1234, last)
	require.Equal(t, http.StatusServiceUnavailable, getJSON(t, srv.URL, "/readyz", &body))
	require.Regexp(t, `^the chain has made no block for 4\ds \(last height 1234 at `+last.UTC().Format("15:04:05")+
		` UTC\): its validators may have lost their quorum; requests on open escrows are still served and settlements wait until it resumes$`, body.Status)

	var s Status
	require.Equal(t, http.StatusOK, getJSON(t, srv.URL, "/status.json", &s))
	require.False(t, s.Ready)
	require.NotNil(t, s.Chain)
	require.Equal(t, int64(1234), s.Chain.Height)
	require.GreaterOrEqual(t, s.Chain.AgeSeconds, 42.0)
	require.GreaterOrEqual(t, metricValue(t, b.gw.metrics.Registry, "devshard_gateway_chain_block_age_seconds"), 42.0)
}

// While the chain makes no blocks, a request on an open escrow is served
// (the books are off chain), and one that needs a new escrow fails at
// once with 503 and the reason, instead of waiting on a tx that cannot
// land.
func TestANewEscrowIsRefusedAtOnceWhileTheChainMakesNoBlocks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	h := Handler(b.gw, APIConfig{Keys: []APIKey{testKey}})
	open := setup(t)
	open.complete(t, ask(1))

	last := time.Now().Add(-time.Minute)
	b.chain.halt(77, last)
	open.chain.halt(77, last)

	began := time.Now()
	w := raw(h, http.MethodPost, "/v1/chat/completions", chatBody(t, ask(2), nil), map[string]string{"Content-Type": "application/json"})
	took := time.Since(began)
	require.Equal(t, http.StatusServiceUnavailable, w.Code, w.Body.String())
	var e openAIError
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &e), w.Body.String())
	require.Equal(t, "server_error", e.Error.Type)
	require.Equal(t, "service_unavailable", *e.Error.Code)
	require.Less(t, took, 2*time.Second, "refused at once, not after a tx's wait")
	require.Regexp(t, `^The chain has made no block for 1m\ds \(last height 77 at `+last.UTC().Format("15:04:05")+
		` UTC\): its validators may have lost their quorum; no new escrow can be opened until it resumes, and this request needs one\.$`, e.Error.Message)
	require.Zero(t, b.chain.createdCount())

	c := open.complete(t, ask(2))
	require.Equal(t, open.gw.Escrows()[0].ID, c.EscrowID, "the escrow opened before the halt still serves")
	require.Equal(t, 1, open.chain.createdCount())
}
