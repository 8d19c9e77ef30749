package gateway

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/internal/buildinfo"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/versiond"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
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
	carriedTxs  *prometheus.CounterVec
	tokens      *prometheus.CounterVec
	charged     prometheus.Counter
	firstTokens prometheus.Histogram
	inFlight    prometheus.Gauge
	chainErrors *prometheus.CounterVec

	// recent and hosts feed /status: what the last minutes looked like.
	recent *window
	hosts  *hostLog

	// watched is the gateway whose escrows the balance gauges read; the
	// latest New wins, so a gateway restarted on the same Metrics is read.
	watched atomic.Pointer[Gateway]
	watch   sync.Once
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
		carriedTxs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devshard_gateway_host_txs_carried_total",
			Help: "Host txs the gateway's diffs carried into the sessions' books, by the address of the slot holder that signed them (hex) and kind: confirm, finish, validation or timeout.",
		}, []string{"host", "kind"}),
	}
	m.tokens = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "devshard_gateway_tokens_total", Help: "Tokens of completed requests, by direction: in (the prompt) or out (the completion).",
	}, []string{"direction"})
	m.charged = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "devshard_gateway_cost_charged_total", Help: "Coins the escrows were charged for completed requests.",
	})
	m.firstTokens = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "devshard_gateway_time_to_first_token_seconds", Help: "Time from the start of a request to the first piece of its answer passed to the app.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
	})
	m.inFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "devshard_gateway_requests_in_flight", Help: "Requests being completed right now.",
	})
	m.chainErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "devshard_gateway_chain_errors_total", Help: "Calls to the chain node that failed, by call: epoch, create_escrow, settle_escrow, closed, host_url, balance, latest_block.",
	}, []string{"call"})
	m.recent, m.hosts = newWindow(statusMinutes), newHostLog()
	// Series of known labels start at zero, so that rate() sees their
	// first increase.
	for _, d := range []string{"in", "out"} {
		m.tokens.WithLabelValues(d)
	}
	for _, call := range chainCalls {
		m.chainErrors.WithLabelValues(call)
	}
	m.Registry.MustRegister(m.requests, m.latency, m.phases, m.diffs, m.retries, m.escrows, m.settlements, m.droppedTxs,
		m.carriedTxs, m.tokens, m.charged, m.firstTokens, m.inFlight, m.chainErrors, buildinfo.Gauge("devshard_gateway", buildinfo.Read()),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// request counts a chat completion request that ended with HTTP status.
func (m *Metrics) request(status int) {
	m.requests.WithLabelValues(strconv.Itoa(status)).Inc()
	m.recent.add(time.Now(), status >= 400)
}

// begin counts a request in flight until the returned func is called.
func (m *Metrics) begin() func() {
	m.inFlight.Inc()
	return m.inFlight.Dec
}

// firstToken wraps emit to observe, at its first call, the time since
// firstToken was called.
func (m *Metrics) firstToken(emit func(string) error) func(string) error {
	began, seen := time.Now(), false
	return func(s string) error {
		if !seen {
			seen = true
			m.firstTokens.Observe(time.Since(began).Seconds())
		}
		return emit(s)
	}
}

// served counts a completed request's tokens and what it cost.
func (m *Metrics) served(u executor.Usage, cost uint64) {
	m.tokens.WithLabelValues("in").Add(float64(u.PromptTokens))
	m.tokens.WithLabelValues("out").Add(float64(u.CompletionTokens))
	m.charged.Add(float64(cost))
}

// hostAnswered records how an executor's stream went, for /status. A
// request the app gave up on says nothing about the host.
func (m *Metrics) hostAnswered(url string, took time.Duration, err error) {
	if errors.Is(err, context.Canceled) {
		return
	}
	m.hosts.add(url, took, err)
}

// watchEscrows adds the gauges read from g at scrape time: the balance of
// each lane's escrow, how many escrows are unsettled, and the age of the
// chain's latest block.
func (m *Metrics) watchEscrows(g *Gateway) {
	m.watched.Store(g)
	m.watch.Do(func() { m.Registry.MustRegister(escrowCollector{m}) })
}

var (
	balanceDesc = prometheus.NewDesc("devshard_gateway_escrow_balance", "Coins left in the escrow of each lane (the escrows taking requests).", []string{"lane"}, nil)
	openDesc    = prometheus.NewDesc("devshard_gateway_escrows_open", "Escrows not yet settled.", nil, nil)
	blockDesc   = prometheus.NewDesc("devshard_gateway_chain_block_age_seconds",
		"Age of the chain's latest block the gateway has seen (asked every epoch poll); past chain.stall_after the chain counts as stalled. Absent until the chain first answers.", nil, nil)
)

type escrowCollector struct{ m *Metrics }

func (c escrowCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- balanceDesc
	ch <- openDesc
	ch <- blockDesc
}

func (c escrowCollector) Collect(ch chan<- prometheus.Metric) {
	g := c.m.watched.Load()
	g.mu.Lock()
	lanes, open := append([]*escrow(nil), g.lanes...), len(g.all)
	g.mu.Unlock()
	for i, e := range lanes {
		if e != nil {
			ch <- prometheus.MustNewConstMetric(balanceDesc, prometheus.GaugeValue, float64(e.balance()), strconv.Itoa(i))
		}
	}
	ch <- prometheus.MustNewConstMetric(openDesc, prometheus.GaugeValue, float64(open))
	if b := g.block.Load(); b != nil {
		ch <- prometheus.MustNewConstMetric(blockDesc, prometheus.GaugeValue, time.Since(b.at).Seconds())
	}
}

// chainCalls are the calls devshard_gateway_chain_errors_total counts.
var chainCalls = []string{"epoch", "create_escrow", "settle_escrow", "closed", "host_url", "balance", "latest_block"}

// countChain wraps c so that every failed call is counted by its name.
// A call the caller gave up on (its context ended) is not the chain's
// failure.
func (m *Metrics) countChain(c Chain) Chain { return countingChain{c, m.chainErrors} }

type countingChain struct {
	c      Chain
	errors *prometheus.CounterVec
}

func (c countingChain) count(call string, err error) {
	if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		c.errors.WithLabelValues(call).Inc()
	}
}

func (c countingChain) Epoch(ctx context.Context) (uint64, devshardtypes.EpochState, error) {
	id, st, err := c.c.Epoch(ctx)
	c.count("epoch", err)
	return id, st, err
}

func (c countingChain) CreateEscrowUnder(ctx context.Context, amount uint64, runtimeVersion string) (*sessionpb.EscrowSnapshot, error) {
	s, err := c.c.CreateEscrowUnder(ctx, amount, runtimeVersion)
	c.count("create_escrow", err)
	return s, err
}

func (c countingChain) ApprovedVersions(ctx context.Context) ([]versiond.Version, error) {
	v, err := c.c.ApprovedVersions(ctx)
	c.count("approved_versions", err)
	return v, err
}

func (c countingChain) CandidateURLs(ctx context.Context) ([]string, error) {
	u, err := c.c.CandidateURLs(ctx)
	c.count("candidate_urls", err)
	return u, err
}

func (c countingChain) SettleEscrow(ctx context.Context, s *sessionpb.Settlement) (string, error) {
	h, err := c.c.SettleEscrow(ctx, s)
	c.count("settle_escrow", err)
	return h, err
}

func (c countingChain) Closed(ctx context.Context, id uint64) (bool, string, error) {
	ok, h, err := c.c.Closed(ctx, id)
	c.count("closed", err)
	return ok, h, err
}

func (c countingChain) HostURL(ctx context.Context, a signing.Address) (string, error) {
	u, err := c.c.HostURL(ctx, a)
	c.count("host_url", err)
	return u, err
}

func (c countingChain) Balance(ctx context.Context) (uint64, error) {
	b, err := c.c.Balance(ctx)
	c.count("balance", err)
	return b, err
}

func (c countingChain) LatestBlock(ctx context.Context) (int64, time.Time, error) {
	h, at, err := c.c.LatestBlock(ctx)
	c.count("latest_block", err)
	return h, at, err
}

// droppedTx counts a tx from host dropped on intake for err.
func (m *Metrics) droppedTx(host string, err error) {
	m.droppedTxs.WithLabelValues(host, dropReason(err)).Inc()
}

// carried counts the host txs diff d carried; slotHost names each slot's
// holder. The gateway's own txs (starts, finalizes) are not counted.
func (m *Metrics) carried(d *sessionpb.Diff, slotHost []string) {
	for _, tx := range d.Txs {
		kind := session.HostTxKind(tx)
		if kind == "" {
			continue
		}
		host := "unknown"
		if int(tx.Slot) < len(slotHost) {
			host = slotHost[tx.Slot]
		}
		m.carriedTxs.WithLabelValues(host, kind).Inc()
	}
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

// gaugeValue reads a gauge's current value.
func gaugeValue(g prometheus.Gauge) float64 {
	var d dto.Metric
	if err := g.Write(&d); err != nil {
		return 0
	}
	return d.GetGauge().GetValue()
}
