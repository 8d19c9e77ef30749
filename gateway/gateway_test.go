package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/host"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/store/sqlite"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// testSecret is the one API key the tests' HTTP API accepts, as id testKey.ID.
const testSecret = "sk-devshard-test-0123456789abcdef"

var testKey = APIKey{ID: "app", Hash: sha256.Sum256([]byte(testSecret))}

// settleWait bounds a settlement in a test; an honest one takes well under
// a second, so reaching it means the gateway is stuck.
const settleWait = 20 * time.Second

type testHost struct {
	engine *host.Engine
	srv    *httptest.Server
}

// bundle is one test's network: a fake chain, three real hosts on real
// SQLite and HTTP, and a gateway on a real state file.
type bundle struct {
	fixture   *sessiontest.Fixture
	chain     *fakeChain
	hosts     []*testHost
	cfg       Config // what every gateway of this bundle is built from, less State
	statePath string
	state     *State
	gw        *Gateway
}

type setupOptions struct {
	executor func(i int) executor.Executor // host i's executor; default executor.Builtin{}
	config   func(*Config)
	wrap     func(i int, h http.Handler) http.Handler // host i's HTTP handler; default as is
	session  func(*sessiontest.Options)               // the escrow's parameters; default sessiontest.DefaultOptions
}

// testChainID is the chain the test gateway and hosts sign requests for.
const testChainID = "devshard-test"

// setup builds a bundle and starts its gateway. The gateway's flush and
// epoch loops are slowed to an hour so that no diff is sequenced behind a
// test's back; each test drives every diff itself.
func setup(t *testing.T, opts ...func(*setupOptions)) *bundle {
	t.Helper()
	o := setupOptions{executor: func(int) executor.Executor { return executor.Builtin{} }}
	for _, f := range opts {
		f(&o)
	}
	quiet := slog.New(slog.DiscardHandler)
	so := sessiontest.DefaultOptions()
	if o.session != nil {
		o.session(&so)
	}
	f := sessiontest.New(1, so)
	b := &bundle{fixture: f, chain: newFakeChain(f), statePath: filepath.Join(t.TempDir(), "state.db")}
	for i, key := range f.Hosts {
		st, err := sqlite.Open(context.Background(), t.TempDir(), sqlite.Options{})
		require.NoError(t, err)
		t.Cleanup(func() { st.Close() })
		e := host.New(host.Config{Key: key, Store: st, Escrows: hostEscrows{b.chain}, Executor: o.executor(i), Logger: quiet, ChainID: testChainID})
		e.MarkReady()
		var h http.Handler = host.Handler(e, "test")
		if o.wrap != nil {
			h = o.wrap(i, h)
		}
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		t.Cleanup(e.Wait)
		b.chain.register(key.Address(), srv.URL)
		b.hosts = append(b.hosts, &testHost{engine: e, srv: srv})
	}
	b.cfg = Config{Key: f.Gateway, ChainID: testChainID, Chain: b.chain, Logger: quiet, FlushEvery: time.Hour, EpochPoll: time.Hour}
	if o.config != nil {
		o.config(&b.cfg)
	}
	b.gw, b.state = b.startGateway(t)
	return b
}

// startGateway opens the bundle's state file and starts a gateway on it.
// Cleanup stops its loops before closing the file.
func (b *bundle) startGateway(t *testing.T) (*Gateway, *State) {
	t.Helper()
	st, err := OpenState(b.statePath, "NORMAL")
	require.NoError(t, err)
	cfg := b.cfg
	cfg.State = st
	g := New(cfg)
	t.Cleanup(func() {
		g.halt()
		st.Close()
	})
	require.NoError(t, g.Start(t.Context()))
	return g, st
}

// complete runs req through Complete and checks that what was streamed is
// the completion's text.
func (b *bundle) complete(t *testing.T, req executor.Request) *Completion {
	t.Helper()
	require.NoError(t, b.gw.Normalize(&req))
	var streamed strings.Builder
	c, err := b.gw.Complete(t.Context(), req, func(s string) error { streamed.WriteString(s); return nil })
	require.NoError(t, err)
	require.Equal(t, c.Text, streamed.String(), "text emitted while streaming differs from the completion's text")
	return c
}

// api serves the gateway's HTTP API on a real listener.
func (b *bundle) api(t *testing.T, cfg APIConfig) *httptest.Server {
	t.Helper()
	if cfg.Keys == nil {
		cfg.Keys = []APIKey{testKey}
	}
	srv := httptest.NewServer(Handler(b.gw, cfg))
	t.Cleanup(srv.Close)
	return srv
}

// price is the token price snapshotted into escrow id.
func (b *bundle) price(t *testing.T, id uint64) uint64 {
	t.Helper()
	snap := b.chain.snapshot(id)
	require.NotNil(t, snap, "the chain has no escrow %d", id)
	return snap.TokenPrice
}

// ask is the i-th test request.
func ask(i int) executor.Request {
	return executor.Request{Model: executor.BuiltinModel, MaxTokens: 48, Messages: []executor.Message{
		{Role: "system", Content: "answer briefly"},
		{Role: "user", Content: fmt.Sprintf("question %d: what does the gateway settle on chain?", i)},
	}}
}

// builtinAnswer is what the built-in model answers to req, run here, with
// no host in between.
func builtinAnswer(t *testing.T, req executor.Request) executor.Result {
	t.Helper()
	res, err := executor.Builtin{}.Execute(context.Background(), req, func(string) error { return nil })
	require.NoError(t, err)
	return res
}

// requireAnswer checks that c is exactly the built-in model's answer to req.
func requireAnswer(t *testing.T, req executor.Request, c *Completion) {
	t.Helper()
	want := builtinAnswer(t, req)
	require.Equal(t, want.Text, c.Text)
	require.Equal(t, want.Usage, c.Usage)
	require.Equal(t, want.FinishReason, c.FinishReason)
	require.Equal(t, req.Model, c.Model)
}

// chatBody is an OpenAI chat request body for req.
func chatBody(t *testing.T, req executor.Request, extra map[string]any) []byte {
	t.Helper()
	body := map[string]any{"model": req.Model, "messages": req.Messages, "max_tokens": req.MaxTokens}
	for k, v := range extra {
		body[k] = v
	}
	raw, err := json.Marshal(body)
	require.NoError(t, err)
	return raw
}

// postChat sends a chat completion to a live API server.
func postChat(t *testing.T, url string, body []byte) *http.Response {
	t.Helper()
	r, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url+"/v1/chat/completions", bytes.NewReader(body))
	require.NoError(t, err)
	r.Header.Set("Authorization", "Bearer "+testSecret)
	r.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(r)
	require.NoError(t, err)
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// serve runs one chat completion through h in memory.
func serve(h http.Handler, auth string, body []byte) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", bytes.NewReader(body))
	if auth != "" {
		r.Header.Set("Authorization", auth)
	}
	r.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

type usageBody struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type chatResponse struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index   int `json:"index"`
		Message struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage *usageBody `json:"usage"`
}

type chatChunk struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Model   string `json:"model"`
	Choices []struct {
		Index        int               `json:"index"`
		Delta        map[string]string `json:"delta"`
		FinishReason *string           `json:"finish_reason"`
	} `json:"choices"`
	Usage *usageBody `json:"usage"`
}

type apiErrorBody struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Code    *string `json:"code"`
	} `json:"error"`
}

// sseData reads a server-sent event stream and returns each event's data.
func sseData(t *testing.T, r io.Reader) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			out = append(out, data)
		}
	}
	require.NoError(t, sc.Err())
	return out
}

// streamed is what an OpenAI client assembles from a chat stream.
type streamed struct {
	text   string
	finish string
	usage  *usageBody
}

// readStream checks a chat stream's shape, the way OpenAI sends it, and
// assembles it: a role chunk first, content deltas, one chunk with the
// finish reason, optionally a usage chunk with no choices, then [DONE].
func readStream(t *testing.T, resp *http.Response) streamed {
	t.Helper()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	data := sseData(t, resp.Body)
	require.GreaterOrEqual(t, len(data), 3, "a stream has at least a role chunk, a finish chunk and [DONE]")
	require.Equal(t, "[DONE]", data[len(data)-1], "the stream must end with data: [DONE]")
	var s streamed
	var id string
	for i, raw := range data[:len(data)-1] {
		var c chatChunk
		require.NoError(t, json.Unmarshal([]byte(raw), &c), "chunk %d: %s", i, raw)
		require.Equal(t, "chat.completion.chunk", c.Object)
		require.NotEmpty(t, c.ID)
		if id == "" {
			id = c.ID
		}
		require.Equal(t, id, c.ID, "every chunk of one completion carries its id")
		require.Equal(t, executor.BuiltinModel, c.Model)
		if c.Usage != nil {
			require.Empty(t, c.Choices, "the usage chunk has no choices")
			require.Nil(t, s.usage, "one usage chunk")
			s.usage = c.Usage
			continue
		}
		require.Len(t, c.Choices, 1, "chunk %d: %s", i, raw)
		ch := c.Choices[0]
		if i == 0 {
			require.Equal(t, "assistant", ch.Delta["role"], "the first chunk gives the role")
		}
		if ch.FinishReason != nil {
			require.Empty(t, s.finish, "one finish chunk")
			s.finish = *ch.FinishReason
			continue
		}
		require.Empty(t, s.finish, "no content after the finish chunk")
		s.text += ch.Delta["content"]
	}
	return s
}

// TestHonestFlow runs completions through Complete and the HTTP API (plain
// and streamed), each answer the built-in model's own, then settles: the
// chain gets exactly one settlement, VerifySettlement accepts it, and the
// hosts are paid exactly (prompt + completion tokens) × price per answer.
func TestHonestFlow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var wantCost uint64
	var escrow, lastNonce uint64
	for i := range 10 {
		req := ask(i)
		c := b.complete(t, req)
		requireAnswer(t, req, c)
		require.Equal(t, 1, c.Attempts)
		if escrow == 0 {
			escrow = c.EscrowID
		}
		require.Equal(t, escrow, c.EscrowID, "one lane: every request goes to the same escrow")
		require.Greater(t, c.Nonce, lastNonce, "nonces only grow")
		lastNonce = c.Nonce
		cost := uint64(c.Usage.PromptTokens+c.Usage.CompletionTokens) * b.price(t, c.EscrowID)
		require.Equal(t, cost, c.Cost)
		wantCost += cost
	}
	require.Equal(t, 1, b.chain.createdCount())

	srv := b.api(t, APIConfig{})
	price := b.price(t, escrow)
	var apiUsage Usage

	t.Run("plain", func(t *testing.T) {
		req := ask(100)
		want := builtinAnswer(t, req)
		resp := postChat(t, srv.URL, chatBody(t, req, nil))
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
		// Sized, not chunked: the answer is complete on the wire when the
		// gateway flushes it, before it records the key's usage.
		require.Positive(t, resp.ContentLength)
		require.Empty(t, resp.TransferEncoding)
		var out chatResponse
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
		require.Equal(t, "chat.completion", out.Object)
		require.True(t, strings.HasPrefix(out.ID, "chatcmpl-"), out.ID)
		require.NotZero(t, out.Created)
		require.Equal(t, executor.BuiltinModel, out.Model)
		require.Len(t, out.Choices, 1)
		require.Equal(t, 0, out.Choices[0].Index)
		require.Equal(t, "assistant", out.Choices[0].Message.Role)
		require.Equal(t, want.Text, out.Choices[0].Message.Content)
		require.Equal(t, want.FinishReason, out.Choices[0].FinishReason)
		require.Equal(t, &usageBody{PromptTokens: want.Usage.PromptTokens, CompletionTokens: want.Usage.CompletionTokens,
			TotalTokens: want.Usage.PromptTokens + want.Usage.CompletionTokens}, out.Usage)
		wantCost += uint64(out.Usage.TotalTokens) * price
		apiUsage.add(want.Usage, price)
	})

	t.Run("streamed with usage", func(t *testing.T) {
		req := ask(101)
		want := builtinAnswer(t, req)
		s := readStream(t, postChat(t, srv.URL, chatBody(t, req, map[string]any{"stream": true, "stream_options": map[string]bool{"include_usage": true}})))
		require.Equal(t, want.Text, s.text)
		require.Equal(t, want.FinishReason, s.finish)
		require.Equal(t, &usageBody{PromptTokens: want.Usage.PromptTokens, CompletionTokens: want.Usage.CompletionTokens,
			TotalTokens: want.Usage.PromptTokens + want.Usage.CompletionTokens}, s.usage)
		wantCost += uint64(s.usage.TotalTokens) * price
		apiUsage.add(want.Usage, price)
	})

	t.Run("streamed without usage", func(t *testing.T) {
		// A short max_tokens: the answer is cut, finish_reason "length".
		req := ask(102)
		req.MaxTokens = 3
		want := builtinAnswer(t, req)
		require.Equal(t, "length", want.FinishReason)
		s := readStream(t, postChat(t, srv.URL, chatBody(t, req, map[string]any{"stream": true})))
		require.Equal(t, want.Text, s.text)
		require.Equal(t, "length", s.finish)
		require.Nil(t, s.usage, "no usage chunk unless stream_options.include_usage")
		wantCost += uint64(want.Usage.PromptTokens+want.Usage.CompletionTokens) * price
		apiUsage.add(want.Usage, price)
	})

	got, err := b.state.UsageOf(t.Context(), testKey.ID)
	require.NoError(t, err)
	require.Equal(t, apiUsage, got, "usage recorded for the API key")
	require.Equal(t, 1, b.chain.createdCount(), "the API requests went to the same escrow")

	ctx, cancel := context.WithTimeout(t.Context(), settleWait)
	defer cancel()
	require.NoError(t, b.gw.SettleAll(ctx))

	settlements, plans, rejected := b.chain.settledState()
	require.Empty(t, rejected, "VerifySettlement rejected a settlement")
	require.Len(t, settlements, 1, "exactly one settlement")
	require.Len(t, plans, 1)
	require.Equal(t, escrow, settlements[0].EscrowId)
	var cost, finished uint64
	for _, p := range plans[0].Slots {
		cost += p.Cost
		finished += p.Finished
	}
	require.Equal(t, wantCost, cost, "the hosts' cost is Σ (prompt + completion tokens) × price over the answers")
	require.Equal(t, uint64(13), finished, "every answer is credited as finished work")

	require.Empty(t, b.gw.Escrows(), "a settled escrow is no longer held")
	settled, err := b.gw.Settled(t.Context())
	require.NoError(t, err)
	require.Equal(t, []SettledEscrow{{ID: escrow, TxHash: fmt.Sprintf("FAKETX%d", escrow)}}, settled)
}

func (u *Usage) add(x executor.Usage, price uint64) {
	u.Requests++
	u.PromptTokens += uint64(x.PromptTokens)
	u.CompletionTokens += uint64(x.CompletionTokens)
	u.Cost += uint64(x.PromptTokens+x.CompletionTokens) * price
}

// TestHandlerRejectsBadInput: every request the API refuses is refused
// before any escrow is locked.
func TestHandlerRejectsBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t)
	h := Handler(b.gw, APIConfig{Keys: []APIKey{testKey}})
	bearer := "Bearer " + testSecret
	valid := string(chatBody(t, ask(1), nil))
	huge := `{"model":"` + executor.BuiltinModel + `","messages":[{"role":"user","content":"` + strings.Repeat("a", MaxBody) + `"}]}`

	cases := []struct {
		name   string
		auth   string
		body   string
		status int
		typ    string
		code   string // "" means null
	}{
		{"no key", "", valid, http.StatusUnauthorized, "invalid_request_error", "missing_api_key"},
		{"bad key", "Bearer sk-devshard-not-a-key-here", valid, http.StatusUnauthorized, "invalid_request_error", "invalid_api_key"},
		{"not a bearer key", "Basic " + testSecret, valid, http.StatusUnauthorized, "invalid_request_error", "invalid_api_key"},
		{"malformed JSON", bearer, `{"model": "devshard-test-1", "messages": [`, http.StatusBadRequest, "invalid_request_error", ""},
		{"unknown model", bearer, `{"model":"gpt-none","messages":[{"role":"user","content":"hi"}]}`, http.StatusNotFound, "invalid_request_error", "model_not_found"},
		{"max_tokens above the limit", bearer, `{"model":"devshard-test-1","max_tokens":4097,"messages":[{"role":"user","content":"hi"}]}`, http.StatusBadRequest, "invalid_request_error", ""},
		{"max_completion_tokens above the limit", bearer, `{"model":"devshard-test-1","max_completion_tokens":100000,"messages":[{"role":"user","content":"hi"}]}`, http.StatusBadRequest, "invalid_request_error", ""},
		{"max_tokens zero", bearer, `{"model":"devshard-test-1","max_tokens":0,"messages":[{"role":"user","content":"hi"}]}`, http.StatusBadRequest, "invalid_request_error", ""},
		{"no model", bearer, `{"messages":[{"role":"user","content":"hi"}]}`, http.StatusBadRequest, "invalid_request_error", ""},
		{"no messages", bearer, `{"model":"devshard-test-1","messages":[]}`, http.StatusBadRequest, "invalid_request_error", ""},
		{"unknown role", bearer, `{"model":"devshard-test-1","messages":[{"role":"wizard","content":"hi"}]}`, http.StatusBadRequest, "invalid_request_error", ""},
		{"image content", bearer, `{"model":"devshard-test-1","messages":[{"role":"user","content":[{"type":"image_url"}]}]}`, http.StatusBadRequest, "invalid_request_error", ""},
		{"body over 1 MiB", bearer, huge, http.StatusRequestEntityTooLarge, "invalid_request_error", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := serve(h, tc.auth, []byte(tc.body))
			require.Equal(t, tc.status, w.Code, w.Body.String())
			require.Equal(t, "application/json", w.Header().Get("Content-Type"))
			var e apiErrorBody
			require.NoError(t, json.Unmarshal(w.Body.Bytes(), &e), w.Body.String())
			require.Equal(t, tc.typ, e.Error.Type)
			require.NotEmpty(t, e.Error.Message)
			if tc.code == "" {
				require.Nil(t, e.Error.Code)
			} else {
				require.NotNil(t, e.Error.Code)
				require.Equal(t, tc.code, *e.Error.Code)
			}
			require.Zero(t, b.chain.createdCount(), "a refused request locked an escrow")
		})
	}
}

// gatedExecutor is the built-in model held at a gate: each run reports
// that it began, then waits for release. A request can so be held in
// flight for exactly as long as a test needs, without timing guesses.
type gatedExecutor struct {
	executor.Builtin
	entered chan struct{} // one buffered signal: a run began
	release chan struct{} // closed: runs go on
}

func (e gatedExecutor) Execute(ctx context.Context, req executor.Request, emit func(string) error) (executor.Result, error) {
	select {
	case e.entered <- struct{}{}:
	default:
	}
	select {
	case <-e.release:
	case <-ctx.Done():
		return executor.Result{}, ctx.Err()
	}
	return e.Builtin.Execute(ctx, req, emit)
}

// TestHandlerLimitsRequestsInFlight: with MaxInFlight 1 and one request in
// flight, a second from the same key gets 429 and locks nothing; once the
// first is done the key may ask again.
func TestHandlerLimitsRequestsInFlight(t *testing.T) {
	t.Parallel()
	gate := gatedExecutor{entered: make(chan struct{}, 1), release: make(chan struct{})}
	b := setup(t, func(o *setupOptions) {
		o.executor = func(int) executor.Executor { return gate }
	})
	srv := b.api(t, APIConfig{MaxInFlight: 1})

	slow := ask(1)
	type result struct {
		status int
		body   []byte
		err    error
	}
	first := make(chan result, 1)
	slowBody := chatBody(t, slow, nil)
	go func() {
		r, err := http.NewRequest(http.MethodPost, srv.URL+"/v1/chat/completions", bytes.NewReader(slowBody))
		if err != nil {
			first <- result{err: err}
			return
		}
		r.Header.Set("Authorization", "Bearer "+testSecret)
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			first <- result{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		first <- result{resp.StatusCode, body, err}
	}()
	select {
	case <-gate.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the first request never reached its executor")
	}
	require.Equal(t, 1, b.chain.createdCount(), "the request in flight locked the escrow")

	resp := postChat(t, srv.URL, chatBody(t, ask(2), nil))
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	require.Equal(t, retryRateLimit, resp.Header.Get("Retry-After"))
	var e apiErrorBody
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&e))
	require.Equal(t, "rate_limit_error", e.Error.Type)
	require.NotNil(t, e.Error.Code)
	require.Equal(t, "rate_limit_exceeded", *e.Error.Code)
	require.Equal(t, 1, b.chain.createdCount(), "the refused request locked no escrow")

	close(gate.release)
	var r result
	select {
	case r = <-first:
	case <-time.After(5 * time.Second):
		t.Fatal("the first request did not finish once released")
	}
	require.NoError(t, r.err)
	require.Equal(t, http.StatusOK, r.status, string(r.body))
	var out chatResponse
	require.NoError(t, json.Unmarshal(r.body, &out))
	require.Len(t, out.Choices, 1)
	require.Equal(t, builtinAnswer(t, slow).Text, out.Choices[0].Message.Content)

	again := postChat(t, srv.URL, chatBody(t, ask(3), nil))
	require.Equal(t, http.StatusOK, again.StatusCode, "the key's slot is free again")
	require.Equal(t, 1, b.chain.createdCount())
}

// TestHandlerInsufficientFunds: an account that cannot lock an escrow gets
// 429 insufficient_quota, as OpenAI answers an account out of credit, and
// nothing is locked.
func TestHandlerInsufficientFunds(t *testing.T) {
	t.Parallel()
	b := setup(t)
	h := Handler(b.gw, APIConfig{Keys: []APIKey{testKey}})
	b.chain.setBalance(b.gw.cfg.EscrowAmount - 1)

	w := serve(h, "Bearer "+testSecret, chatBody(t, ask(1), nil))
	require.Equal(t, http.StatusTooManyRequests, w.Code, w.Body.String())
	require.Equal(t, retryNoFunds, w.Header().Get("Retry-After"))
	var e apiErrorBody
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &e))
	require.Equal(t, "insufficient_quota", e.Error.Type)
	require.NotNil(t, e.Error.Code)
	require.Equal(t, "insufficient_quota", *e.Error.Code)
	require.Contains(t, e.Error.Message, fmt.Sprint(b.gw.cfg.EscrowAmount), "the message says what an escrow locks")
	require.Zero(t, b.chain.createdCount())

	// Funded again, the same request goes through.
	b.chain.setBalance(b.gw.cfg.EscrowAmount)
	w = serve(h, "Bearer "+testSecret, chatBody(t, ask(1), nil))
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	require.Equal(t, 1, b.chain.createdCount())
}

// TestHandlerNoActiveEpoch: while the chain's epoch is not ACTIVE no escrow
// can be created, and the API answers 503.
func TestHandlerNoActiveEpoch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	h := Handler(b.gw, APIConfig{Keys: []APIKey{testKey}})
	b.chain.setEpoch(1, devshardtypes.EpochSettling)

	w := serve(h, "Bearer "+testSecret, chatBody(t, ask(1), nil))
	require.Equal(t, http.StatusServiceUnavailable, w.Code, w.Body.String())
	var e apiErrorBody
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &e))
	require.Equal(t, "server_error", e.Error.Type)
	require.NotNil(t, e.Error.Code)
	require.Equal(t, "service_unavailable", *e.Error.Code)
	require.Contains(t, e.Error.Message, "ACTIVE")
	require.Zero(t, b.chain.createdCount())

	_, err := b.gw.Complete(t.Context(), normalized(t, b.gw, ask(2)), func(string) error { return nil })
	require.ErrorIs(t, err, ErrNoEpoch)
	require.Zero(t, b.chain.createdCount())
}

func normalized(t *testing.T, g *Gateway, req executor.Request) executor.Request {
	t.Helper()
	require.NoError(t, g.Normalize(&req))
	return req
}

// TestRestartResumesEscrow: a gateway that stops without settling (a crash)
// is replaced by one on the same state file, which holds the same escrow at
// the same nonce and root, continues its nonces, and settles it with every
// answer from both lives paid.
func TestRestartResumesEscrow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var wantCost, lastNonce uint64
	for i := range 4 {
		req := ask(i)
		c := b.complete(t, req)
		requireAnswer(t, req, c)
		wantCost += c.Cost
		lastNonce = c.Nonce
	}
	before := b.gw.Escrows()
	require.Len(t, before, 1)
	require.Equal(t, lastNonce, before[0].Nonce)

	// No Close: stop the loops, then let go of the file, as a killed
	// process would.
	b.gw.halt()
	require.NoError(t, b.state.Close())
	b.gw, b.state = b.startGateway(t)

	after := b.gw.Escrows()
	require.Len(t, after, 1)
	require.Equal(t, before[0].ID, after[0].ID)
	require.Equal(t, before[0].Nonce, after[0].Nonce)
	require.Equal(t, before[0].Root, after[0].Root)
	require.Equal(t, StatusOpen, after[0].Status)
	require.True(t, after[0].Current, "the resumed escrow takes requests")

	for i := 4; i < 7; i++ {
		req := ask(i)
		c := b.complete(t, req)
		requireAnswer(t, req, c)
		require.Equal(t, before[0].ID, c.EscrowID, "the resumed escrow goes on")
		require.Equal(t, lastNonce+1, c.Nonce, "nonces continue where the old gateway stopped")
		wantCost += c.Cost
		lastNonce = c.Nonce
	}
	require.Equal(t, 1, b.chain.createdCount(), "no second escrow")

	b.requireOneSettlementPaying(t, wantCost, "answers from before and after the restart are all paid")
}

// waitDelivered waits until every member of escrow id took its diffs up to
// nonce.
func (b *bundle) waitDelivered(t *testing.T, id, nonce uint64) {
	t.Helper()
	b.gw.mu.Lock()
	out := b.gw.all[id].out
	b.gw.mu.Unlock()
	require.Eventually(t, func() bool {
		out.mu.Lock()
		defer out.mu.Unlock()
		for i := range out.members {
			if out.acked[i] < nonce {
				return false
			}
		}
		return true
	}, 10*time.Second, 5*time.Millisecond, "every member takes diff %d", nonce)
}

// requireOneSettlementPaying settles every escrow and checks that the chain
// took exactly one settlement and that its hosts' costs add up to want.
func (b *bundle) requireOneSettlementPaying(t *testing.T, want uint64, why string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), settleWait)
	defer cancel()
	require.NoError(t, b.gw.SettleAll(ctx))
	settlements, plans, rejected := b.chain.settledState()
	require.Empty(t, rejected)
	require.Len(t, settlements, 1)
	var cost uint64
	for _, p := range plans[0].Slots {
		cost += p.Cost
	}
	require.Equal(t, want, cost, why)
}

// TestExecutorDownRetries: the host that executes the next nonce is gone;
// the request is retried under a new nonce on another host, and the app
// gets exactly the model's answer.
func TestExecutorDownRetries(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.complete(t, ask(0))
	requireAnswer(t, ask(0), c)

	views := b.gw.Escrows()
	require.Len(t, views, 1)
	next := views[0].NextExecutor
	down := -1
	for i, h := range b.hosts {
		if h.srv.URL == next {
			down = i
		}
	}
	require.NotEqual(t, -1, down, "the next executor %s is one of the hosts", next)
	// Every member took the first diff before the host dies: a delivery
	// still in flight would fail against the dead host and mark it down,
	// and the request would skip it without trying.
	b.waitDelivered(t, views[0].ID, views[0].Nonce)
	b.hosts[down].srv.Close()

	req := ask(1)
	c = b.complete(t, req)
	requireAnswer(t, req, c)
	require.Equal(t, 2, c.Attempts, "tried on the dead executor, then on another")
	require.Equal(t, views[0].Nonce+2, c.Nonce, "the retry runs under the nonce after the dead executor's")
	require.Equal(t, views[0].ID, c.EscrowID)
	require.NotEqual(t, next, b.gw.Escrows()[0].NextExecutor)

	// Two nonces on, the dead host's slot comes round again. Whether the
	// gateway still remembers it as down (and skips its nonce with a diff
	// that starts nothing) or tries it once more, the request lands on
	// the nonce after it.
	req = ask(2)
	c = b.complete(t, req)
	requireAnswer(t, req, c)
	require.Equal(t, views[0].Nonce+3, c.Nonce)
	req = ask(3)
	c = b.complete(t, req)
	requireAnswer(t, req, c)
	require.Equal(t, views[0].Nonce+5, c.Nonce, "the dead executor's nonce is not used")
}

// A request whose reservation no fresh escrow can cover is refused with a
// clear 400, and opens at most one escrow (it used to lock escrow after
// escrow until the client went away).
func TestRequestLargerThanAnEscrowIsRefused(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOptions) { o.config = func(c *Config) { c.EscrowAmount = 20_000 } })
	req := executor.Request{Model: executor.BuiltinModel, MaxTokens: 4096, Messages: []executor.Message{{Role: "user", Content: "hi"}}}
	require.NoError(t, b.gw.Normalize(&req))
	_, err := b.gw.Complete(context.Background(), req, func(string) error { return nil })
	require.ErrorIs(t, err, ErrRequest)
	require.ErrorContains(t, err, "more than a whole escrow")
	require.LessOrEqual(t, b.chain.createdCount(), 1)
}

// Requests that arrive together at a lane with no escrow lock one escrow
// between them. The creator publishes the escrow in the lane before it gives
// up the lane's creation slot; in the other order a request waiting for the
// slot can find the lane still empty and lock a second escrow that no lane
// uses (seen in the devnet: two escrows of one epoch, one never used, its
// coins locked until it settled). The test holds the gateway's lock while the
// creation finishes and then waits for the slot itself: it may get the slot
// only once the lane holds the escrow.
func TestRequestsArrivingTogetherLockOneEscrow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	st, err := OpenState(filepath.Join(t.TempDir(), "state.db"), "NORMAL")
	require.NoError(t, err)
	defer st.Close()
	cfg := b.cfg
	cfg.State = st
	g := New(cfg)
	defer g.halt()

	entered, release := make(chan struct{}), make(chan struct{})
	b.chain.mu.Lock()
	b.chain.holdCreate = func() { close(entered); <-release }
	b.chain.mu.Unlock()
	got := make(chan *escrow, 2)
	ask := func() {
		e, err := g.escrowFor(t.Context())
		assert.NoError(t, err)
		got <- e
	}
	go ask()
	<-entered // the first request is creating the lane's escrow

	g.mu.Lock()
	close(release)
	select {
	case g.creating[0] <- struct{}{}:
		published := g.lanes[0] != nil
		<-g.creating[0]
		g.mu.Unlock()
		require.True(t, published, "the creation slot was given up before the lane held its escrow")
	case <-time.After(100 * time.Millisecond): // the creator holds the slot until it has published
		g.mu.Unlock()
	}
	go ask()
	first, second := <-got, <-got
	require.NotNil(t, first)
	require.Same(t, first, second, "both requests got the lane's escrow")
	require.Equal(t, 1, b.chain.createdCount(), "one escrow was locked")
}

// Past the deadline the hosts settle an escrow themselves. A gateway that
// comes to settle it then (resumed late, or stuck gathering signatures the
// hosts no longer give) finds it closed on chain and lets it go, with the
// hash of the tx that settled it, instead of retrying forever.
func TestEscrowSettledByTheHostsIsLetGo(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.complete(t, ask(0))
	for _, h := range b.hosts {
		h.srv.Close() // no signature can be gathered any more
	}
	ctx, cancel := context.WithTimeout(t.Context(), settleWait)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- b.gw.SettleAll(ctx) }()
	require.Eventually(t, func() bool {
		v := b.gw.Escrows()
		return len(v) == 1 && v[0].Status == StatusSettling
	}, settleWait, 10*time.Millisecond)
	time.Sleep(1500 * time.Millisecond) // into the signature rounds
	b.chain.settleElsewhere(c.EscrowID)
	require.NoError(t, <-done)

	require.Empty(t, b.gw.Escrows())
	list, err := b.gw.Settled(t.Context())
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, c.EscrowID, list[0].ID)
	require.Equal(t, fmt.Sprintf("FAKETX%d", c.EscrowID), list[0].TxHash)
	settlements, _, _ := b.chain.settledState()
	require.Empty(t, settlements, "the gateway sent no settlement of its own")
}

// Diffs reach each host in order but independently: a member that is slow
// to take diffs holds up only the requests it executes. It catches up, in
// nonce order, once it answers again, and signs the final root.
func TestSlowMemberDoesNotHoldUpOthers(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	var opened sync.Once
	open := func() { opened.Do(func() { close(gate) }) }
	var gated atomic.Int32
	gated.Store(-1)
	var mu sync.Mutex
	var seen []uint64 // nonces the gated host was posted, in arrival order
	b := setup(t, func(o *setupOptions) {
		o.wrap = func(i int, h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if int(gated.Load()) == i && r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/diffs") {
					select {
					case <-gate:
					case <-r.Context().Done():
						return
					}
					raw, _ := io.ReadAll(r.Body)
					nonces := postedNonces(t, raw)
					mu.Lock()
					seen = append(seen, nonces...)
					mu.Unlock()
					r.Body = io.NopCloser(bytes.NewReader(raw))
				}
				h.ServeHTTP(w, r)
			})
		}
	})
	t.Cleanup(open) // first of the cleanups: a failing test must not leave a handler blocked
	requireAnswer(t, ask(0), b.complete(t, ask(0)))
	next := b.gw.Escrows()[0].NextExecutor
	slow := -1
	for i, h := range b.hosts {
		if h.srv.URL != next {
			slow = i
			break
		}
	}
	gated.Store(int32(slow))

	served := 0
	for i := 1; i < 12 && b.gw.Escrows()[0].NextExecutor != b.hosts[slow].srv.URL; i++ {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		req := ask(i)
		require.NoError(t, b.gw.Normalize(&req))
		c, err := b.gw.Complete(ctx, req, func(string) error { return nil })
		cancel()
		require.NoError(t, err, "request %d waited for a member that does not execute it", i)
		requireAnswer(t, req, c)
		served++
	}
	require.Positive(t, served)

	open()
	ctx, cancel := context.WithTimeout(t.Context(), settleWait)
	defer cancel()
	require.NoError(t, b.gw.SettleAll(ctx))
	settlements, _, rejected := b.chain.settledState()
	require.Empty(t, rejected)
	require.Len(t, settlements, 1)
	slots := map[uint32]bool{}
	for _, s := range settlements[0].Signatures {
		slots[s.Slot] = true
	}
	for slot, raw := range b.fixture.Snapshot.Group {
		if string(raw) == string(b.hosts[slow].engine.Address().Bytes()) {
			require.True(t, slots[uint32(slot)], "the slow member's slot %d signed the final root", slot)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	require.True(t, slices.IsSorted(seen), "the slow member got its diffs in nonce order: %v", seen)
}

// The executor is asked for its stream beside the diff that starts the
// request, not after that diff's answer: a host holds back its answer to
// the diff until the stream request arrives, and no request waits for it.
func TestStreamIsAskedBesideTheDiff(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	asked := map[uint64]chan struct{}{} // nonce -> closed when its stream was asked for
	arrival := func(nonce uint64) chan struct{} {
		mu.Lock()
		defer mu.Unlock()
		if asked[nonce] == nil {
			asked[nonce] = make(chan struct{})
		}
		return asked[nonce]
	}
	var late atomic.Int32
	b := setup(t, func(o *setupOptions) {
		o.wrap = func(i int, h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				raw, _ := io.ReadAll(r.Body)
				r.Body = io.NopCloser(bytes.NewReader(raw))
				switch {
				case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/inference"):
					var body hostapi.InferenceRequest
					if json.Unmarshal(raw, &body) == nil {
						close(arrival(body.Nonce))
					}
				case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/diffs"):
					var body hostapi.DiffRequest
					var d sessionpb.Diff
					if json.Unmarshal(raw, &body) != nil || d.Unmarshal(body.Diff) != nil || len(body.Requests) == 0 || int(d.Nonce%3) != i {
						break // not a start this host executes
					}
					rec := httptest.NewRecorder()
					h.ServeHTTP(rec, r)
					select {
					case <-arrival(d.Nonce):
					case <-time.After(2 * time.Second):
						late.Add(1)
					}
					for k, v := range rec.Header() {
						w.Header()[k] = v
					}
					w.WriteHeader(rec.Code)
					_, _ = w.Write(rec.Body.Bytes())
					return
				}
				h.ServeHTTP(w, r)
			})
		}
	})
	for i := range 4 {
		requireAnswer(t, ask(i), b.complete(t, ask(i)))
	}
	require.Zero(t, late.Load(), "a stream was asked for only after its executor answered the diff")
}

// A whole answer stands even if the executor's answer to the diff fails
// after it: the executor streams only a diff it has checked, so the request
// is not retried elsewhere.
func TestAnswerStandsWhenItsDeliveryFailsAfter(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	streamed := map[uint64]chan struct{}{} // nonce -> closed once its stream was served
	done := func(nonce uint64) chan struct{} {
		mu.Lock()
		defer mu.Unlock()
		if streamed[nonce] == nil {
			streamed[nonce] = make(chan struct{})
		}
		return streamed[nonce]
	}
	var failed atomic.Int32
	b := setup(t, func(o *setupOptions) {
		o.wrap = func(i int, h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				raw, _ := io.ReadAll(r.Body)
				r.Body = io.NopCloser(bytes.NewReader(raw))
				switch {
				case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/inference"):
					var body hostapi.InferenceRequest
					_ = json.Unmarshal(raw, &body)
					h.ServeHTTP(w, r)
					close(done(body.Nonce))
					return
				case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/diffs"):
					var body hostapi.DiffRequest
					var d sessionpb.Diff
					if json.Unmarshal(raw, &body) != nil || d.Unmarshal(body.Diff) != nil || len(body.Requests) == 0 || int(d.Nonce%3) != i {
						break
					}
					h.ServeHTTP(httptest.NewRecorder(), r) // the host takes the diff...
					select {
					case <-done(d.Nonce):
						time.Sleep(100 * time.Millisecond) // the answer has reached the gateway
					case <-time.After(2 * time.Second):
					}
					failed.Add(1)
					http.Error(w, `{"error":"injected: the answer to the diff is lost"}`, http.StatusBadGateway) // ...its answer is lost
					return
				}
				h.ServeHTTP(w, r)
			})
		}
	})
	c := b.complete(t, ask(1))
	requireAnswer(t, ask(1), c)
	require.Equal(t, 1, c.Attempts, "the answer was kept, not retried on another host")
	require.Eventually(t, func() bool { return failed.Load() > 0 }, 5*time.Second, 10*time.Millisecond, "the executor's answer to the diff failed")
}

// TestDiffWriteThatLandedDespiteAnErrorStands: a diff write can report an
// error although its commit landed (an interrupted commit, a lost answer).
// The sequencer reads the state file back: the same bytes there mean the
// write succeeded, so the request goes on. No nonce is stored twice or
// skipped, and settlement pays every answer.
func TestDiffWriteThatLandedDespiteAnErrorStands(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.complete(t, ask(0))
	requireAnswer(t, ask(0), c)
	wantCost, lastNonce := c.Cost, c.Nonce

	// The next write lands but reports an error.
	var once sync.Once
	b.state.lostAnswer = func(nonce uint64) (err error) {
		once.Do(func() { err = errors.New("the commit's answer was lost") })
		return err
	}
	c = b.complete(t, ask(1))
	requireAnswer(t, ask(1), c)
	require.Equal(t, lastNonce+1, c.Nonce, "the landed write counts as written")
	wantCost, lastNonce = wantCost+c.Cost, c.Nonce
	b.state.lostAnswer = nil

	c = b.complete(t, ask(2))
	requireAnswer(t, ask(2), c)
	require.Equal(t, lastNonce+1, c.Nonce)
	wantCost += c.Cost
	b.requireOneSettlementPaying(t, wantCost, "every answer is paid")
}

// escrowOf is the gateway's escrow id.
func (b *bundle) escrowOf(t *testing.T, id uint64) *escrow {
	t.Helper()
	b.gw.mu.Lock()
	defer b.gw.mu.Unlock()
	e := b.gw.all[id]
	require.NotNil(t, e, "the gateway has no escrow %d", id)
	return e
}

// heldBy reads diff nonce of escrow id as host m stores it.
func (b *bundle) heldBy(t *testing.T, m *member, id, nonce uint64) []byte {
	t.Helper()
	held, err := b.gw.peers.Diffs(t.Context(), m.url, m.addr, id, nonce, 1)
	require.NoError(t, err)
	require.NotEmpty(t, held, "host %s holds no diff %d", m.url, nonce)
	require.Equal(t, nonce, held[0].Nonce)
	return held[0].Data
}

// failNextWrite makes the gateway's next diff write fail, and returns the
// nonce it was for once it has.
func failNextWrite(st *State) func() uint64 {
	var failed atomic.Uint64
	var once sync.Once
	st.failWrite = func(nonce uint64) (err error) {
		once.Do(func() {
			failed.Store(nonce)
			err = errors.New("disk full")
		})
		return err
	}
	return failed.Load
}

// executorOf is the member of escrow id that executes nonce n.
func (b *bundle) executorOf(t *testing.T, id, n uint64) *member {
	t.Helper()
	e := b.escrowOf(t, id)
	return e.out.members[e.seq.executorOf(n)]
}

// waitHeld waits until host m stores diff n of escrow id.
func (b *bundle) waitHeld(t *testing.T, m *member, id, n uint64) {
	t.Helper()
	require.Eventually(t, func() bool {
		held, err := b.gw.peers.Diffs(t.Context(), m.url, m.addr, id, n, 1)
		return err == nil && len(held) == 1
	}, 5*time.Second, 5*time.Millisecond, "host %s stores diff %d", m.url, n)
}

// leaveUnwritten runs req with the gateway's write of its diff failing,
// and returns the executor holding that diff and its nonce.
func (b *bundle) leaveUnwritten(t *testing.T, id uint64, req executor.Request) (*member, uint64) {
	t.Helper()
	failed := failNextWrite(b.state)
	_, err := b.gw.Complete(t.Context(), normalized(t, b.gw, req), func(string) error { return nil })
	require.ErrorContains(t, err, "disk full", "the request fails with the write")
	n := failed()
	exec := b.executorOf(t, id, n)
	b.waitHeld(t, exec, id, n)
	return exec, n
}

// TestAFailedDiffWriteIsWrittenBeforeTheNextDiff: a start goes to its
// executor beside the gateway's write. When the write fails, the request
// fails, and the diff its executor holds keeps its nonce: the next request
// stores it first and takes the nonce after, and every host takes both.
func TestAFailedDiffWriteIsWrittenBeforeTheNextDiff(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := b.complete(t, ask(0))
	id := c.EscrowID
	exec, n := b.leaveUnwritten(t, id, ask(1))
	require.Equal(t, c.Nonce+1, n)
	b.state.failWrite = nil

	c = b.complete(t, ask(2))
	requireAnswer(t, ask(2), c)
	require.Equal(t, n+1, c.Nonce, "the unwritten diff kept its nonce")
	stored, err := b.state.Diffs(t.Context(), id, n, 1)
	require.NoError(t, err)
	require.Len(t, stored, 1)
	require.Equal(t, b.heldBy(t, exec, id, n), stored[0].Data, "the gateway stored the diff its executor holds")
	b.waitDelivered(t, id, n+1)
}

// TestTheAppSeesNoAnswerBeforeTheDiffIsStored: the executor answers
// while the gateway's write of the diff that started the request is still
// in flight. Nothing reaches the app until the write lands, and an answer
// whose write fails never does.
func TestTheAppSeesNoAnswerBeforeTheDiffIsStored(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first := b.complete(t, ask(0))
	for _, fails := range []bool{false, true} {
		n := first.Nonce + 1
		exec := b.executorOf(t, first.EscrowID, n)
		gate := make(chan struct{})
		b.state.failWrite = func(nonce uint64) error {
			if nonce != n {
				return nil
			}
			<-gate
			if fails {
				return errors.New("disk gone")
			}
			return nil
		}
		var emitted atomic.Int32
		done := make(chan error, 1)
		go func() {
			_, err := b.gw.Complete(t.Context(), normalized(t, b.gw, ask(1)), func(string) error { emitted.Add(1); return nil })
			done <- err
		}()
		b.waitHeld(t, exec, first.EscrowID, n) // once it has streamed its answer
		time.Sleep(50 * time.Millisecond)      // the answer has reached the gateway by now
		require.Zero(t, emitted.Load(), "no text reaches the app while the gateway's write is in flight")
		select {
		case err := <-done:
			t.Fatalf("the request ended before the gateway's write did: %v", err)
		default:
		}
		close(gate)
		err := <-done
		if fails {
			require.ErrorContains(t, err, "disk gone")
			require.Zero(t, emitted.Load(), "an answer whose diff was not stored never reaches the app")
			b.state.failWrite = nil
			break
		}
		require.NoError(t, err)
		require.Positive(t, emitted.Load())
		first.Nonce = n
	}
}

// TestRestartTakesBackADiffOnlyItsExecutorHolds: the gateway stops after
// its executor took a start but before the gateway's write landed. The
// restarted gateway takes the diff back from that host instead of
// building another at its nonce, which would fork the session.
func TestRestartTakesBackADiffOnlyItsExecutorHolds(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var lastNonce uint64
	for i := range 3 {
		lastNonce = b.complete(t, ask(i)).Nonce
	}
	id := b.gw.Escrows()[0].ID
	exec, n := b.leaveUnwritten(t, id, ask(3))
	require.Equal(t, lastNonce+1, n)

	// Stopped as a killed process would be, with diff n in memory only.
	b.gw.halt()
	require.NoError(t, b.state.Close())
	b.gw, b.state = b.startGateway(t)

	views := b.gw.Escrows()
	require.Len(t, views, 1)
	require.Equal(t, n, views[0].Nonce, "the restarted gateway took diff %d back", n)
	require.True(t, views[0].Current, "the escrow goes on")
	stored, err := b.state.Diffs(t.Context(), id, n, 1)
	require.NoError(t, err)
	require.Len(t, stored, 1)
	require.Equal(t, b.heldBy(t, exec, id, n), stored[0].Data)

	c := b.complete(t, ask(4))
	requireAnswer(t, ask(4), c)
	require.Equal(t, id, c.EscrowID)
	require.Equal(t, n+1, c.Nonce)
	require.Equal(t, 1, c.Attempts, "no host refused the diff as a fork")
	b.waitDelivered(t, id, n+1)
}

// TestRestartWaitsForAHostStillInitializing: a host that has just
// started answers 503 until its storage is ready. The restarted gateway
// asks again rather than giving up on the escrow.
func TestRestartWaitsForAHostStillInitializing(t *testing.T) {
	t.Parallel()
	var busy atomic.Int32 // answers left to refuse, per host
	b := setup(t, func(o *setupOptions) {
		o.wrap = func(i int, h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodGet && busy.Add(-1) >= 0 {
					http.Error(w, `{"error":"initializing"}`, http.StatusServiceUnavailable)
					return
				}
				h.ServeHTTP(w, r)
			})
		}
	})
	c := b.complete(t, ask(0))
	b.gw.halt()
	require.NoError(t, b.state.Close())
	busy.Store(3)
	b.gw, b.state = b.startGateway(t)
	views := b.gw.Escrows()
	require.Len(t, views, 1)
	require.True(t, views[0].Current, "the escrow is resumed once its host is ready")
	require.Less(t, busy.Load(), int32(0), "the host was asked past its 503s")
	next := b.complete(t, ask(1))
	require.Equal(t, c.EscrowID, next.EscrowID)
	require.Equal(t, c.Nonce+1, next.Nonce)
}

// TestRestartWaitsForTheExecutorOfTheNextNonce: while the host that may
// hold the diff after the stored ones does not answer, the resumed escrow
// takes no requests and sequences nothing; once it answers, its diff is
// taken back.
func TestRestartWaitsForTheExecutorOfTheNextNonce(t *testing.T) {
	t.Parallel()
	var down atomic.Int32
	down.Store(-1)
	b := setup(t, func(o *setupOptions) {
		o.wrap = func(i int, h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if int(down.Load()) == i {
					panic(http.ErrAbortHandler) // the connection drops, as to a dead host
				}
				h.ServeHTTP(w, r)
			})
		}
	})
	lastNonce := b.complete(t, ask(0)).Nonce
	id := b.gw.Escrows()[0].ID
	exec, n := b.leaveUnwritten(t, id, ask(1))
	require.Equal(t, lastNonce+1, n)
	held := b.heldBy(t, exec, id, n)

	b.gw.halt()
	require.NoError(t, b.state.Close())
	for i, h := range b.hosts {
		if h.srv.URL == exec.url {
			down.Store(int32(i))
		}
	}
	b.gw, b.state = b.startGateway(t)
	views := b.gw.Escrows()
	require.Len(t, views, 1)
	require.Equal(t, lastNonce, views[0].Nonce)
	require.False(t, views[0].Current, "an escrow whose next diff may be with a host that does not answer takes no requests")
	stored, err := b.state.Diffs(t.Context(), id, n, 1)
	require.NoError(t, err)
	require.Empty(t, stored, "nothing was sequenced at nonce %d", n)

	down.Store(-1)
	require.Eventually(t, func() bool {
		stored, err := b.state.Diffs(t.Context(), id, n, 1)
		return err == nil && len(stored) == 1
	}, 15*time.Second, 20*time.Millisecond, "once the host answers, its diff is taken back")
	stored, err = b.state.Diffs(t.Context(), id, n, 1)
	require.NoError(t, err)
	require.Equal(t, held, stored[0].Data)
}

// postedNonces are the nonces of the diffs in a POST .../diffs body, one
// diff or a run.
func postedNonces(t *testing.T, raw []byte) []uint64 {
	t.Helper()
	var body hostapi.DiffRequest
	require.NoError(t, json.Unmarshal(raw, &body))
	items := body.Diffs
	if len(body.Diff) > 0 {
		items = []hostapi.DiffItem{{Diff: body.Diff}}
	}
	var out []uint64
	for _, it := range items {
		var d sessionpb.Diff
		require.NoError(t, d.Unmarshal(it.Diff))
		out = append(out, d.Nonce)
	}
	return out
}

// watchDeliveries wraps each host's handler so that seen learns the
// nonces of every diff delivery posted to host i.
func watchDeliveries(t *testing.T, seen func(i int, nonces []uint64)) func(int, http.Handler) http.Handler {
	return func(i int, h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/diffs") {
				raw, _ := io.ReadAll(r.Body)
				seen(i, postedNonces(t, raw))
				r.Body = io.NopCloser(bytes.NewReader(raw))
			}
			h.ServeHTTP(w, r)
		})
	}
}

// A member gets the diffs it does not execute held, and takes them as one
// run in front of the next diff it executes: one delivery per request in
// all, not one per member. Finalizing sends everything, and every slot
// signs the final root.
func TestMembersTakeHeldDiffsAsOneRun(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	runs := map[int][][]uint64{} // host index -> the nonces of each delivery
	b := setup(t, func(o *setupOptions) {
		o.config = func(c *Config) { c.HoldFor = time.Hour }
		o.wrap = watchDeliveries(t, func(i int, nonces []uint64) {
			mu.Lock()
			runs[i] = append(runs[i], nonces)
			mu.Unlock()
		})
	})
	const requests = 6
	var cost uint64
	for i := range requests {
		c := b.complete(t, ask(i))
		requireAnswer(t, ask(i), c)
		cost += c.Cost
	}
	mu.Lock()
	deliveries := 0
	for i, rs := range runs {
		deliveries += len(rs)
		var got []uint64
		for _, r := range rs {
			got = append(got, r...)
			require.Equal(t, r[len(r)-1]%3, uint64(b.slotOf(t, i)), "host %d got a delivery that ends at a diff it does not execute: %v", i, rs)
		}
		require.Equal(t, seq(1, got[len(got)-1]), got, "host %d took every nonce once, in order", i)
	}
	mu.Unlock()
	require.Equal(t, requests, deliveries, "one delivery per request: the executor's, with what was held for it")

	b.requireOneSettlementPaying(t, cost, "every answer is paid")
	settlements, _, _ := b.chain.settledState()
	require.Len(t, settlements[0].Signatures, len(b.fixture.Snapshot.Group), "every slot signed the final root")
}

// A held diff goes out when its hold ends, with no later request.
func TestHeldDiffsGoOutWhenTheHoldEnds(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOptions) { o.config = func(c *Config) { c.HoldFor = 20 * time.Millisecond } })
	c := b.complete(t, ask(0))
	b.waitDelivered(t, c.EscrowID, c.Nonce)
}

// slotOf is host i's slot in the fixture's group.
func (b *bundle) slotOf(t *testing.T, i int) int {
	t.Helper()
	for slot, raw := range b.fixture.Snapshot.Group {
		if string(raw) == string(b.hosts[i].engine.Address().Bytes()) {
			return slot
		}
	}
	t.Fatalf("host %d holds no slot", i)
	return -1
}

func seq(from, to uint64) []uint64 {
	var out []uint64
	for n := from; n <= to; n++ {
		out = append(out, n)
	}
	return out
}

// A gateway that halts first sends the members the diffs it held for
// them: every host ends at the latest nonce, with a signature over its
// root, where the group can settle without the gateway.
func TestHaltSendsHeldDiffs(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOptions) { o.config = func(c *Config) { c.HoldFor = time.Hour } })
	var last *Completion
	for i := range 4 {
		last = b.complete(t, ask(i))
	}
	b.gw.halt()
	for i, h := range b.hosts {
		list := h.engine.Settleables()
		require.Len(t, list, 1, "host %d", i)
		m := list[0].Settlement
		require.Equal(t, last.Nonce, m.Nonce, "host %d is at the latest nonce", i)
		sigs, err := h.engine.OwnSignatures(t.Context(), last.EscrowID, m.Nonce)
		require.NoError(t, err)
		require.NotEmpty(t, sigs, "host %d signed the latest root", i)
	}
}

// A short seal grace holds fewer diffs: at most a quarter of it, so that a
// validator sees a finished inference well before it seals.
func TestHoldIsBoundedByTheSealGrace(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	longest := 0
	b := setup(t, func(o *setupOptions) {
		o.session = func(so *sessiontest.Options) { so.SealGraceNonces = 8 }
		o.config = func(c *Config) { c.HoldFor = time.Hour }
		o.wrap = watchDeliveries(t, func(_ int, nonces []uint64) {
			mu.Lock()
			longest = max(longest, len(nonces))
			mu.Unlock()
		})
	})
	for i := range 6 {
		c := b.complete(t, ask(i))
		requireAnswer(t, ask(i), c)
		// A run that is due may still be waiting for its goroutine, and
		// take the next request's diff with it: that would be a longer
		// delivery, with nothing held longer.
		b.waitOnlyHeldQueued(t, c.EscrowID)
	}
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, 2, longest, "8 grace nonces hold at most 2 diffs")
}

// waitOnlyHeldQueued waits until what the members of escrow id have queued
// is held: every run that is due has been taken by its goroutine.
func (b *bundle) waitOnlyHeldQueued(t *testing.T, id uint64) {
	t.Helper()
	c := b.escrowOf(t, id).out
	require.Eventually(t, func() bool {
		for i := range c.members {
			out := &c.members[i].out
			out.mu.Lock()
			due := out.ready(c.held)
			out.mu.Unlock()
			if due {
				return false
			}
		}
		return true
	}, 10*time.Second, time.Millisecond, "a due run is never taken")
}
