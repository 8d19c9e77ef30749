package host

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/internal/buildinfo"
	"github.com/devshard/devshard/session/sessionpb"
)

// Metrics are the host's Prometheus metrics. A nil *Metrics records nothing.
type Metrics struct {
	Registry *prometheus.Registry

	diffs        prometheus.Counter
	rejects      *prometheus.CounterVec
	applyLatency prometheus.Histogram
	validations  *prometheus.CounterVec
	withholds    prometheus.Counter
	refusals     prometheus.Counter
	storageUp    prometheus.Gauge
	recovered    prometheus.Gauge
	recoverTotal prometheus.Gauge
	tokens       *prometheus.CounterVec
	firstTokens  prometheus.Histogram

	// storageFailures counts consecutive failed writes; /readyz turns 503
	// past a threshold.
	storageFailures atomic.Int64
	// probeErr is why the last storage probe failed; nil once it passed.
	// A host that writes nothing (no traffic) still learns of an outage.
	probeErr  atomic.Pointer[string]
	writeDown atomic.Bool // the last write failed
	// chain is the chain as the daemon last saw it (watchChain); nil until
	// it first looked.
	chain atomic.Pointer[chainSeen]
}

// NewMetrics registers the host's metrics on a fresh registry. They record
// nothing until an engine is built with them (Config.Metrics), which adds
// its count of loaded sessions by phase; one Metrics serves one engine.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		diffs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devshard_host_diffs_applied_total", Help: "Diffs applied and persisted.",
		}),
		rejects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devshard_host_diff_rejects_total", Help: "Diffs rejected, by reason.",
		}, []string{"reason"}),
		applyLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "devshard_host_apply_seconds", Help: "Time to verify, persist and publish one diff.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		validations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devshard_host_validations_total", Help: "Peer inferences re-run, by verdict.",
		}, []string{"verdict"}),
		withholds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devshard_host_signatures_withheld_total", Help: "Diff replies without a signature because an own tx went uncollected.",
		}),
		refusals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devshard_host_executions_refused_total", Help: "Inferences this host refused to run because its own txs went uncollected past the seal grace.",
		}),
		storageUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "devshard_host_storage_up", Help: "1 while the last storage write and the last storage probe succeeded.",
		}),
		recovered: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "devshard_host_recovered_sessions", Help: "Sessions recovered so far at startup.",
		}),
		recoverTotal: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "devshard_host_recovery_sessions", Help: "Sessions to recover at startup.",
		}),
	}
	m.tokens = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "devshard_host_tokens_executed_total", Help: "Tokens of the inferences this host's model ran, validation re-runs included, by direction: in (the prompt) or out (the completion).",
	}, []string{"direction"})
	m.firstTokens = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "devshard_host_time_to_first_token_seconds", Help: "Time from the model being asked to its first piece of text.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
	})
	m.storageUp.Set(1)
	// Series of known labels start at zero, so that rate() sees their
	// first increase.
	for _, d := range []string{"in", "out"} {
		m.tokens.WithLabelValues(d)
	}
	for _, v := range []string{"valid", "invalid"} {
		m.validations.WithLabelValues(v)
	}
	m.Registry.MustRegister(m.diffs, m.rejects, m.applyLatency, m.validations, m.withholds, m.refusals, m.storageUp, m.recovered, m.recoverTotal,
		m.tokens, m.firstTokens, chainAge{m}, buildinfo.Gauge("devshard_host", buildinfo.Read()),
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// countSessions adds the gauge of e's loaded sessions by phase, read at
// scrape time. New calls it for the engine the metrics are given to.
func (m *Metrics) countSessions(e *Engine) {
	if m != nil {
		m.Registry.MustRegister(&phaseCollector{e: e, desc: prometheus.NewDesc("devshard_host_sessions", "Loaded sessions by phase.", []string{"phase"}, nil)})
	}
}

func (m *Metrics) reject(reason string) {
	if m != nil {
		m.rejects.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) applyTimer() func() {
	if m == nil {
		return func() {}
	}
	start := time.Now()
	return func() { m.applyLatency.Observe(time.Since(start).Seconds()) }
}

func (m *Metrics) applied(sessionpb.Phase) {
	if m != nil {
		m.diffs.Inc()
	}
}

func (m *Metrics) sessionLoaded(sessionpb.Phase) {}

func (m *Metrics) storageError() {
	if m != nil {
		m.storageFailures.Add(1)
		m.writeDown.Store(true)
		m.storageUp.Set(0)
	}
}

func (m *Metrics) storageOK() {
	if m != nil {
		m.storageFailures.Store(0)
		m.writeDown.Store(false)
		m.setStorageUp()
	}
}

// storageProbed records a storage probe's outcome (probeStorage).
func (m *Metrics) storageProbed(err error) {
	if m == nil {
		return
	}
	if err == nil {
		m.probeErr.Store(nil)
	} else {
		why := err.Error()
		m.probeErr.Store(&why)
	}
	m.setStorageUp()
}

// setStorageUp is 1 while neither the last write nor the last probe
// failed.
func (m *Metrics) setStorageUp() {
	if m.writeDown.Load() || m.probeErr.Load() != nil {
		m.storageUp.Set(0)
		return
	}
	m.storageUp.Set(1)
}

// StorageProbeError is why the last storage probe failed, "" once one
// passed.
func (m *Metrics) StorageProbeError() string {
	if m == nil {
		return ""
	}
	if why := m.probeErr.Load(); why != nil {
		return *why
	}
	return ""
}

func (m *Metrics) validation(valid bool) {
	if m != nil {
		verdict := "invalid"
		if valid {
			verdict = "valid"
		}
		m.validations.WithLabelValues(verdict).Inc()
	}
}

func (m *Metrics) withheld() {
	if m != nil {
		m.withholds.Inc()
	}
}

func (m *Metrics) refused() {
	if m != nil {
		m.refusals.Inc()
	}
}

// RecoveryProgress records startup recovery progress.
func (m *Metrics) RecoveryProgress(done, total int) {
	if m != nil {
		m.recovered.Set(float64(done))
		m.recoverTotal.Set(float64(total))
	}
}

// StorageFailures is the number of consecutive failed storage writes.
func (m *Metrics) StorageFailures() int64 {
	if m == nil {
		return 0
	}
	return m.storageFailures.Load()
}

// phaseCollector counts loaded sessions by phase at scrape time.
type phaseCollector struct {
	e    *Engine
	desc *prometheus.Desc
}

func (c *phaseCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *phaseCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[sessionpb.Phase]int{}
	for _, en := range c.e.entries() {
		en.mu.Lock()
		if en.loaded {
			counts[en.s.Phase()]++
		}
		en.mu.Unlock()
	}
	for _, p := range []sessionpb.Phase{sessionpb.Phase_PHASE_ACTIVE, sessionpb.Phase_PHASE_FINALIZING, sessionpb.Phase_PHASE_SETTLEMENT} {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[p]), p.String())
	}
}

// measure wraps ex so that every run of the model is measured: its time
// to first token and its tokens. A nil *Metrics, or a nil ex, is given
// back as is.
func (m *Metrics) measure(ex executor.Executor) executor.Executor {
	if m == nil || ex == nil {
		return ex
	}
	return measured{ex, m}
}

type measured struct {
	executor.Executor
	m *Metrics
}

func (x measured) Execute(ctx context.Context, req executor.Request, emit func(string) error) (executor.Result, error) {
	began, seen := time.Now(), false
	res, err := x.Executor.Execute(ctx, req, func(s string) error {
		if !seen {
			seen = true
			x.m.firstTokens.Observe(time.Since(began).Seconds())
		}
		return emit(s)
	})
	if err == nil {
		x.m.tokens.WithLabelValues("in").Add(float64(res.Usage.PromptTokens))
		x.m.tokens.WithLabelValues("out").Add(float64(res.Usage.CompletionTokens))
	}
	return res, err
}
