package host

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/session/sessiontest"
)

// families names the metric families m's registry gathers.
func families(t *testing.T, m *Metrics) map[string]int {
	t.Helper()
	got, err := m.Registry.Gather()
	require.NoError(t, err)
	out := map[string]int{}
	for _, f := range got {
		out[f.GetName()] = len(f.GetMetric())
	}
	return out
}

// Metrics are built before the engine and handed to it: the engine they
// are given adds its sessions-by-phase gauge, and no engine's config is
// changed behind its back.
func TestEngineGivenMetricsCountsItsSessions(t *testing.T) {
	t.Parallel()
	m := NewMetrics()
	require.NotContains(t, families(t, m), "devshard_host_sessions", "no engine yet")
	require.Contains(t, families(t, m), "devshard_host_storage_up")

	f := sessiontest.New(1, sessiontest.DefaultOptions())
	e := New(Config{Key: f.Hosts[0], Escrows: &fakeChain{}, Executor: executor.Builtin{}, Metrics: m})
	require.Same(t, m, e.cfg.Metrics)
	require.Equal(t, 3, families(t, m)["devshard_host_sessions"], "one gauge per phase")

	bare := New(Config{Key: f.Hosts[0], Escrows: &fakeChain{}, Executor: executor.Builtin{}})
	require.Nil(t, bare.cfg.Metrics)
}
