package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
)

func request(content string, maxTokens int) Request {
	return Request{Model: BuiltinModel, MaxTokens: maxTokens, Messages: []Message{
		{Role: "system", Content: "be brief"}, {Role: "user", Content: content},
	}}
}

func collect(t *testing.T, e Executor, req Request) (Result, []string) {
	t.Helper()
	var pieces []string
	res, err := e.Execute(context.Background(), req, func(s string) error {
		pieces = append(pieces, s)
		return nil
	})
	require.NoError(t, err)
	return res, pieces
}

func TestBuiltinIsDeterministic(t *testing.T) {
	t.Parallel()
	a, pieces := collect(t, Builtin{}, request("what is a diff?", 1000))
	b, _ := collect(t, Builtin{}, request("what is a diff?", 1000))
	require.Equal(t, a, b)
	require.Equal(t, a.ResponseHash(), b.ResponseHash())
	require.Equal(t, a.Text, strings.Join(pieces, ""), "the stream adds up to the text")
	require.Equal(t, len(pieces), a.Usage.CompletionTokens)
	require.Equal(t, 4+2+4+4, a.Usage.PromptTokens)
	require.Equal(t, "stop", a.FinishReason)

	c, _ := collect(t, Builtin{}, request("what is a root?", 1000))
	require.NotEqual(t, a.Text, c.Text)
}

func TestBuiltinStopsAtMaxTokens(t *testing.T) {
	t.Parallel()
	res, pieces := collect(t, Builtin{}, request("long answer please", 3))
	require.Len(t, pieces, 3)
	require.Equal(t, 3, res.Usage.CompletionTokens)
	require.Equal(t, "length", res.FinishReason)
	full, _ := collect(t, Builtin{}, request("long answer please", 1000))
	require.True(t, strings.HasPrefix(full.Text, res.Text), "a cut answer is a prefix of the full one")
}

func TestBuiltinRejects(t *testing.T) {
	t.Parallel()
	emit := func(string) error { return nil }
	_, err := Builtin{}.Execute(context.Background(), Request{Model: "gpt-x", MaxTokens: 1, Messages: []Message{{Role: "user", Content: "x"}}}, emit)
	require.ErrorIs(t, err, ErrUnknownModel)
	require.ErrorContains(t, err, `"gpt-x" (this executor serves "devshard-test-1")`)
	_, err = Builtin{}.Execute(context.Background(), Request{Model: BuiltinModel, MaxTokens: 1}, emit)
	require.ErrorIs(t, err, ErrBadRequest)
	_, err = Builtin{}.Execute(context.Background(), request("x", 0), emit)
	require.ErrorContains(t, err, "max_tokens must be positive, got 0")

	stop := errors.New("client gone")
	_, err = Builtin{}.Execute(context.Background(), request("x", 10), func(string) error { return stop })
	require.ErrorIs(t, err, stop)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = Builtin{}.Execute(ctx, request("x", 10), emit)
	require.ErrorIs(t, err, context.Canceled)
}

// fakeUpstream is a fake OpenAI-compatible server (a stand-in for vLLM): it
// answers with the built-in model in OpenAI's streaming shape.
func fakeUpstream(t *testing.T, mutate func(w http.ResponseWriter, chunk string) string) *httptest.Server {
	t.Helper()
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/chat/completions" || r.Header.Get("Authorization") != "Bearer k" {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		var req upstreamRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || !req.Stream || req.StreamOptions["include_usage"] != true {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		send := func(v any) {
			raw, _ := json.Marshal(v)
			chunk := "data: " + string(raw) + "\n\n"
			if mutate != nil {
				chunk = mutate(w, chunk)
			}
			fmt.Fprint(w, chunk)
		}
		res, err := Builtin{}.Execute(r.Context(), Request{Model: BuiltinModel, Messages: req.Messages, MaxTokens: req.MaxTokens}, func(s string) error {
			send(map[string]any{"choices": []any{map[string]any{"delta": map[string]any{"content": s}, "finish_reason": nil}}})
			return nil
		})
		if err != nil {
			t.Error(err)
			return
		}
		send(map[string]any{"choices": []any{map[string]any{"delta": map[string]any{}, "finish_reason": res.FinishReason}}})
		send(map[string]any{"choices": []any{}, "usage": res.Usage})
		fmt.Fprint(w, ": keep-alive comment\n\ndata: [DONE]\n\n")
	}))
}

func TestUpstreamStreamsOverRealHTTP(t *testing.T) {
	t.Parallel()
	srv := fakeUpstream(t, nil)
	defer srv.Close()
	up := &Upstream{BaseURL: srv.URL + "/", ModelNames: []string{BuiltinModel}, APIKey: "k"}
	got, pieces := collect(t, up, request("hello there", 20))
	want, _ := collect(t, Builtin{}, request("hello there", 20))
	require.Equal(t, want, got)
	require.Equal(t, got.Text, strings.Join(pieces, ""))
}

func TestUpstreamFailures(t *testing.T) {
	t.Parallel()
	emit := func(string) error { return nil }
	srv := fakeUpstream(t, nil)
	defer srv.Close()
	_, err := (&Upstream{BaseURL: srv.URL, APIKey: "wrong"}).Execute(context.Background(), request("x", 5), emit)
	require.ErrorIs(t, err, ErrBadRequest)
	require.ErrorContains(t, err, "upstream answered 404")

	broken := fakeUpstream(t, func(_ http.ResponseWriter, chunk string) string {
		if strings.Contains(chunk, "usage") {
			return "data: {not json\n\n"
		}
		return chunk
	})
	defer broken.Close()
	_, err = (&Upstream{BaseURL: broken.URL, APIKey: "k"}).Execute(context.Background(), request("x", 5), emit)
	require.ErrorIs(t, err, ErrUpstream)
	require.ErrorContains(t, err, "malformed stream chunk")

	noUsage := fakeUpstream(t, func(_ http.ResponseWriter, chunk string) string {
		if strings.Contains(chunk, "usage") {
			return ""
		}
		return chunk
	})
	defer noUsage.Close()
	_, err = (&Upstream{BaseURL: noUsage.URL, APIKey: "k"}).Execute(context.Background(), request("x", 5), emit)
	require.ErrorContains(t, err, "carried no usage")

	cut := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n")
	}))
	defer cut.Close()
	_, err = (&Upstream{BaseURL: cut.URL}).Execute(context.Background(), request("x", 5), emit)
	require.ErrorContains(t, err, "ended without [DONE]")

	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "overloaded", http.StatusServiceUnavailable)
	}))
	defer down.Close()
	_, err = (&Upstream{BaseURL: down.URL}).Execute(context.Background(), request("x", 5), emit)
	require.ErrorIs(t, err, ErrUpstream)
	require.ErrorContains(t, err, "upstream answered 503: overloaded")
}

// FuzzReadStream: arbitrary server-sent event streams never panic, and a
// stream that is accepted adds up to what was emitted.
func FuzzReadStream(f *testing.F) {
	f.Add("data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n")
	f.Add("data: [DONE]\n")
	f.Add(": comment\nevent: x\ndata: {}\n")
	f.Fuzz(func(t *testing.T, stream string) {
		var emitted strings.Builder
		res, err := readStream(strings.NewReader(stream), func(s string) error {
			emitted.WriteString(s)
			return nil
		})
		if err == nil && res.Text != emitted.String() {
			t.Fatalf("text %q, emitted %q", res.Text, emitted.String())
		}
	})
}

// A request's prompt hash is session's, over the same fields: the hash a
// StartInference commits to is the one the host recomputes.
func TestPromptHashIsSessions(t *testing.T) {
	t.Parallel()
	req := request("héllo ✓", 64)
	want := session.PromptHash(BuiltinModel, 64, []session.PromptMessage{{Role: "system", Content: "be brief"}, {Role: "user", Content: "héllo ✓"}})
	require.Equal(t, want, req.PromptHash())
	other := request("héllo ✓", 65)
	require.NotEqual(t, want, other.PromptHash())
}
