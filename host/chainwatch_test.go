package host

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Issue 19: a host whose chain makes no blocks says so on /readyz, but
// stays ready (200, "degraded"): it still serves the sessions it holds,
// and its gateway counts only a 200 as a host it may send work to. The
// block age gauge shows how long the chain has been still.
func TestReadyzSaysDegradedWhileTheChainMakesNoBlocks(t *testing.T) {
	t.Parallel()
	b := setupDaemon(t)
	last := time.Now().Add(-42 * time.Second)
	b.chain.height, b.chain.haltedAt = 1234, last
	d, err := Open(t.Context(), b.cfg)
	require.NoError(t, err)
	defer func() { require.NoError(t, d.Close(context.Background())) }()

	var status int
	var body string
	require.Eventually(t, func() bool {
		status, body = get(t, d.URL()+"/readyz")
		return strings.Contains(body, "degraded")
	}, 5*time.Second, 10*time.Millisecond, "the host looks at the chain once it is up")
	require.Equal(t, http.StatusOK, status)
	require.Regexp(t, `"degraded: the chain has made no block for 4\ds \(last height 1234 at `+last.UTC().Format("15:04:05")+
		` UTC\): its validators may have lost their quorum; open escrows are still served, settlements and claims wait until it resumes"`, body)

	_, metrics := get(t, d.URL()+"/metrics")
	require.Contains(t, metrics, "devshard_host_chain_block_age_seconds 4")
}

// A chain that keeps making blocks leaves /readyz plain "ready".
func TestReadyzIsReadyWhileTheChainMakesBlocks(t *testing.T) {
	t.Parallel()
	m := NewMetrics()
	m.chainWatched(7, time.Now().Add(-time.Second), nil, 30*time.Second)
	require.Empty(t, m.ChainDegraded(time.Now()))
	m.chainWatched(0, time.Time{}, context.DeadlineExceeded, 30*time.Second)
	require.Equal(t, "the chain node does not answer: context deadline exceeded", m.ChainDegraded(time.Now()))
	m.chainWatched(8, time.Now(), nil, 30*time.Second)
	require.Empty(t, m.ChainDegraded(time.Now()))
	require.Contains(t, m.ChainDegraded(time.Now().Add(time.Minute)), "the chain has made no block for 1m0s (last height 8 at ")
}
