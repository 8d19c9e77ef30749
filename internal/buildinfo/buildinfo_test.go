package buildinfo

import (
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

func TestGaugeNamesTheBuild(t *testing.T) {
	t.Parallel()
	in := Read()
	require.Equal(t, runtime.Version(), in.GoVersion)
	require.NotEmpty(t, in.Version)
	require.NotEmpty(t, in.Commit)

	reg := prometheus.NewRegistry()
	reg.MustRegister(Gauge("devshard_test", Info{Version: "v1", Commit: "abc", GoVersion: "go1.x"}))
	fams, err := reg.Gather()
	require.NoError(t, err)
	require.Len(t, fams, 1)
	require.Equal(t, "devshard_test_build_info", fams[0].GetName())
	m := fams[0].GetMetric()[0]
	require.Equal(t, 1.0, m.GetGauge().GetValue())
	labels := map[string]string{}
	for _, l := range m.GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	require.Equal(t, map[string]string{"version": "v1", "commit": "abc", "go_version": "go1.x"}, labels)
}
