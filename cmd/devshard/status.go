package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/spf13/cobra"

	"github.com/devshard/devshard/gateway"
	"github.com/devshard/devshard/hostapi"
)

// statusTimeout bounds each request a status command makes.
const statusTimeout = 5 * time.Second

func newGatewayStatusCommand() *cobra.Command {
	var url string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print a running gateway's escrows, hosts and recent requests (its /status.json) as tables",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var s gateway.Status
			if _, err := getStatusJSON(cmd.Context(), url, "/status.json", &s); err != nil {
				return err
			}
			return printGatewayStatus(cmd.OutOrStdout(), s)
		},
	}
	cmd.Flags().StringVar(&url, "url", "http://127.0.0.1:8080", "the gateway's base URL (its listen address)")
	return cmd
}

func newHostStatusCommand() *cobra.Command {
	var url string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print a running host's readiness, build and sessions (its /readyz, /version and /metrics) as a table",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := readHostStatus(cmd.Context(), url)
			if err != nil {
				return err
			}
			return printHostStatus(cmd.OutOrStdout(), s)
		},
	}
	cmd.Flags().StringVar(&url, "url", "http://127.0.0.1:8081", "the host's base URL (its listen address)")
	return cmd
}

// get GETs base+path and returns the answer's status and body; any
// status is an answer.
func get(ctx context.Context, base, path string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s does not answer: %w (is the daemon running, and is --url its listen address?)", base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return resp.StatusCode, body, err
}

// getStatusJSON GETs base+path into out: a 200 or a 503 with a JSON body.
func getStatusJSON(ctx context.Context, base, path string, out any) (int, error) {
	code, body, err := get(ctx, base, path)
	if err != nil {
		return 0, err
	}
	if code != http.StatusOK && code != http.StatusServiceUnavailable {
		return code, fmt.Errorf("GET %s%s answered %d: %s", base, path, code, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, out); err != nil {
		return code, fmt.Errorf("GET %s%s: the answer is not the JSON expected: %w", base, path, err)
	}
	return code, nil
}

func printGatewayStatus(out io.Writer, s gateway.Status) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	ready := "ready"
	if !s.Ready {
		ready = "NOT READY: " + s.Reason
	}
	fmt.Fprintf(w, "gateway %s\tversion %s\t%s\trequests in flight: %d\n", s.Address, s.Version, ready, s.InFlight)
	if c := s.Chain; c != nil {
		fmt.Fprintf(w, "chain height %d, last block %s ago (%s)\n", c.Height, time.Duration(c.AgeSeconds*float64(time.Second)), c.BlockTime.Format(time.RFC3339))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "ESCROW\tEPOCH\tSTATUS\tPHASE\tNONCE\tBALANCE\tLANE\tNEXT EXECUTOR")
	for _, e := range s.Escrows {
		lane := ""
		if e.Current {
			lane = "yes"
		}
		fmt.Fprintf(w, "%d\t%d\t%s\t%s\t%d\t%d\t%s\t%s\n", e.ID, e.Epoch, e.Status, e.Phase, e.Nonce, e.Balance, lane, e.NextExecutor)
	}
	if len(s.Escrows) == 0 {
		fmt.Fprintln(w, "(none open)")
	}
	fmt.Fprintln(w, "\nHOST\tSTATE\tLATENCY\tREQUESTS\tFAILURES\tLAST ERROR")
	for _, h := range s.Hosts {
		latency := ""
		if h.Requests > 0 {
			latency = fmt.Sprintf("%dms", h.LatencyMS)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%s\n", h.URL, h.State, latency, h.Requests, h.Failures, h.LastError)
	}
	fmt.Fprintln(w, "\nMINUTE\tREQUESTS\tERRORS")
	for i := len(s.Minutes) - 1; i >= 0; i-- {
		m := s.Minutes[i]
		fmt.Fprintf(w, "%s\t%d\t%d\n", m.Start.Local().Format("15:04"), m.Requests, m.Errors)
	}
	return w.Flush()
}

// hostStatus is what 'devshard host status' shows.
type hostStatus struct {
	URL      string
	Ready    bool
	Reason   string // readyz's status
	Version  hostapi.VersionResponse
	Sessions map[string]float64 // loaded sessions by phase
	Metrics  map[string]float64 // a few counters and gauges, by name
}

// hostCounters are the metrics 'devshard host status' prints, besides
// the sessions.
var hostCounters = []string{"devshard_host_storage_up", "devshard_host_diffs_applied_total", "devshard_host_diff_rejects_total",
	"devshard_host_tokens_executed_total", "devshard_host_validations_total", "devshard_host_executions_refused_total"}

func readHostStatus(ctx context.Context, url string) (hostStatus, error) {
	s := hostStatus{URL: url, Sessions: map[string]float64{}, Metrics: map[string]float64{}}
	var ready hostapi.StatusResponse
	code, err := getStatusJSON(ctx, url, hostapi.Readyz.Path, &ready)
	if err != nil {
		return s, err
	}
	s.Ready, s.Reason = code == http.StatusOK, ready.Status
	if _, err := getStatusJSON(ctx, url, hostapi.Version.Path, &s.Version); err != nil {
		return s, err
	}
	code, body, err := get(ctx, url, hostapi.Metrics.Path)
	if err != nil {
		return s, err
	}
	if code != http.StatusOK {
		return s, fmt.Errorf("GET %s%s answered %d", url, hostapi.Metrics.Path, code)
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		return s, fmt.Errorf("GET %s%s: %w", url, hostapi.Metrics.Path, err)
	}
	if f, ok := fams["devshard_host_sessions"]; ok {
		for _, m := range f.GetMetric() {
			s.Sessions[label(m, "phase")] = m.GetGauge().GetValue()
		}
	}
	for _, name := range hostCounters {
		if f, ok := fams[name]; ok {
			for _, m := range f.GetMetric() {
				s.Metrics[name] += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return s, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func printHostStatus(out io.Writer, s hostStatus) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	ready := "ready"
	if !s.Ready {
		ready = "NOT READY: " + s.Reason
	}
	fmt.Fprintf(w, "host %s\taccount %s\tversion %s\tprotocol %d\t%s\n\n", s.URL, s.Version.Address, s.Version.Version, s.Version.Protocol, ready)
	fmt.Fprintln(w, "PHASE\tSESSIONS")
	phases := make([]string, 0, len(s.Sessions))
	for p := range s.Sessions {
		phases = append(phases, p)
	}
	sort.Strings(phases)
	for _, p := range phases {
		fmt.Fprintf(w, "%s\t%.0f\n", p, s.Sessions[p])
	}
	fmt.Fprintln(w, "\nMETRIC\tVALUE")
	for _, name := range hostCounters {
		if v, ok := s.Metrics[name]; ok {
			fmt.Fprintf(w, "%s\t%.0f\n", name, v)
		}
	}
	return w.Flush()
}
