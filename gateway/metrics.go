package gateway

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the gateway's Prometheus metrics (docs/gateway.md lists them).
type Metrics struct {
	Registry *prometheus.Registry

	requests    *prometheus.CounterVec
	latency     prometheus.Histogram
	diffs       prometheus.Counter
	retries     prometheus.Counter
	escrows     prometheus.Counter
	settlements prometheus.Counter
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
	}
	m.Registry.MustRegister(m.requests, m.latency, m.diffs, m.retries, m.escrows, m.settlements)
	return m
}
