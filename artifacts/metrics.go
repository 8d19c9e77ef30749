package artifacts

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the cache's Prometheus metrics.
type metrics struct {
	preparations, hits, misses, checksumFailures, constructionRetries, evictions prometheus.Counter
	prepareSeconds                                                               prometheus.Histogram
	bytesUsed                                                                    prometheus.GaugeFunc
}

func newMetrics(c *Cache) *metrics {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "devshard_artifacts_" + name, Help: help})
	}
	return &metrics{
		preparations:        counter("preparations_total", "Preparations run (prepare funcs called)."),
		hits:                counter("hits_total", "Acquires served by a cached artifact that matched its checksum."),
		misses:              counter("misses_total", "Acquires that waited for a preparation, their own or a shared one."),
		checksumFailures:    counter("checksum_failures_total", "Cached artifacts that did not match their checksum when acquired, and were prepared again."),
		constructionRetries: counter("construction_retries_total", "Artifacts discarded after a construction error, to be prepared again."),
		evictions:           counter("evictions_total", "Artifacts evicted to stay under the byte bound."),
		prepareSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "devshard_artifacts_prepare_seconds",
			Help:    "Time the prepare func took, failed ones included.",
			Buckets: prometheus.ExponentialBuckets(0.1, 2, 14), // 0.1 s to about 14 min
		}),
		bytesUsed: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "devshard_artifacts_bytes_used",
			Help: "Bytes of installed artifacts and their checksum files, and of installs under way.",
		}, func() float64 { return float64(c.Stats().BytesUsed) }),
	}
}

func (m *metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.preparations, m.hits, m.misses, m.checksumFailures, m.constructionRetries, m.evictions, m.prepareSeconds, m.bytesUsed} {
		if err := r.Register(c); err != nil {
			return errors.Join(errors.New("register artifact cache metrics"), err)
		}
	}
	return nil
}
