package gateway

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"
)

// A key is kept as its id and SHA-256: the secret admits a request, the
// hash itself does not, and a keys file in any other form is refused.
func TestAPIKeyIsAcceptedByItsHash(t *testing.T) {
	t.Parallel()
	b := setup(t)
	app, secret := NewAPIKey("app")
	other, err := HashAPIKey("billing-2", "sk-devshard-another-key-0123")
	require.NoError(t, err)
	keys, err := ParseAPIKeys("# keys\n" + app.Line() + "\n\n" + other.Line() + "\n")
	require.NoError(t, err)
	require.Equal(t, []APIKey{app, other}, keys)
	h := Handler(b.gw, APIConfig{Keys: keys})

	for _, c := range []struct {
		auth   string
		status int
	}{
		{"Bearer " + secret, http.StatusOK},
		{"Bearer sk-devshard-another-key-0123", http.StatusOK},
		{"Bearer " + app.Line()[len("app "):], http.StatusUnauthorized}, // the hash is not the key
		{"Bearer " + secret[:len(secret)-1], http.StatusUnauthorized},
	} {
		r, _ := http.NewRequest(http.MethodGet, "/v1/usage", nil)
		r.Header.Set("Authorization", c.auth)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		require.Equal(t, c.status, w.Code, w.Body.String())
	}

	for _, bad := range []struct{ text, says string }{
		{"app:" + secret, "expected \"<id> <sha256 of the key"},            // the old name:key form
		{secret, "expected \"<id> <sha256 of the key"},                     // a bare key
		{"app " + secret, "must be 64 hex characters"},                     // a key where its hash goes
		{app.Line() + "\n" + app.Line(), "listed twice"},                   // one id twice
		{app.Line() + "\nother " + app.Line()[4:], "the same hash as key"}, // one key, two ids
		{"a/b " + app.Line()[4:], "may hold only letters"},
	} {
		_, err := ParseAPIKeys(bad.text)
		require.ErrorContains(t, err, bad.says, bad.text)
	}
	_, err = HashAPIKey("app", "short")
	require.ErrorContains(t, err, "use at least 16")
}

// Usage, in-flight limits and logs name a key by its id, never by the
// key or a part of it: two keys that share their first characters (every
// generated key starts "sk-devshard-") are accounted apart. The old
// gateway named a bare key by its first 14 characters, which leaked them
// into logs and merged the two keys' usage (both are "sk-devshard-aa…"
// there, so each key's usage read 2 requests); the test is written against
// the new APIKey and does not compile against the old one.
func TestAttackAPIKeyPrefixNamesNothing(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	b := setup(t, func(o *setupOptions) {
		o.config = func(c *Config) {
			c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		}
	})
	secrets := []string{"sk-devshard-aaaa-first-key", "sk-devshard-aaaa-second-key"}
	var keys []APIKey
	for i, s := range secrets {
		k, err := HashAPIKey([]string{"first", "second"}[i], s)
		require.NoError(t, err)
		keys = append(keys, k)
	}
	srv := b.api(t, APIConfig{Keys: keys})
	for _, s := range secrets {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/chat/completions", bytes.NewReader(chatBody(t, ask(1), nil)))
		req.Header.Set("Authorization", "Bearer "+s)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	// A request's usage is written after the app has its answer (api.go).
	// Closing the server waits for its handlers, writes included; the
	// usage is then read through a second server on the same gateway.
	srv.Close()
	srv = b.api(t, APIConfig{Keys: keys})
	for i, s := range secrets {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/usage", nil)
		req.Header.Set("Authorization", "Bearer "+s)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		var body struct {
			Key   string `json:"key"`
			Usage Usage  `json:"usage"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
		resp.Body.Close()
		require.Equal(t, keys[i].ID, body.Key)
		require.Equal(t, uint64(1), body.Usage.Requests, "key %s is accounted alone", keys[i].ID)
	}
	resp, err := http.Get(srv.URL + "/metrics")
	require.NoError(t, err)
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, s := range secrets {
		require.NotContains(t, logs.String(), s[:14])
		require.NotContains(t, string(metrics), s[:14])
	}
}
