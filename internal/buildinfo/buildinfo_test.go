package buildinfo

import (
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

// The toolchain's VCS stamp names the build when nothing else does, and a
// -ldflags stamp wins over it.
func TestBuildInfoSources(t *testing.T) {
	t.Parallel()
	const rev = "59fb058a1c0e4f7d2b3a4c5d6e7f8091a2b3c4d5"
	bi := &debug.BuildInfo{Main: debug.Module{Path: "github.com/devshard/devshard", Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "-tags", Value: "libsecp256k1_sdk"},
		{Key: "vcs.revision", Value: rev},
		{Key: "vcs.time", Value: "2026-12-06T12:00:00Z"},
		{Key: "vcs.modified", Value: "true"},
	}}
	got := merge(fromBuildInfo(bi), Info{}, false)
	require.Equal(t, Info{Version: "devel-59fb058a1c0e", Commit: rev, Time: "2026-12-06T12:00:00Z", Modified: true, Tags: "libsecp256k1_sdk"}, got)
	require.Equal(t, "commit "+rev+" of 2026-12-06T12:00:00Z, with uncommitted changes", got.Describe())

	got = merge(fromBuildInfo(bi), Info{Version: "v0.3.0", Commit: "0123456789abcdef0123456789abcdef01234567", Modified: false}, true)
	require.Equal(t, "v0.3.0", got.Version)
	require.Equal(t, "0123456789abcdef0123456789abcdef01234567", got.Commit)
	require.False(t, got.Modified)

	bi.Main.Version = "v0.2.1"
	require.Equal(t, "v0.2.1", merge(fromBuildInfo(bi), Info{}, false).Version, "a module version from the proxy names the build")

	none := merge(fromBuildInfo(nil), Info{}, false)
	require.Equal(t, "devel", none.Version)
	require.Contains(t, none.Describe(), "commit unknown")
}

func TestGaugeNamesTheBuild(t *testing.T) {
	t.Parallel()
	in := Read()
	require.Equal(t, runtime.Version(), in.GoVersion)
	require.NotEmpty(t, in.Version)

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
