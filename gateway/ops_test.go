package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// getJSON GETs path from srv and decodes its JSON answer into out.
func getJSON(t *testing.T, srv string, path string, out any) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv+path, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.NoError(t, json.NewDecoder(resp.Body).Decode(out))
	return resp.StatusCode
}

// metricValue is the value of the series of family name whose labels
// include every name=value pair of labels: a counter's, a gauge's, or a
// histogram's count of observations. It fails the test when no series
// matches.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			case m.Histogram != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	require.Failf(t, "no such series", "%s%v is not exported", name, labels)
	return 0
}

// flakyChain fails Epoch while fail is set.
type flakyChain struct {
	Chain
	fail *atomic.Bool
}

func (c flakyChain) Epoch(ctx context.Context) (uint64, devshardtypes.EpochState, error) {
	if c.fail.Load() {
		return 0, 0, errors.New("connection refused")
	}
	return c.Chain.Epoch(ctx)
}

func TestReadyzSaysWhyTheGatewayCannotServe(t *testing.T) {
	t.Parallel()
	var chainDown, hostsDown atomic.Bool
	b := setup(t, func(o *setupOptions) {
		o.config = func(c *Config) { c.Chain = flakyChain{c.Chain, &chainDown} }
		o.wrap = func(_ int, h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if hostsDown.Load() && r.URL.Path == "/readyz" {
					http.Error(w, `{"status":"initializing"}`, http.StatusServiceUnavailable)
					return
				}
				h.ServeHTTP(w, r)
			})
		}
	})
	srv := b.api(t, APIConfig{})
	readyz := func() (int, string) {
		var body struct{ Status string }
		code := getJSON(t, srv.URL, "/readyz", &body)
		return code, body.Status
	}

	// No escrow yet, but one can be opened.
	code, status := readyz()
	require.Equal(t, http.StatusOK, code, status)

	b.chain.setBalance(b.gw.cfg.EscrowAmount - 1)
	code, status = readyz()
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, status, "an escrow locks")
	b.chain.setBalance(1 << 40)

	b.chain.setEpoch(1, devshardtypes.EpochSettling)
	code, status = readyz()
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, status, "ACTIVE")
	b.chain.setEpoch(1, devshardtypes.EpochActive)

	chainDown.Store(true)
	code, status = readyz()
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, status, "the chain node does not answer: connection refused")
	require.Equal(t, 1.0, metricValue(t, b.gw.metrics.Registry, "devshard_gateway_chain_errors_total", "call", "epoch"))
	chainDown.Store(false)

	// With an escrow open, readiness is its hosts'.
	b.complete(t, ask(1))
	code, status = readyz()
	require.Equal(t, http.StatusOK, code, status)
	hostsDown.Store(true)
	code, status = readyz()
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, status, "no host of an open escrow is ready")
	require.Contains(t, status, b.hosts[0].srv.URL+": 503 Service Unavailable (initializing)")
}

func TestVersionNamesTheBuild(t *testing.T) {
	t.Parallel()
	b := setup(t)
	srv := b.api(t, APIConfig{})
	var v map[string]any
	require.Equal(t, http.StatusOK, getJSON(t, srv.URL, "/version", &v))
	require.NotEmpty(t, v["version"])
	require.Contains(t, v, "commit", "empty when the build carries no VCS stamp (go test)")
	require.True(t, strings.HasPrefix(v["go_version"].(string), "go"), "go_version: %v", v["go_version"])
	require.Equal(t, b.gw.Address().String(), v["address"])
	require.NotZero(t, v["protocol"])
}

// A request served through the API shows in every metric an operator
// reads first.
func TestMetricsCountAServedRequest(t *testing.T) {
	t.Parallel()
	b := setup(t)
	srv := b.api(t, APIConfig{})
	reg := b.gw.metrics.Registry
	req := ask(1)
	want := builtinAnswer(t, req)

	resp := postChat(t, srv.URL, chatBody(t, req, map[string]any{"stream": true}))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	readStream(t, resp)

	require.Equal(t, float64(want.Usage.PromptTokens), metricValue(t, reg, "devshard_gateway_tokens_total", "direction", "in"))
	require.Equal(t, float64(want.Usage.CompletionTokens), metricValue(t, reg, "devshard_gateway_tokens_total", "direction", "out"))
	es := b.gw.Escrows()
	require.Len(t, es, 1)
	price := b.price(t, es[0].ID)
	require.Equal(t, float64(uint64(want.Usage.PromptTokens+want.Usage.CompletionTokens)*price), metricValue(t, reg, "devshard_gateway_cost_charged_total"))
	require.Equal(t, 1.0, metricValue(t, reg, "devshard_gateway_time_to_first_token_seconds"))
	require.Equal(t, 0.0, metricValue(t, reg, "devshard_gateway_requests_in_flight"))
	require.Equal(t, float64(es[0].Balance), metricValue(t, reg, "devshard_gateway_escrow_balance", "lane", "0"))
	require.Equal(t, 1.0, metricValue(t, reg, "devshard_gateway_escrows_open"))
	require.Equal(t, 1.0, metricValue(t, reg, "devshard_gateway_build_info"))
	require.Positive(t, metricValue(t, reg, "go_goroutines"))
	metricValue(t, reg, "process_cpu_seconds_total") // the process collector is registered
}

// A request in flight is counted until it ends.
func TestMetricsCountRequestsInFlight(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	b := setup(t, func(o *setupOptions) {
		o.executor = func(int) executor.Executor { return gatedExecutor{release: release} }
	})
	done := make(chan error, 1)
	go func() {
		_, err := b.gw.Complete(t.Context(), normalized(t, b.gw, ask(1)), func(string) error { return nil })
		done <- err
	}()
	require.Eventually(t, func() bool {
		return metricValue(t, b.gw.metrics.Registry, "devshard_gateway_requests_in_flight") == 1
	}, settleWait, 5e6)
	close(release)
	require.NoError(t, <-done)
	require.Equal(t, 0.0, metricValue(t, b.gw.metrics.Registry, "devshard_gateway_requests_in_flight"))
}
