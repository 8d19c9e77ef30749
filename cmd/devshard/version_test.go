package main

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// A binary built the way `make build` builds it names its commit, in both
// version commands, and the chain's names the app devshard. Before, they
// printed "(devel)" and "<appd>" with an empty commit.
func TestVersionNamesTheCommit(t *testing.T) {
	t.Parallel()
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	require.NoError(t, err, "the test runs in a git checkout")
	commit := strings.TrimSpace(string(head))
	require.Regexp(t, `^[0-9a-f]{40}$`, commit)

	ldflags, err := exec.Command("make", "-s", "-C", "../..", "--no-print-directory", "ldflags").Output()
	require.NoError(t, err)
	bin := filepath.Join(t.TempDir(), "devshard")
	build := exec.Command("go", "build", "-ldflags", strings.TrimSpace(string(ldflags)), "-o", bin, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, string(out))

	out, err = exec.Command(bin, "version").CombinedOutput()
	require.NoError(t, err, string(out))
	require.Contains(t, string(out), "commit "+commit)
	require.NotContains(t, string(out), "(devel)")

	out, err = exec.Command(bin, "chain", "version", "--long").CombinedOutput()
	require.NoError(t, err, string(out))
	require.Contains(t, string(out), "name: devshard\n")
	require.Contains(t, string(out), "server_name: devshard\n")
	require.Contains(t, string(out), "commit: "+commit+"\n")
	require.Regexp(t, regexp.MustCompile(`(?m)^version: \S+`), string(out))
	require.NotContains(t, string(out), "<appd>")
}
