package gateway

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// writeKeys replaces the keys file the way 'devshard gateway keys' does: a
// new file renamed over the old.
func writeKeys(t *testing.T, path string, keys ...APIKey) {
	t.Helper()
	var b bytes.Buffer
	b.WriteString("# keys\n")
	for _, k := range keys {
		b.WriteString(k.Line() + "\n")
	}
	tmp := path + ".new"
	require.NoError(t, os.WriteFile(tmp, b.Bytes(), 0o600))
	require.NoError(t, os.Rename(tmp, path))
}

// A running gateway follows its keys file: a key added is admitted on its
// first request, a key revoked is refused on its next one, and a file that
// no longer parses leaves the keys in force as they were.
func TestKeyringFollowsTheKeysFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "api_keys")
	first, firstSecret := NewAPIKey("first")
	writeKeys(t, path, first)
	env, err := HashAPIKey("ci", "sk-devshard-from-the-environment")
	require.NoError(t, err)
	var logs bytes.Buffer
	ring, err := OpenKeyring(path, []APIKey{env}, slog.New(slog.NewTextHandler(&logs, nil)))
	require.NoError(t, err)
	b := setup(t, func(o *setupOptions) { o.config = func(c *Config) { c.Keyring = ring } })
	h := Handler(b.gw, APIConfig{})
	status := func(secret string) int {
		r, _ := http.NewRequest(http.MethodGet, "/v1/usage", nil)
		r.Header.Set("Authorization", "Bearer "+secret)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	require.Equal(t, http.StatusOK, status(firstSecret))
	require.Equal(t, http.StatusOK, status("sk-devshard-from-the-environment"))

	second, secondSecret := NewAPIKey("second")
	require.Equal(t, http.StatusUnauthorized, status(secondSecret))
	writeKeys(t, path, first, second)
	require.Equal(t, http.StatusOK, status(secondSecret), "a key added is admitted at once")

	writeKeys(t, path, second)
	require.Equal(t, http.StatusUnauthorized, status(firstSecret), "a key revoked is refused at once")
	require.Equal(t, http.StatusOK, status(secondSecret))
	require.Equal(t, http.StatusOK, status("sk-devshard-from-the-environment"), "the environment's keys stay")

	require.NoError(t, os.WriteFile(path+".new", []byte("second "+secondSecret+"\n"), 0o600))
	require.NoError(t, os.Rename(path+".new", path))
	require.Equal(t, http.StatusOK, status(secondSecret), "a broken file keeps the keys in force")
	require.Contains(t, logs.String(), "API keys file not re-read")
	require.NotContains(t, logs.String(), secondSecret[len("sk-devshard-"):], "the error does not quote the line's hash field")

	require.NoError(t, os.Remove(path))
	require.Equal(t, http.StatusUnauthorized, status(secondSecret), "no file, no file keys")
	require.Equal(t, http.StatusOK, status("sk-devshard-from-the-environment"))

	dup, err := HashAPIKey("ci", "sk-devshard-another-ci-key-00")
	require.NoError(t, err)
	writeKeys(t, path, dup)
	_, err = OpenKeyring(path, []APIKey{env}, nil)
	require.ErrorContains(t, err, `the API key id "ci" is given twice`)
}

// Requests look keys up while the file is rewritten: each sees the keys
// before or after a change, and a key in every version is never refused.
// Run under -race.
func TestKeyringLookupWhileTheFileChanges(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "api_keys")
	stay, staySecret := NewAPIKey("stay")
	writeKeys(t, path, stay)
	ring, err := OpenKeyring(path, nil, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	done := make(chan struct{})
	refused := make(chan string, 8)
	for range 4 {
		go func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				if _, ok := ring.Lookup(staySecret); !ok {
					refused <- "stay"
					return
				}
			}
		}()
	}
	for i := range 50 {
		other, _ := NewAPIKey("other")
		if i%2 == 0 {
			writeKeys(t, path, stay, other)
		} else {
			writeKeys(t, path, stay)
		}
	}
	close(done)
	select {
	case id := <-refused:
		t.Fatalf("key %q, in every version of the file, was refused", id)
	default:
	}
}
