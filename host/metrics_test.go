package host

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/session/sessiontest"
)

// families names the metric families m's registry gathers.
func families(t *testing.T, m *Metrics) map[string]int {
	t.Helper()
	got, err := m.Registry.Gather()
	require.NoError(t, err)
	out := map[string]int{}
	for _, f := range got {
		out[f.GetName()] = len(f.GetMetric())
	}
	return out
}

// Metrics are built before the engine and handed to it: the engine they
// are given adds its sessions-by-phase gauge, and no engine's config is
// changed behind its back.
func TestEngineGivenMetricsCountsItsSessions(t *testing.T) {
	t.Parallel()
	m := NewMetrics()
	require.NotContains(t, families(t, m), "devshard_host_sessions", "no engine yet")
	require.Contains(t, families(t, m), "devshard_host_storage_up")

	f := sessiontest.New(1, sessiontest.DefaultOptions())
	e := New(Config{Key: f.Hosts[0], Escrows: &fakeChain{}, Executor: executor.Builtin{}, Metrics: m})
	require.Same(t, m, e.cfg.Metrics)
	require.Equal(t, 3, families(t, m)["devshard_host_sessions"], "one gauge per phase")

	bare := New(Config{Key: f.Hosts[0], Escrows: &fakeChain{}, Executor: executor.Builtin{}})
	require.Nil(t, bare.cfg.Metrics)
}

// metricValue is the value of the one series of family name with labels
// (name, value pairs): a counter's, a gauge's or a histogram's count.
func metricValue(t *testing.T, m *Metrics, name string, labels ...string) float64 {
	t.Helper()
	fams, err := m.Registry.Gather()
	require.NoError(t, err)
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	series:
		for _, s := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range s.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue series
				}
			}
			switch {
			case s.Counter != nil:
				return s.GetCounter().GetValue()
			case s.Gauge != nil:
				return s.GetGauge().GetValue()
			case s.Histogram != nil:
				return float64(s.GetHistogram().GetSampleCount())
			}
		}
	}
	require.Failf(t, "no such series", "%s%v is not exported", name, labels)
	return 0
}

// Every run of the engine's model is measured: its tokens and its time
// to first token.
func TestEngineMeasuresItsModel(t *testing.T) {
	t.Parallel()
	m := NewMetrics()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	e := New(Config{Key: f.Hosts[0], Escrows: &fakeChain{}, Executor: executor.Builtin{}, Metrics: m})
	req := executor.Request{Model: executor.BuiltinModel, MaxTokens: 16, Messages: []executor.Message{{Role: "user", Content: "count the tokens"}}}
	res, err := e.cfg.Executor.Execute(t.Context(), req, func(string) error { return nil })
	require.NoError(t, err)
	require.Positive(t, res.Usage.CompletionTokens)

	require.Equal(t, float64(res.Usage.PromptTokens), metricValue(t, m, "devshard_host_tokens_executed_total", "direction", "in"))
	require.Equal(t, float64(res.Usage.CompletionTokens), metricValue(t, m, "devshard_host_tokens_executed_total", "direction", "out"))
	require.Equal(t, 1.0, metricValue(t, m, "devshard_host_time_to_first_token_seconds"))
	require.Equal(t, 1.0, metricValue(t, m, "devshard_host_build_info"))
	require.Equal(t, []string{executor.BuiltinModel}, e.cfg.Executor.Models(), "the measured model serves what it served")
}

// epochLister answers Epochs with err.
type epochLister struct{ err error }

func (l *epochLister) Epochs(context.Context) ([]uint64, error) { return nil, l.err }

// storageUp is the devshard_host_storage_up gauge's value.
func storageUp(t *testing.T, m *Metrics) float64 {
	t.Helper()
	got, err := m.Registry.Gather()
	require.NoError(t, err)
	for _, f := range got {
		if f.GetName() == "devshard_host_storage_up" {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("no devshard_host_storage_up")
	return 0
}

// Issue 18: a host no request writes to still says, in /readyz and in
// devshard_host_storage_up, that its storage is failing, and why.
func TestStorageProbeTurnsReadyz(t *testing.T) {
	t.Parallel()
	m := NewMetrics()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	e := New(Config{Key: f.Hosts[0], Escrows: &fakeChain{}, Executor: executor.Builtin{}, Metrics: m})
	e.MarkReady()
	srv := httptest.NewServer(Handler(e, "test"))
	t.Cleanup(srv.Close)
	readyz := func() (int, string) {
		resp, err := http.Get(srv.URL + hostapi.Readyz.Path)
		require.NoError(t, err)
		defer resp.Body.Close()
		var body hostapi.StatusResponse
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
		return resp.StatusCode, body.Status
	}
	s := &epochLister{err: errors.New("postgres: connection refused")}
	probeStorage(t.Context(), s, m)
	code, why := readyz()
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "storage failing: storage probe: postgres: connection refused", why)
	require.Equal(t, 0.0, storageUp(t, m))

	s.err = nil
	probeStorage(t.Context(), s, m)
	code, _ = readyz()
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, 1.0, storageUp(t, m))
}
