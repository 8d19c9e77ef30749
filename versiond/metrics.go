package versiond

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are versiond's Prometheus metrics.
type metrics struct {
	downloads      *prometheus.CounterVec
	hashMismatches *prometheus.CounterVec
	restarts       *prometheus.CounterVec
	children       *prometheus.GaugeVec
}

// newMetrics registers versiond's metrics on reg.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		downloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devshard_versiond_downloads_total",
			Help: "Version downloads, by outcome: ok, hash_mismatch, too_large, refused (not https) or error.",
		}, []string{"outcome"}),
		hashMismatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devshard_versiond_hash_mismatches_total",
			Help: "Binaries whose bytes did not hash to the approved sha256 (at download or before a start), by version. Each was deleted, never run.",
		}, []string{"version"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devshard_versiond_restarts_total",
			Help: "Child restarts after an exit, by version.",
		}, []string{"version"}),
		children: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "devshard_versiond_versions",
			Help: "Versions on this host, by state: installing, starting, serving, draining.",
		}, []string{"state"}),
	}
	for _, c := range []prometheus.Collector{m.downloads, m.hashMismatches, m.restarts, m.children} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Zero in every state from the start: a versiond that waits for its
	// first list (its chain node is catching up) shows it has nothing yet.
	m.setStates(nil)
	return m, nil
}

// countDownloadError counts a failed install of version by its cause.
func (m *metrics) countDownloadError(version string, err error) {
	var mismatch *HashMismatchError
	var tooLarge *TooLargeError
	switch {
	case errors.As(err, &mismatch):
		m.downloads.WithLabelValues("hash_mismatch").Inc()
		m.hashMismatches.WithLabelValues(version).Inc()
	case errors.As(err, &tooLarge):
		m.downloads.WithLabelValues("too_large").Inc()
	case errors.Is(err, ErrNotHTTPS):
		m.downloads.WithLabelValues("refused").Inc()
	default:
		m.downloads.WithLabelValues("error").Inc()
	}
}

// setStates sets the gauge of versions by state.
func (m *metrics) setStates(all []VersionStatus) {
	counts := map[State]int{StateInstalling: 0, StateStarting: 0, StateServing: 0, StateDraining: 0}
	for _, v := range all {
		counts[v.State]++
	}
	for st, n := range counts {
		m.children.WithLabelValues(string(st)).Set(float64(n))
	}
}
