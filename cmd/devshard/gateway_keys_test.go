package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/gateway"
)

// keysCmd runs `gateway keys args...` and returns its output.
func keysCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newGatewayCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(append([]string{"keys"}, args...))
	err := cmd.Execute()
	return out.String(), err
}

var printedKey = regexp.MustCompile(`sk-devshard-[0-9a-f]{48}`)

// Keys are added and revoked while the gateway runs: the keyring the
// gateway serves from admits a key on the request after 'add', and
// refuses it on the request after 'revoke'. 'list' shows ids and creation
// times, never a key or its hash, and the file stays 0600.
func TestGatewayKeysAddListRevoke(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	path := filepath.Join(home, "api_keys")
	ring, err := loadAPIKeys(home, &gatewayConfig{apiKeysFile: "api_keys"}, nil)
	require.NoError(t, err)
	require.Empty(t, ring.Keys())

	out, err := keysCmd(t, "add", "billing", "--home", home)
	require.NoError(t, err, out)
	billing := printedKey.FindString(out)
	require.NotEmpty(t, billing, out)
	id, ok := ring.Lookup(billing)
	require.True(t, ok, "the running gateway admits the key added at once")
	require.Equal(t, "billing", id)

	out, err = keysCmd(t, "add", "ci", "--home", home)
	require.NoError(t, err, out)
	ci := printedKey.FindString(out)
	_, err = keysCmd(t, "add", "ci", "--home", home)
	require.ErrorContains(t, err, `an API key with id "ci" exists already`)

	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	out, err = keysCmd(t, "list", "--home", home)
	require.NoError(t, err)
	require.Regexp(t, `(?m)^ID\s+CREATED\nbilling\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\nci\s+\d{4}-\d\d-\d\dT`, out)
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	for _, f := range strings.Fields(string(raw)) {
		if len(f) == 64 {
			require.NotContains(t, out, f, "list shows no hash")
		}
	}
	require.NotContains(t, out, billing[len("sk-devshard-"):])
	require.NotContains(t, string(raw), billing, "the key itself is never stored")

	out, err = keysCmd(t, "revoke", "billing", "--home", home)
	require.NoError(t, err, out)
	_, ok = ring.Lookup(billing)
	require.False(t, ok, "the running gateway refuses the key revoked at once")
	_, ok = ring.Lookup(ci)
	require.True(t, ok)
	_, err = keysCmd(t, "revoke", "billing", "--home", home)
	require.ErrorContains(t, err, `no API key with id "billing"`)

	fi, err = os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	keys, err := gateway.ParseAPIKeys(string(mustRead(t, path)))
	require.NoError(t, err)
	require.Len(t, keys, 1)
	require.Equal(t, "ci", keys[0].ID)
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	return raw
}

// keys finds the file the gateway reads: the api_keys_file of the
// gateway.toml in its home, unless a flag names another.
func TestGatewayKeysFollowTheGatewaySettings(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(home, "gateway.toml"), []byte("api_keys_file = \"apps/keys\"\n"), 0o600))
	out, err := keysCmd(t, "add", "app", "--home", home)
	require.NoError(t, err, out)
	keys, err := gateway.ParseAPIKeys(string(mustRead(t, filepath.Join(home, "apps", "keys"))))
	require.NoError(t, err)
	require.Len(t, keys, 1)

	out, err = keysCmd(t, "add", "other", "--home", home, "--api-keys-file", "elsewhere")
	require.NoError(t, err, out)
	require.FileExists(t, filepath.Join(home, "elsewhere"))

	c := &gatewayConfig{}
	s := gatewaySettings(c)
	require.NoError(t, s.Load(filepath.Join(home, "gateway.toml"), lookup(map[string]string{"DEVSHARD_GATEWAY_HOME": home}), io.Discard))
	ring, err := loadAPIKeys(home, c, nil)
	require.NoError(t, err)
	require.Equal(t, keys, ring.Keys(), "the gateway reads the file keys wrote")
}
