package types

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// The upgrade protection rule on heights alone (docs/chain.md, "Upgrade
// protection"): the window [upgrade, upgrade + window) meets the span
// [start, end). Both intervals are half-open.
func TestUpgradeProtected(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name       string
		upgrade    int64
		window     uint64
		start, end int64
		want       bool
	}{
		{"upgrade inside the span", 15, 10, 10, 20, true},
		{"upgrade at the span's first block", 10, 1, 10, 20, true},
		{"upgrade at the span's last block", 19, 1, 10, 20, true},
		{"upgrade at the span's end is after it", 20, 100, 10, 20, false},
		{"window reaching the span's first block", 5, 6, 10, 20, true},
		{"window ending at the span's start", 5, 5, 10, 20, false},
		{"window 0 protects nothing, even at the upgrade's own height", 15, 0, 10, 20, false},
		{"largest window, far back", 1, MaxUpgradeProtectionWindow, MaxUpgradeProtectionWindow, MaxUpgradeProtectionWindow + 5, true},
		{"a window past int64 does not wrap", 1 << 62, ^uint64(0), 1 << 62, 1<<62 + 1, true},
	}
	for _, c := range cases {
		require.Equal(t, c.want, UpgradeProtected(c.upgrade, c.window, c.start, c.end), c.name)
	}
}
