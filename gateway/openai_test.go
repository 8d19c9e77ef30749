package gateway

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
)

// openAIError is OpenAI's error object, param included.
type openAIError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

// raw sends one request to h in memory, with the test key.
func raw(h http.Handler, method, path string, body []byte, header map[string]string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, bytes.NewReader(body))
	r.Header.Set("Authorization", "Bearer "+testSecret)
	for k, v := range header {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// decodeError reads w as OpenAI's error object: JSON, with its type and
// code.
func decodeError(t *testing.T, w *httptest.ResponseRecorder, status int, code string) openAIError {
	t.Helper()
	require.Equal(t, status, w.Code, w.Body.String())
	require.Equal(t, "application/json", w.Header().Get("Content-Type"))
	var e openAIError
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &e), w.Body.String())
	require.NotEmpty(t, e.Error.Message)
	require.Equal(t, "invalid_request_error", e.Error.Type)
	if code == "" {
		require.Nil(t, e.Error.Code)
	} else {
		require.NotNil(t, e.Error.Code, w.Body.String())
		require.Equal(t, code, *e.Error.Code)
	}
	return e
}

// A path that is no route, a route asked with another method, and the
// legacy /v1/completions all answer with OpenAI's error object, not Go's
// plain text.
func TestRoutesAnswerWithErrorObjects(t *testing.T) {
	t.Parallel()
	h := Handler(setup(t).gw, APIConfig{Keys: []APIKey{testKey}})

	e := decodeError(t, raw(h, http.MethodPost, "/v1/embeddings", []byte(`{}`), nil), http.StatusNotFound, "unknown_url")
	require.Equal(t, "Invalid URL (POST /v1/embeddings).", e.Error.Message)

	w := raw(h, http.MethodGet, "/v1/chat/completions", nil, nil)
	e = decodeError(t, w, http.StatusMethodNotAllowed, "method_not_allowed")
	require.Contains(t, e.Error.Message, "use POST")
	require.Equal(t, "POST", w.Header().Get("Allow"))
	w = raw(h, http.MethodDelete, "/v1/models", nil, nil)
	decodeError(t, w, http.StatusMethodNotAllowed, "method_not_allowed")
	require.Equal(t, "GET", w.Header().Get("Allow"))

	for _, method := range []string{http.MethodPost, http.MethodGet} {
		e = decodeError(t, raw(h, method, "/v1/completions", []byte(`{"model":"devshard-test-1","prompt":"hi"}`), nil), http.StatusNotFound, "unsupported_endpoint")
		require.Contains(t, e.Error.Message, "/v1/chat/completions")
	}
}

// GET /v1/models/{id} answers with the model object, or 404 for a model
// the gateway does not serve.
func TestModelRetrieve(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOptions) {
		o.config = func(c *Config) { c.Models = []string{executor.BuiltinModel, "Qwen/Qwen3-8B"} }
	})
	h := Handler(b.gw, APIConfig{Keys: []APIKey{testKey}})
	for _, id := range []string{executor.BuiltinModel, "Qwen/Qwen3-8B"} {
		w := raw(h, http.MethodGet, "/v1/models/"+id, nil, nil)
		require.Equal(t, http.StatusOK, w.Code, w.Body.String())
		var m model
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &m))
		require.Equal(t, modelObject(id), m)
	}
	e := decodeError(t, raw(h, http.MethodGet, "/v1/models/gpt-4o", nil, nil), http.StatusNotFound, "model_not_found")
	require.Equal(t, "model", *e.Error.Param)
	require.Contains(t, e.Error.Message, `"gpt-4o"`)

	r := httptest.NewRequest(http.MethodGet, "/v1/models/"+executor.BuiltinModel, nil)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	require.Equal(t, http.StatusUnauthorized, w.Code, "a model is shown only to a key")
}

// A parameter the network cannot honour is refused with 400 and its name,
// before anything is sequenced; so is one of the wrong type.
func TestRefusedParamsAreNamed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	h := Handler(b.gw, APIConfig{Keys: []APIKey{testKey}})
	for _, tc := range []struct {
		param string
		extra map[string]any
	}{
		{"n", map[string]any{"n": 2}},
		{"tools", map[string]any{"tools": []any{map[string]any{"type": "function", "function": map[string]any{"name": "f"}}}}},
		{"tool_choice", map[string]any{"tool_choice": "auto"}},
		{"logprobs", map[string]any{"logprobs": true}},
		{"top_logprobs", map[string]any{"top_logprobs": 3}},
		{"response_format", map[string]any{"response_format": map[string]any{"type": "json_object"}}},
		{"response_format", map[string]any{"response_format": map[string]any{"type": "json_schema", "json_schema": map[string]any{"name": "x"}}}},
		{"temperature", map[string]any{"temperature": 2.5}},
		{"top_p", map[string]any{"top_p": 0}},
		{"stop", map[string]any{"stop": []string{"a", "b", "c", "d", "e"}}},
		{"stop", map[string]any{"stop": 7}},
		{"seed", map[string]any{"seed": "abc"}},
		{"temperature", map[string]any{"temperature": "hot", "stream": true}},
		{"presence_penalty", map[string]any{"presence_penalty": 2.5}},
		{"logit_bias", map[string]any{"logit_bias": map[string]any{"50256": -100}}},
		{"store", map[string]any{"store": true}},
		{"reasoning_effort", map[string]any{"reasoning_effort": "high"}},
		{"a_made_up_field", map[string]any{"a_made_up_field": 1, "z_too": 2}},
	} {
		w := raw(h, http.MethodPost, "/v1/chat/completions", chatBody(t, ask(1), tc.extra), nil)
		e := decodeError(t, w, http.StatusBadRequest, "")
		require.NotNil(t, e.Error.Param, "%v: %s", tc.extra, w.Body.String())
		require.Equal(t, tc.param, *e.Error.Param, w.Body.String())
		require.Contains(t, e.Error.Message, tc.param)
	}
	require.Zero(t, b.chain.createdCount(), "a refused request locks nothing")

	// What the network can answer with is accepted as absent.
	w := raw(h, http.MethodPost, "/v1/chat/completions", chatBody(t, ask(1), map[string]any{
		"n": 1, "tools": []any{}, "tool_choice": "none", "logprobs": false, "response_format": map[string]any{"type": "text"},
		"logit_bias": map[string]any{}, "store": false, "user": "u-1", "metadata": map[string]any{"k": "v"}, "parallel_tool_calls": true,
	}), nil)
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	spaced := []byte(`{"model":"devshard-test-1","messages":[{"role":"user","content":"hi"}],"max_tokens":8,"tools":[ ]}`)
	w = raw(h, http.MethodPost, "/v1/chat/completions", spaced, nil)
	require.Equal(t, http.StatusOK, w.Code, "an empty tools list is accepted, however it is spaced: %s", w.Body.String())
}

// seed, stop, temperature, top_p and the penalties reach the host's executor: the answer
// is the built-in model's for the request with them, so the host ran the
// request the prompt hash committed to, parameters and all.
func TestParamsReachTheExecutor(t *testing.T) {
	t.Parallel()
	b := setup(t)
	srv := b.api(t, APIConfig{})
	seed, temp, topP, presence, frequency := int64(42), 0.3, 0.8, 0.5, -0.5

	plain := builtinAnswer(t, ask(1))
	withParams := ask(1)
	withParams.Seed, withParams.Temperature, withParams.TopP = &seed, &temp, &topP
	withParams.PresencePenalty, withParams.FrequencyPenalty = &presence, &frequency
	want := builtinAnswer(t, withParams)
	require.NotEqual(t, plain.Text, want.Text)
	words := strings.SplitAfter(want.Text, " ")
	require.Greater(t, len(words), 3)
	stop := " " + words[2] // the third word, with its leading space
	withParams.Stop = []string{stop}
	want = builtinAnswer(t, withParams)
	require.Equal(t, "stop", want.FinishReason)

	for _, stream := range []bool{false, true} {
		resp := postChat(t, srv.URL, chatBody(t, ask(1), map[string]any{
			"seed": seed, "temperature": temp, "top_p": topP, "stop": stop, "stream": stream,
			"presence_penalty": presence, "frequency_penalty": frequency,
		}))
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		if !stream {
			var out chatResponse
			require.NoError(t, json.Unmarshal(body, &out))
			require.Equal(t, want.Text, out.Choices[0].Message.Content)
			require.Equal(t, "stop", out.Choices[0].FinishReason)
			continue
		}
		var text strings.Builder
		for _, data := range sseData(t, bytes.NewReader(body)) {
			var chunk struct {
				Choices []struct {
					Delta struct{ Content string } `json:"delta"`
				} `json:"choices"`
			}
			if data != "[DONE]" {
				require.NoError(t, json.Unmarshal([]byte(data), &chunk))
				for _, c := range chunk.Choices {
					text.WriteString(c.Delta.Content)
				}
			}
		}
		require.Equal(t, want.Text, text.String())
	}
}

// syncBuffer is a log sink tests read while the gateway writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Every answer carries an x-request-id: the app's own if well formed, a
// fresh one otherwise. The gateway logs it with the escrow and nonce, and
// sends it to the executor.
func TestRequestID(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	seen := make(chan string, 4)
	b := setup(t, func(o *setupOptions) {
		o.config = func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) }
		o.wrap = func(_ int, h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasSuffix(r.URL.Path, "/inference") {
					seen <- r.Header.Get(hostapi.RequestIDHeader)
				}
				h.ServeHTTP(w, r)
			})
		}
	})
	h := Handler(b.gw, APIConfig{Keys: []APIKey{testKey}})

	w := raw(h, http.MethodPost, "/v1/chat/completions", chatBody(t, ask(1), nil), map[string]string{"X-Request-Id": "app-42.a:b_c"})
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	require.Equal(t, "app-42.a:b_c", w.Header().Get("x-request-id"))
	require.Equal(t, "app-42.a:b_c", <-seen, "the executor is told the request id")
	require.Contains(t, logs.String(), `msg="request sequenced" request_id=app-42.a:b_c escrow=`)
	require.Contains(t, logs.String(), `msg="request finished" request_id=app-42.a:b_c escrow=`)

	generated := map[string]bool{}
	for _, bad := range []string{"", strings.Repeat("a", 129), "two words", "new\nline", "ünïcode"} {
		for _, path := range []string{"/v1/models", "/v1/nothing-here"} {
			r := httptest.NewRequest(http.MethodGet, path, nil)
			r.Header.Set("Authorization", "Bearer "+testSecret)
			if bad != "" {
				r.Header["X-Request-Id"] = []string{bad}
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			id := w.Header().Get("x-request-id")
			require.True(t, strings.HasPrefix(id, "req_") && hostapi.ValidRequestID(id), "%q answered with %q", bad, id)
			require.False(t, generated[id], "request ids are fresh")
			generated[id] = true
		}
	}
	require.NotContains(t, logs.String(), "two words")
}

// A request that samples (temperature above 0) without a seed is given a
// random one: two such requests get two samples, each run by its host as
// its prompt hash committed, seed and all.
func TestSamplingWithoutSeedGetsOne(t *testing.T) {
	t.Parallel()
	b := setup(t)
	srv := b.api(t, APIConfig{})
	texts := map[string]bool{}
	for range 2 {
		resp := postChat(t, srv.URL, chatBody(t, ask(1), map[string]any{"temperature": 0.8}))
		var out chatResponse
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
		require.Equal(t, http.StatusOK, resp.StatusCode)
		texts[out.Choices[0].Message.Content] = true
	}
	require.Len(t, texts, 2, "each request drew its own sample")

	var c chatRequest
	require.NoError(t, json.Unmarshal(chatBody(t, ask(1), map[string]any{"temperature": 0}), &c))
	req, err := c.toExecutor()
	require.NoError(t, err)
	require.Nil(t, req.Seed, "a greedy request needs no seed")
}
