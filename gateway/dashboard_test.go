package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/host"
	"github.com/devshard/devshard/store/sqlite"
)

// dashboardPath is the Grafana dashboard over the gateway's and the
// hosts' metrics.
const dashboardPath = "../deploy/grafana/devshard.json"

// promFunctions are the PromQL functions and aggregations the dashboard
// may call; any other name before "(" fails the test, so that a metric
// name cannot hide as one.
var promFunctions = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "count": true, "rate": true, "irate": true,
	"increase": true, "histogram_quantile": true, "delta": true, "deriv": true, "topk": true, "bottomk": true,
}

// promKeywords are words of PromQL that are neither metrics nor functions.
var promKeywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"bool": true, "and": true, "or": true, "unless": true, "offset": true,
}

// metricNames lists the metric names expr selects. It skips string
// literals, label matchers ({...}), ranges ([...]) and the label lists
// of by, without, on and ignoring, and refuses a call of anything not in
// promFunctions.
func metricNames(expr string) ([]string, error) {
	var names []string
	isStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isPart := func(c byte) bool { return isStart(c) || c >= '0' && c <= '9' }
	skipTo := func(i int, end byte) (int, error) {
		for j := i + 1; j < len(expr); j++ {
			if expr[j] == '"' {
				k := strings.IndexByte(expr[j+1:], '"')
				if k < 0 {
					return 0, fmt.Errorf("unterminated string in %q", expr)
				}
				j += k + 1
				continue
			}
			if expr[j] == end {
				return j + 1, nil
			}
		}
		return 0, fmt.Errorf("no %q closes %q at %d", end, expr, i)
	}
	labelList := false // the next "(" opens a list of label names
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '{':
			j, err := skipTo(i, '}')
			if err != nil {
				return nil, err
			}
			i = j
		case c == '[':
			j, err := skipTo(i, ']')
			if err != nil {
				return nil, err
			}
			i = j
		case c == '(' && labelList:
			j, err := skipTo(i, ')')
			if err != nil {
				return nil, err
			}
			i, labelList = j, false
		case c >= '0' && c <= '9' || c == '.':
			for i < len(expr) && (isPart(expr[i]) || expr[i] == '.') {
				i++
			}
		case isStart(c):
			j := i
			for j < len(expr) && isPart(expr[j]) {
				j++
			}
			word := expr[i:j]
			k := j
			for k < len(expr) && expr[k] == ' ' {
				k++
			}
			switch {
			case promKeywords[word]:
				labelList = word == "by" || word == "without" || word == "on" || word == "ignoring"
			case promFunctions[word]: // an aggregation may be followed by "by (...)" before its "("
			case k < len(expr) && expr[k] == '(':
				if !promFunctions[word] {
					return nil, fmt.Errorf("%q calls %s, which is not a PromQL function this test knows", expr, word)
				}
			default:
				names = append(names, word)
			}
			i = j
		default:
			i++
		}
	}
	return names, nil
}

func TestMetricNamesOfPromQL(t *testing.T) {
	t.Parallel()
	names, err := metricNames(`histogram_quantile(0.95, sum by (le, phase) (rate(a_bucket{status!~"2..",x="}"}[5m]))) / on (instance) b + 2 * c:d`)
	require.NoError(t, err)
	require.Equal(t, []string{"a_bucket", "b", "c:d"}, names)
	_, err = metricNames(`my_metric(x)`)
	require.ErrorContains(t, err, "calls my_metric")
	_, err = metricNames(`x{a="b"`)
	require.Error(t, err)
}

// dashboardExprs lists every query of the dashboard's panels, rows'
// panels included.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(dashboardPath)
	require.NoError(t, err)
	type panel struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var dash struct {
		Panels []json.RawMessage `json:"panels"`
	}
	require.NoError(t, json.Unmarshal(raw, &dash), "%s is not JSON", dashboardPath)
	var exprs []string
	var walk func([]json.RawMessage)
	walk = func(ps []json.RawMessage) {
		for _, r := range ps {
			var p panel
			require.NoError(t, json.Unmarshal(r, &p))
			for _, tg := range p.Targets {
				require.NotEmpty(t, tg.Expr, "panel %q has a query without an expression", p.Title)
				exprs = append(exprs, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	return exprs
}

// exported adds the metric families gathered from fams to out, under
// the names a query uses: a histogram's _bucket, _sum and _count too.
func exported(out map[string]bool, fams []*dto.MetricFamily) {
	for _, f := range fams {
		out[f.GetName()] = true
		if f.GetType() == dto.MetricType_HISTOGRAM {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				out[f.GetName()+s] = true
			}
		}
	}
}

// Every metric the dashboard queries is exported by a gateway that has
// served a request, or by a host.
func TestDashboardQueriesExportedMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t)
	srv := b.api(t, APIConfig{})
	resp := postChat(t, srv.URL, chatBody(t, ask(1), nil))
	require.Equal(t, http.StatusOK, resp.StatusCode)

	hm := host.NewMetrics()
	st, err := sqlite.Open(context.Background(), t.TempDir(), sqlite.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	e := host.New(host.Config{Key: b.fixture.Hosts[0], Store: st, Escrows: hostEscrows{b.chain}, Executor: executor.Builtin{},
		Logger: slog.New(slog.DiscardHandler), ChainID: testChainID, Metrics: hm})
	t.Cleanup(e.Wait)

	have := map[string]bool{}
	for _, g := range []interface {
		Gather() ([]*dto.MetricFamily, error)
	}{b.gw.metrics.Registry, hm.Registry} {
		fams, err := g.Gather()
		require.NoError(t, err)
		exported(have, fams)
	}
	exprs := dashboardExprs(t)
	require.NotEmpty(t, exprs)
	seen := map[string]bool{}
	for _, expr := range exprs {
		names, err := metricNames(expr)
		require.NoError(t, err)
		require.NotEmpty(t, names, "%q selects no metric", expr)
		for _, n := range names {
			require.True(t, have[n], "the dashboard queries %s (in %q), which neither the gateway nor a host exports", n, expr)
			seen[n] = true
		}
	}
	for _, want := range []string{"devshard_gateway_tokens_total", "devshard_gateway_time_to_first_token_seconds_bucket", "devshard_gateway_escrow_balance",
		"devshard_gateway_chain_errors_total", "devshard_host_tokens_executed_total", "devshard_host_time_to_first_token_seconds_bucket"} {
		require.True(t, seen[want], "the dashboard has no panel over %s", want)
	}
}
