package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/devshard/devshard/executor"
)

// MaxBody bounds a request body.
const MaxBody = 1 << 20

// APIConfig shapes the HTTP API.
type APIConfig struct {
	// Keys are admitted when the gateway's Config has no Keyring.
	Keys []APIKey
	// MaxInFlight is how many requests one key may have open at once; more
	// get 429 (default 256).
	MaxInFlight int
}

// api serves the OpenAI-compatible routes.
type api struct {
	g        *Gateway
	keys     *Keyring
	limit    int
	mu       sync.Mutex
	inFlight map[string]int
}

// Handler serves the gateway's HTTP API (docs/gateway.md).
func Handler(g *Gateway, cfg APIConfig) http.Handler {
	keys := g.cfg.Keyring
	if keys == nil {
		keys = NewKeyring(cfg.Keys)
	}
	a := &api{g: g, keys: keys, limit: cfg.MaxInFlight, inFlight: map[string]int{}}
	if a.limit == 0 {
		a.limit = 256
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(g.metrics.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /v1/models", a.auth(a.models))
	mux.HandleFunc("POST /v1/chat/completions", a.auth(a.completions))
	mux.HandleFunc("GET /v1/usage", a.auth(a.usage))
	mux.HandleFunc("GET /v1/escrows", a.auth(func(w http.ResponseWriter, r *http.Request, _ string) {
		writeJSON(w, http.StatusOK, map[string]any{"escrows": g.Escrows()})
	}))
	return mux
}

// keyedHandler serves a request admitted under the key with id.
type keyedHandler func(w http.ResponseWriter, r *http.Request, id string)

// auth admits requests with a known bearer key.
func (a *api) auth(next keyedHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Get("Authorization")
		token, ok := strings.CutPrefix(h, "Bearer ")
		if h == "" {
			apiError(w, http.StatusUnauthorized, "invalid_request_error", "missing_api_key",
				"You didn't provide an API key. Send it in the Authorization header: 'Authorization: Bearer YOUR_KEY'.")
			return
		}
		id, known := a.keys.Lookup(strings.TrimSpace(token))
		if !ok || !known {
			apiError(w, http.StatusUnauthorized, "invalid_request_error", "invalid_api_key", "Incorrect API key provided.")
			return
		}
		next(w, r, id)
	}
}

func (a *api) models(w http.ResponseWriter, r *http.Request, _ string) {
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	out := struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}{Object: "list", Data: []model{}}
	for _, m := range a.g.Models() {
		out.Data = append(out.Data, model{ID: m, Object: "model", Created: 0, OwnedBy: "devshard"})
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *api) usage(w http.ResponseWriter, r *http.Request, keyID string) {
	u, err := a.g.state.UsageOf(r.Context(), keyID)
	if err != nil {
		apiError(w, http.StatusInternalServerError, "server_error", "", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"key": keyID, "usage": u})
}

// chatRequest is the part of OpenAI's request body the gateway reads;
// other fields (temperature, top_p, …) are accepted and ignored.
type chatRequest struct {
	Model               string        `json:"model"`
	Messages            []chatMessage `json:"messages"`
	MaxTokens           *int          `json:"max_tokens"`
	MaxCompletionTokens *int          `json:"max_completion_tokens"`
	Stream              bool          `json:"stream"`
	StreamOptions       *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

type chatMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// text reads a message's content: a string, or an array of text parts.
func (m chatMessage) text() (string, error) {
	var s string
	if err := json.Unmarshal(m.Content, &s); err == nil {
		return s, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(m.Content, &parts); err != nil {
		return "", fmt.Errorf("message content must be a string or an array of text parts")
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type != "text" {
			return "", fmt.Errorf("message content part of type %q is not supported; only text", p.Type)
		}
		b.WriteString(p.Text)
	}
	return b.String(), nil
}

func (c *chatRequest) toExecutor() (executor.Request, error) {
	req := executor.Request{Model: c.Model}
	if c.Model == "" {
		return req, fmt.Errorf("%w: you must provide a model parameter", ErrRequest)
	}
	for i, m := range c.Messages {
		text, err := m.text()
		if err != nil {
			return req, fmt.Errorf("%w: messages[%d]: %v", ErrRequest, i, err)
		}
		switch m.Role {
		case "system", "developer", "user", "assistant":
		default:
			return req, fmt.Errorf("%w: messages[%d].role %q is not one of system, developer, user, assistant", ErrRequest, i, m.Role)
		}
		req.Messages = append(req.Messages, executor.Message{Role: m.Role, Content: text})
	}
	switch {
	case c.MaxCompletionTokens != nil:
		req.MaxTokens = *c.MaxCompletionTokens
	case c.MaxTokens != nil:
		req.MaxTokens = *c.MaxTokens
	}
	if (c.MaxTokens != nil || c.MaxCompletionTokens != nil) && req.MaxTokens <= 0 {
		return req, fmt.Errorf("%w: max_tokens must be a positive integer, got %d", ErrRequest, req.MaxTokens)
	}
	return req, nil
}

// acquire counts a request against the in-flight limit of the key with
// keyID.
func (a *api) acquire(keyID string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inFlight[keyID] >= a.limit {
		return false
	}
	a.inFlight[keyID]++
	return true
}

func (a *api) release(keyID string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.inFlight[keyID]--
}

func (a *api) completions(w http.ResponseWriter, r *http.Request, keyID string) {
	began := time.Now()
	rec := &statusRecorder{ResponseWriter: w}
	defer func() { a.g.metrics.requests.WithLabelValues(strconv.Itoa(rec.status())).Inc() }()
	w = rec

	var body chatRequest
	r.Body = http.MaxBytesReader(w, r.Body, MaxBody)
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			apiError(w, http.StatusRequestEntityTooLarge, "invalid_request_error", "", fmt.Sprintf("The request body exceeds %d bytes.", mbe.Limit))
			return
		}
		apiError(w, http.StatusBadRequest, "invalid_request_error", "", "We could not parse the JSON body of your request: "+err.Error())
		return
	}
	req, err := body.toExecutor()
	if err == nil {
		err = a.g.Normalize(&req)
	}
	if err != nil {
		fail(w, err)
		return
	}
	if !a.acquire(keyID) {
		apiError(w, http.StatusTooManyRequests, "rate_limit_error", "rate_limit_exceeded",
			fmt.Sprintf("Key %s already has %d requests in flight; wait for some to finish.", keyID, a.limit))
		return
	}
	defer a.release(keyID)

	id := "chatcmpl-" + randomID()
	created := time.Now().Unix()
	var c *Completion
	if body.Stream {
		s := &sseWriter{w: w, id: id, created: created, model: req.Model}
		c, err = a.g.Complete(r.Context(), req, s.text)
		if err != nil {
			if !s.started {
				fail(w, err)
				return
			}
			s.fail(err)
			return
		}
		s.finish(c, body.StreamOptions != nil && body.StreamOptions.IncludeUsage)
	} else {
		c, err = a.g.Complete(r.Context(), req, func(string) error { return nil })
		if err != nil {
			fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{
			"id": id, "object": "chat.completion", "created": created, "model": c.Model,
			"choices": []any{map[string]any{
				"index": 0, "message": map[string]string{"role": "assistant", "content": c.Text},
				"finish_reason": c.FinishReason, "logprobs": nil,
			}},
			"usage": usageJSON(c.Usage),
		})
	}
	a.g.metrics.latency.Observe(time.Since(began).Seconds())
	// The app has its whole answer before the usage row's durable write.
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	if err := a.g.state.AddUsage(context.WithoutCancel(r.Context()), keyID, Usage{Requests: 1,
		PromptTokens: uint64(c.Usage.PromptTokens), CompletionTokens: uint64(c.Usage.CompletionTokens), Cost: c.Cost}); err != nil {
		a.g.log.Warn("usage not recorded", "key_id", keyID, "err", err)
	}
}

func usageJSON(u executor.Usage) map[string]int {
	return map[string]int{"prompt_tokens": u.PromptTokens, "completion_tokens": u.CompletionTokens, "total_tokens": u.PromptTokens + u.CompletionTokens}
}

// sseWriter streams chat.completion.chunk events the way OpenAI does.
type sseWriter struct {
	w       http.ResponseWriter
	id      string
	created int64
	model   string
	started bool
}

func (s *sseWriter) event(v any) error {
	if !s.started {
		s.w.Header().Set("Content-Type", "text/event-stream")
		s.w.Header().Set("Cache-Control", "no-cache")
		s.w.WriteHeader(http.StatusOK)
		s.started = true
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(s.w, "data: %s\n\n", b); err != nil {
		return err
	}
	if f, ok := s.w.(http.Flusher); ok {
		f.Flush()
	}
	return nil
}

func (s *sseWriter) chunk(delta map[string]string, finish any, usage any) map[string]any {
	choices := []any{}
	if delta != nil {
		choices = append(choices, map[string]any{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": nil})
	}
	c := map[string]any{"id": s.id, "object": "chat.completion.chunk", "created": s.created, "model": s.model, "choices": choices}
	if usage != nil {
		c["usage"] = usage
	}
	return c
}

func (s *sseWriter) text(piece string) error {
	if !s.started {
		if err := s.event(s.chunk(map[string]string{"role": "assistant", "content": ""}, nil, nil)); err != nil {
			return err
		}
	}
	return s.event(s.chunk(map[string]string{"content": piece}, nil, nil))
}

func (s *sseWriter) finish(c *Completion, includeUsage bool) {
	if !s.started {
		_ = s.event(s.chunk(map[string]string{"role": "assistant", "content": ""}, nil, nil))
	}
	_ = s.event(s.chunk(map[string]string{}, c.FinishReason, nil))
	if includeUsage {
		_ = s.event(s.chunk(nil, nil, usageJSON(c.Usage)))
	}
	_, _ = fmt.Fprint(s.w, "data: [DONE]\n\n")
	if f, ok := s.w.(http.Flusher); ok {
		f.Flush()
	}
}

// fail ends a stream that already began with an error event, as OpenAI
// does.
func (s *sseWriter) fail(err error) {
	status, typ, code := classify(err)
	_ = status
	_ = s.event(map[string]any{"error": map[string]any{"message": err.Error(), "type": typ, "code": code, "param": nil}})
	_, _ = fmt.Fprint(s.w, "data: [DONE]\n\n")
}

// classify maps an error to an HTTP status and OpenAI's error type and code.
func classify(err error) (int, string, string) {
	switch {
	case errors.Is(err, ErrRequest):
		return http.StatusBadRequest, "invalid_request_error", ""
	case errors.Is(err, ErrModel):
		return http.StatusNotFound, "invalid_request_error", "model_not_found"
	case errors.Is(err, ErrFunds):
		return http.StatusPaymentRequired, "insufficient_quota", "insufficient_quota"
	case errors.Is(err, ErrNoEpoch), errors.Is(err, ErrNoHost), errors.Is(err, ErrClosed):
		return http.StatusServiceUnavailable, "server_error", "service_unavailable"
	case errors.Is(err, context.Canceled):
		return 499, "server_error", "client_closed"
	}
	return http.StatusBadGateway, "server_error", "upstream_error"
}

func fail(w http.ResponseWriter, err error) {
	status, typ, code := classify(err)
	apiError(w, status, typ, code, sentence(err))
}

// sentence capitalizes an error into a message for an app developer.
func sentence(err error) string {
	s := err.Error()
	if s == "" {
		return s
	}
	s = strings.ToUpper(s[:1]) + s[1:]
	if !strings.HasSuffix(s, ".") {
		s += "."
	}
	return s
}

func apiError(w http.ResponseWriter, status int, typ, code, msg string) {
	var c any
	if code != "" {
		c = code
	}
	writeJSON(w, status, map[string]any{"error": map[string]any{"message": msg, "type": typ, "param": nil, "code": c}})
}

// writeJSON writes v as the whole response, with its length, so that a
// flush puts a complete response on the wire.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "response does not encode: "+err.Error(), http.StatusInternalServerError)
		return
	}
	body = append(body, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func randomID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// statusRecorder remembers the status a handler wrote, for metrics.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
