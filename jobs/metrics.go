package jobs

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the queue's Prometheus metrics.
type metrics struct {
	enqueued, claimed, succeeded, failed, retried *prometheus.CounterVec
	stale                                         *prometheus.CounterVec
	expired, rescueErrors                         prometheus.Counter
	depth                                         *depthCollector
}

func newMetrics(q *Queue) *metrics {
	byKind := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"kind"})
	}
	m := &metrics{
		enqueued:  byKind("devshard_jobs_enqueued_total", "Jobs created, by kind (an enqueue that found its job already there is not counted)."),
		claimed:   byKind("devshard_jobs_claimed_total", "Claims handed to workers, by kind."),
		succeeded: byKind("devshard_jobs_succeeded_total", "Jobs finished with a result, by kind."),
		failed:    byKind("devshard_jobs_failed_total", "Jobs failed by their worker or out of tries, by kind."),
		retried:   byKind("devshard_jobs_retried_total", "Expired leases taken back and their jobs made ready again, by kind."),
		stale: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devshard_jobs_stale_lease_refusals_total",
			Help: "Heartbeats and results refused because their lease was no longer the job's, by kind and call (heartbeat, finish, fail).",
		}, []string{"kind", "call"}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devshard_jobs_expired_total", Help: "Finished jobs removed after their lifetime.",
		}),
		rescueErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devshard_jobs_rescue_errors_total", Help: "Maintenance passes that failed.",
		}),
		depth: &depthCollector{q: q, desc: prometheus.NewDesc("devshard_jobs_depth", "Jobs in the queue, by state, read at scrape time.", []string{"state"}, nil)},
	}
	// Series of known labels start at zero, so rate() sees their first
	// increase.
	for _, k := range []Kind{KindInference, KindValidation} {
		for _, c := range []*prometheus.CounterVec{m.enqueued, m.claimed, m.succeeded, m.failed, m.retried} {
			c.WithLabelValues(string(k))
		}
		for _, call := range []string{"heartbeat", "finish", "fail"} {
			m.stale.WithLabelValues(string(k), call)
		}
	}
	return m
}

func (m *metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.enqueued, m.claimed, m.succeeded, m.failed, m.retried, m.stale, m.expired, m.rescueErrors, m.depth} {
		if err := r.Register(c); err != nil {
			return errors.Join(errors.New("register job queue metrics"), err)
		}
	}
	return nil
}

// depthCollector reports the queue depth by state, counted in the database
// at scrape time, so it is right also when several hosts share one queue.
type depthCollector struct {
	q    *Queue
	desc *prometheus.Desc
}

func (c *depthCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *depthCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	n, err := c.q.Count(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for _, s := range States {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n[s]), string(s))
	}
}
