package gateway

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
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
	// Each route answers its method; any other method on its path gets
	// OpenAI's error object, as does a path that is no route.
	route := func(method, path string, h http.Handler) {
		mux.Handle(method+" "+path, h)
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", method)
			apiError(w, http.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed",
				fmt.Sprintf("%s %s is not served; use %s.", r.Method, r.URL.Path, method))
		})
	}
	route("GET", "/healthz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}))
	route("GET", "/metrics", promhttp.HandlerFor(g.metrics.Registry, promhttp.HandlerOpts{}))
	opsRoutes(mux, g)
	route("GET", "/v1/models", a.auth(a.models))
	// A model id may hold slashes (Qwen/Qwen3-8B).
	route("GET", "/v1/models/{id...}", a.auth(a.model))
	route("POST", "/v1/chat/completions", a.auth(a.completions))
	route("GET", "/v1/usage", a.auth(a.usage))
	route("GET", "/v1/escrows", a.auth(func(w http.ResponseWriter, r *http.Request, _ string) {
		writeJSON(w, http.StatusOK, map[string]any{"escrows": g.Escrows()})
	}))
	mux.HandleFunc("/v1/completions", func(w http.ResponseWriter, r *http.Request) {
		apiError(w, http.StatusNotFound, "invalid_request_error", "unsupported_endpoint",
			"This gateway serves chat models only and does not serve the legacy /v1/completions; send the prompt as a user message to /v1/chat/completions.")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		apiError(w, http.StatusNotFound, "invalid_request_error", "unknown_url", fmt.Sprintf("Invalid URL (%s %s).", r.Method, r.URL.Path))
	})
	return withRequestID(mux)
}

// withRequestID answers every request with an x-request-id: the app's own
// if it sent a well-formed one, a fresh one otherwise. The request's
// context carries it, to the gateway's logs and the executor's
// (hostapi.WithRequestID).
func withRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(hostapi.RequestIDHeader)
		if !hostapi.ValidRequestID(id) {
			id = "req_" + randomID()
		}
		w.Header().Set(hostapi.RequestIDHeader, id)
		next.ServeHTTP(w, r.WithContext(hostapi.WithRequestID(r.Context(), id)))
	})
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

// model is OpenAI's model object.
type model struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

func modelObject(id string) model {
	return model{ID: id, Object: "model", Created: 0, OwnedBy: "devshard"}
}

func (a *api) models(w http.ResponseWriter, r *http.Request, _ string) {
	out := struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}{Object: "list", Data: []model{}}
	for _, m := range a.g.Models() {
		out.Data = append(out.Data, modelObject(m))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *api) model(w http.ResponseWriter, r *http.Request, _ string) {
	id := r.PathValue("id")
	for _, m := range a.g.Models() {
		if m == id {
			writeJSON(w, http.StatusOK, modelObject(m))
			return
		}
	}
	apiErrorParam(w, http.StatusNotFound, "invalid_request_error", "model_not_found", "model",
		fmt.Sprintf("The model %q does not exist; GET /v1/models lists those served.", id))
}

func (a *api) usage(w http.ResponseWriter, r *http.Request, keyID string) {
	u, err := a.g.state.UsageOf(r.Context(), keyID)
	if err != nil {
		apiError(w, http.StatusInternalServerError, "server_error", "", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"key": keyID, "usage": u})
}

// chatRequest is the part of OpenAI's request body the gateway reads.
// The generation parameters here are passed to the executor or refused
// (params); docs/gateway.md lists which.
type chatRequest struct {
	Model               string        `json:"model"`
	Messages            []chatMessage `json:"messages"`
	MaxTokens           *int          `json:"max_tokens"`
	MaxCompletionTokens *int          `json:"max_completion_tokens"`
	Stream              bool          `json:"stream"`
	StreamOptions       *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`

	Temperature      *float64        `json:"temperature"`
	TopP             *float64        `json:"top_p"`
	PresencePenalty  *float64        `json:"presence_penalty"`
	FrequencyPenalty *float64        `json:"frequency_penalty"`
	Seed             *int64          `json:"seed"`
	Stop             json.RawMessage `json:"stop"`
	ResponseFormat   json.RawMessage `json:"response_format"`
	LogitBias        json.RawMessage `json:"logit_bias"`
	N                *int            `json:"n"`
	Tools            json.RawMessage `json:"tools"`
	ToolChoice       json.RawMessage `json:"tool_choice"`
	Logprobs         *bool           `json:"logprobs"`
	TopLogprobs      *int            `json:"top_logprobs"`
	Store            *bool           `json:"store"`
}

// chatFields are the fields of a chat completion the gateway reads
// (chatRequest's), and those it takes without passing them on because
// they change nothing in the answer: user, an end user's id that OpenAI
// watches for abuse; metadata, which only a stored completion keeps; and
// parallel_tool_calls, which only tools, refused, could make matter.
var chatFields = func() map[string]bool {
	fields := map[string]bool{"user": true, "metadata": true, "parallel_tool_calls": true}
	t := reflect.TypeFor[chatRequest]()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		fields[name] = true
	}
	return fields
}()

// unrecognized refuses a body with a field the gateway does not read, as
// OpenAI does: a parameter taken and not honoured would be ignored
// silently.
func unrecognized(raw json.RawMessage) error {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return fmt.Errorf("%w: the body must be a JSON object", ErrRequest)
	}
	var unknown []string
	for name := range fields {
		if !chatFields[name] {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	slices.Sort(unknown)
	return fmt.Errorf("%w: %w", ErrRequest, &executor.ParamError{Param: unknown[0], Reason: "unrecognized request argument; this gateway honours the parameters docs/gateway.md lists and refuses the rest"})
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
	if err := c.params(&req); err != nil {
		return req, fmt.Errorf("%w: %w", ErrRequest, err)
	}
	return req, nil
}

// params carries the generation parameters into req, or refuses one with
// an *executor.ParamError. Whatever the model, the network answers with
// one choice of text, with no tool calls and no log probabilities, so n
// above 1, tools and logprobs are refused; the rest are the executor's to
// honour or refuse (executor.Request.CheckParams).
func (c *chatRequest) params(req *executor.Request) error {
	set := func(raw json.RawMessage) bool { return len(raw) > 0 && string(raw) != "null" }
	none := func(raw json.RawMessage) bool {
		var list []json.RawMessage
		return json.Unmarshal(raw, &list) == nil && len(list) == 0
	}
	switch {
	case c.N != nil && *c.N != 1:
		return &executor.ParamError{Param: "n", Reason: fmt.Sprintf("must be 1, got %d: a request is answered with one choice", *c.N)}
	case set(c.Tools) && !none(c.Tools):
		return &executor.ParamError{Param: "tools", Reason: "tool calls are not supported: the network answers in text only"}
	case set(c.ToolChoice) && string(c.ToolChoice) != `"none"`:
		return &executor.ParamError{Param: "tool_choice", Reason: `tool calls are not supported; only "none" is accepted`}
	case c.Logprobs != nil && *c.Logprobs:
		return &executor.ParamError{Param: "logprobs", Reason: "log probabilities are not supported: the network answers with text only"}
	case c.TopLogprobs != nil && *c.TopLogprobs != 0:
		return &executor.ParamError{Param: "top_logprobs", Reason: "log probabilities are not supported: the network answers with text only"}
	case c.Store != nil && *c.Store:
		return &executor.ParamError{Param: "store", Reason: "completions are not stored; only false is accepted"}
	}
	if set(c.Stop) {
		var one string
		if err := json.Unmarshal(c.Stop, &one); err == nil {
			req.Stop = []string{one}
		} else if err := json.Unmarshal(c.Stop, &req.Stop); err != nil {
			return &executor.ParamError{Param: "stop", Reason: "must be a string or an array of strings"}
		}
	}
	if set(c.ResponseFormat) {
		req.ResponseFormat = c.ResponseFormat
	}
	if set(c.LogitBias) {
		req.LogitBias = c.LogitBias
	}
	req.Temperature, req.TopP, req.Seed = c.Temperature, c.TopP, c.Seed
	req.PresencePenalty, req.FrequencyPenalty = c.PresencePenalty, c.FrequencyPenalty
	if req.Seed == nil && req.Temperature != nil && *req.Temperature > 0 {
		// A request that samples without a seed gets a random one: the
		// app still gets a fresh sample, and the prompt hash commits to
		// the seed, so a validator's re-run draws the same sample.
		seed := randomSeed()
		req.Seed = &seed
	}
	return req.CheckParams()
}

// randomSeed is a seed for a request that samples without one.
func randomSeed() int64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return int64(binary.BigEndian.Uint64(b[:]) >> 1)
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
	defer func() { a.g.metrics.request(rec.status()) }()
	w = rec

	var raw json.RawMessage
	r.Body = http.MaxBytesReader(w, r.Body, MaxBody)
	if err := json.NewDecoder(r.Body).Decode(&raw); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			apiError(w, http.StatusRequestEntityTooLarge, "invalid_request_error", "", fmt.Sprintf("The request body exceeds %d bytes.", mbe.Limit))
			return
		}
		apiError(w, http.StatusBadRequest, "invalid_request_error", "", "We could not parse the JSON body of your request: "+err.Error())
		return
	}
	var body chatRequest
	if err := json.Unmarshal(raw, &body); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			apiErrorParam(w, http.StatusBadRequest, "invalid_request_error", "", te.Field,
				fmt.Sprintf("Invalid type for %s: expected %s, got a JSON %s.", te.Field, te.Type, te.Value))
			return
		}
		apiError(w, http.StatusBadRequest, "invalid_request_error", "", "We could not parse the JSON body of your request: "+err.Error())
		return
	}
	if err := unrecognized(raw); err != nil {
		fail(w, err)
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
	_, typ, code := classify(err)
	_ = s.event(map[string]any{"error": map[string]any{"message": err.Error(), "type": typ, "code": orNull(code), "param": orNull(paramOf(err))}})
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
		// OpenAI's answer to an account out of credit.
		return http.StatusTooManyRequests, "insufficient_quota", "insufficient_quota"
	case errors.Is(err, ErrNoEpoch), errors.Is(err, ErrNoHost), errors.Is(err, ErrNoRuntime), errors.Is(err, ErrClosed), errors.Is(err, ErrNotIncluded), errors.As(err, new(*chainclient.StalledError)):
		return http.StatusServiceUnavailable, "server_error", "service_unavailable"
	case errors.Is(err, context.Canceled):
		return 499, "server_error", "client_closed"
	}
	return http.StatusBadGateway, "server_error", "upstream_error"
}

func fail(w http.ResponseWriter, err error) {
	status, typ, code := classify(err)
	apiErrorParam(w, status, typ, code, paramOf(err), sentence(err))
}

// paramOf is the name of the request parameter err refuses, or "".
func paramOf(err error) string {
	var pe *executor.ParamError
	if errors.As(err, &pe) {
		return pe.Param
	}
	return ""
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
	apiErrorParam(w, status, typ, code, "", msg)
}

// Retry-After of a 429, in seconds: a key over its in-flight limit may
// retry as soon as a request of its finishes; an account out of funds
// waits for its operator.
const (
	retryRateLimit = "1"
	retryNoFunds   = "60"
)

// apiErrorParam answers with OpenAI's error object; param names the
// request parameter at fault, if one is ("" writes null).
func apiErrorParam(w http.ResponseWriter, status int, typ, code, param, msg string) {
	if status == http.StatusTooManyRequests {
		retry := retryRateLimit
		if code == "insufficient_quota" {
			retry = retryNoFunds
		}
		w.Header().Set("Retry-After", retry)
	}
	writeJSON(w, status, map[string]any{"error": map[string]any{"message": msg, "type": typ, "param": orNull(param), "code": orNull(code)}})
}

// orNull is s, or JSON's null for "".
func orNull(s string) any {
	if s == "" {
		return nil
	}
	return s
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
