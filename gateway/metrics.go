package gateway

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/devshard/devshard/session"
)

// Metrics are the gateway's Prometheus metrics (docs/gateway.md lists them).
type Metrics struct {
	Registry *prometheus.Registry

	requests    *prometheus.CounterVec
	latency     prometheus.Histogram
	phases      *prometheus.HistogramVec
	diffs       prometheus.Counter
	retries     prometheus.Counter
	escrows     prometheus.Counter
	settlements prometheus.Counter
	droppedTxs  *prometheus.CounterVec
}

// NewMetrics registers the gateway's metrics on a fresh registry.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devshard_gateway_requests_total", Help: "Chat completion requests, by HTTP status.",
		}, []string{"status"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "devshard_gateway_request_seconds", Help: "Time from request to the last byte of a successful completion.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "devshard_gateway_request_phase_seconds",
			Help:    "Time a completion attempt spent in each phase: sequence (build and sign the diff that starts it, and send it to its executor); then, overlapping, store (the gateway's write of that diff), executor (until the executor took it) and stream (the executor's answer).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}, []string{"phase"}),
		diffs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devshard_gateway_diffs_total", Help: "Diffs sequenced, signed and sent.",
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devshard_gateway_retries_total", Help: "Requests retried on another executor after one failed or stalled.",
		}),
		escrows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devshard_gateway_escrows_created_total", Help: "Escrows locked on chain.",
		}),
		settlements: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devshard_gateway_settlements_total", Help: "Escrows settled on chain.",
		}),
		droppedTxs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devshard_gateway_host_txs_dropped_total",
			Help: "Txs a host answered that the gateway dropped on intake, by the host's address and the reason: a session reason (signature, unauthorized, malformed, encoding, ...) or pending_cap (the host had the most txs one host may have waiting).",
		}, []string{"host", "reason"}),
	}
	m.Registry.MustRegister(m.requests, m.latency, m.phases, m.diffs, m.retries, m.escrows, m.settlements, m.droppedTxs)
	return m
}

// droppedTx counts a tx from host dropped on intake for err.
func (m *Metrics) droppedTx(host string, err error) {
	m.droppedTxs.WithLabelValues(host, dropReason(err)).Inc()
}

// dropReason is err's label: its session reason, or pending_cap.
func dropReason(err error) string {
	var r session.Reason
	switch {
	case errors.Is(err, errPendingCap):
		return "pending_cap"
	case errors.As(err, &r):
		return string(r)
	}
	return "other"
}

// The phases of a completion attempt, as devshard_gateway_request_phase_seconds labels them.
const (
	PhaseSequence = "sequence"
	PhaseStore    = "store"
	PhaseExecutor = "executor"
	PhaseStream   = "stream"
)

func (m *Metrics) phase(name string, since time.Time) {
	m.phases.WithLabelValues(name).Observe(time.Since(since).Seconds())
}

// PhaseTotals reads, per phase, how many attempts were observed and the
// time they spent there in all. Benchmarks take two readings and divide
// the difference.
func (m *Metrics) PhaseTotals() (map[string]uint64, map[string]time.Duration, error) {
	fams, err := m.Registry.Gather()
	if err != nil {
		return nil, nil, err
	}
	counts, sums := map[string]uint64{}, map[string]time.Duration{}
	for _, f := range fams {
		if f.GetName() != "devshard_gateway_request_phase_seconds" {
			continue
		}
		for _, x := range f.GetMetric() {
			for _, l := range x.GetLabel() {
				if l.GetName() == "phase" {
					counts[l.GetValue()] = x.GetHistogram().GetSampleCount()
					sums[l.GetValue()] = time.Duration(x.GetHistogram().GetSampleSum() * float64(time.Second))
				}
			}
		}
	}
	return counts, sums, nil
}
