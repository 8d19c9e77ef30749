package host

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/devshard/devshard/chainclient"
)

// chainSeen is the chain as the daemon last saw it: its latest block, and
// why the last look failed ("" when it answered).
type chainSeen struct {
	height     int64
	at         time.Time // zero until the chain first answered
	err        string
	stallAfter time.Duration
}

// chainWatched records a look at the chain's latest block. A failed look
// keeps the block seen before, whose age goes on growing.
func (m *Metrics) chainWatched(height int64, at time.Time, err error, stallAfter time.Duration) {
	if m == nil {
		return
	}
	seen := chainSeen{height: height, at: at, stallAfter: stallAfter}
	if err != nil {
		seen.err = err.Error()
		if last := m.chain.Load(); last != nil {
			seen.height, seen.at = last.height, last.at
		} else {
			seen.height, seen.at = 0, time.Time{}
		}
	}
	m.chain.Store(&seen)
}

// ChainDegraded says why the chain holds the host back at now: its node
// does not answer, or it has made no block for longer than
// chain.stall_after; "" while blocks keep coming. The host still serves the
// sessions it holds either way; what waits is settlements, claims and
// escrows it has not loaded yet.
func (m *Metrics) ChainDegraded(now time.Time) string {
	if m == nil {
		return ""
	}
	seen := m.chain.Load()
	switch {
	case seen == nil:
		return ""
	case seen.err != "":
		return "the chain node does not answer: " + seen.err
	case !seen.at.IsZero():
		if err := chainclient.Stalled(seen.height, seen.at, now, seen.stallAfter); err != nil {
			return err.Error()
		}
	}
	return ""
}

var chainAgeDesc = prometheus.NewDesc("devshard_host_chain_block_age_seconds",
	"Age of the chain's latest block the host has seen (asked every 5s); past chain.stall_after the chain counts as stalled. Absent until the chain first answers.", nil, nil)

// chainAge exports the age of the latest block seen, at scrape time.
type chainAge struct{ m *Metrics }

func (c chainAge) Describe(ch chan<- *prometheus.Desc) { ch <- chainAgeDesc }

func (c chainAge) Collect(ch chan<- prometheus.Metric) {
	if seen := c.m.chain.Load(); seen != nil && !seen.at.IsZero() {
		ch <- prometheus.MustNewConstMetric(chainAgeDesc, prometheus.GaugeValue, time.Since(seen.at).Seconds())
	}
}

// watchChain asks the chain for its latest block and records it, for
// /readyz and the block age gauge.
func watchChain(ctx context.Context, c Chain, stallAfter time.Duration, m *Metrics) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	height, at, err := c.LatestBlock(ctx)
	if err != nil && ctx.Err() != nil && context.Cause(ctx) == context.Canceled {
		return // the host is closing
	}
	m.chainWatched(height, at, err, stallAfter)
}
