package buildinfo

import (
	"runtime/debug"
	"testing"

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
