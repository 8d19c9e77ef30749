package executor

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func ptr[T any](v T) *T { return &v }

// The built-in model honours seed, temperature and top_p: each one set
// draws other words, and the same values draw the same ones.
func TestBuiltinHonoursSamplingParams(t *testing.T) {
	t.Parallel()
	plain, _ := collect(t, Builtin{}, request("tell me", 1000))
	seen := map[string]string{plain.Text: "none"}
	for name, set := range map[string]func(*Request){
		"seed 1":          func(r *Request) { r.Seed = ptr(int64(1)) },
		"seed 2":          func(r *Request) { r.Seed = ptr(int64(2)) },
		"temperature 0.5": func(r *Request) { r.Temperature = ptr(0.5) },
		"top_p 0.9":       func(r *Request) { r.TopP = ptr(0.9) },
		"presence 0.5":    func(r *Request) { r.PresencePenalty = ptr(0.5) },
		"frequency 0.5":   func(r *Request) { r.FrequencyPenalty = ptr(0.5) },
	} {
		a, b := request("tell me", 1000), request("tell me", 1000)
		set(&a)
		set(&b)
		ra, _ := collect(t, Builtin{}, a)
		rb, _ := collect(t, Builtin{}, b)
		require.Equal(t, ra, rb, name)
		require.NotContains(t, seen, ra.Text, "%s draws what another draws", name)
		seen[ra.Text] = name
	}
}

// stop ends the answer before the first stop sequence, even one that
// begins inside a word, with finish_reason "stop".
func TestBuiltinHonoursStop(t *testing.T) {
	t.Parallel()
	full, words := collect(t, Builtin{}, request("tell me", 1000))
	require.Greater(t, len(words), 5)

	req := request("tell me", 1000)
	req.Stop = []string{"never in the answer", words[4]}
	res, pieces := collect(t, Builtin{}, req)
	require.Equal(t, strings.Join(words[:4], ""), res.Text)
	require.Equal(t, res.Text, strings.Join(pieces, ""))
	require.Equal(t, 4, res.Usage.CompletionTokens)
	require.Equal(t, "stop", res.FinishReason)

	// A sequence that starts one byte into the fourth word keeps that byte.
	req.Stop = []string{words[3][1:] + words[4]}
	res, _ = collect(t, Builtin{}, req)
	require.Equal(t, strings.Join(words[:3], "")+words[3][:1], res.Text)
	require.Equal(t, 4, res.Usage.CompletionTokens)

	req.Stop = []string{"never in the answer"}
	res, _ = collect(t, Builtin{}, req)
	require.Equal(t, full, res)
}

// A parameter out of its range, or one the model's executor does not
// honour, is refused with its name; the built-in model answers only in
// text, an upstream in any format.
func TestCheckParamsRefusesByName(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		model, param string
		set          func(*Request)
	}{
		{BuiltinModel, "response_format", func(r *Request) { r.ResponseFormat = json.RawMessage(`{"type":"json_object"}`) }},
		{BuiltinModel, "response_format", func(r *Request) { r.ResponseFormat = json.RawMessage(`{"type":"json_schema","json_schema":{}}`) }},
		{"Qwen/Qwen3-8B", "response_format", func(r *Request) { r.ResponseFormat = json.RawMessage(`{"type":"xml"}`) }},
		{"Qwen/Qwen3-8B", "temperature", func(r *Request) { r.Temperature = ptr(2.5) }},
		{"Qwen/Qwen3-8B", "top_p", func(r *Request) { r.TopP = ptr(0.0) }},
		{"Qwen/Qwen3-8B", "stop", func(r *Request) { r.Stop = []string{"a", "b", "c", "d", "e"} }},
		{"Qwen/Qwen3-8B", "stop", func(r *Request) { r.Stop = []string{""} }},
		{"Qwen/Qwen3-8B", "presence_penalty", func(r *Request) { r.PresencePenalty = ptr(-2.5) }},
		{"Qwen/Qwen3-8B", "frequency_penalty", func(r *Request) { r.FrequencyPenalty = ptr(3.0) }},
		{"Qwen/Qwen3-8B", "logit_bias", func(r *Request) { r.LogitBias = json.RawMessage(`[1]`) }},
		{BuiltinModel, "logit_bias", func(r *Request) { r.LogitBias = json.RawMessage(`{"50256":-100}`) }},
	} {
		req := request("x", 5)
		req.Model = tc.model
		tc.set(&req)
		var pe *ParamError
		err := req.Validate()
		require.ErrorAs(t, err, &pe, "%s %+v", tc.model, req)
		require.Equal(t, tc.param, pe.Param)
		require.ErrorIs(t, err, ErrBadRequest)
		_, err = Builtin{}.Execute(context.Background(), req, func(string) error { return nil })
		require.ErrorAs(t, err, &pe, "the host refuses it too")
	}
	ok := request("x", 5)
	ok.ResponseFormat = json.RawMessage(`{"type":"text"}`)
	require.NoError(t, ok.Validate())
	ok.Model = "Qwen/Qwen3-8B"
	ok.ResponseFormat = json.RawMessage(`{"type":"json_object"}`)
	ok.Temperature, ok.TopP, ok.Stop = ptr(0.0), ptr(1.0), []string{"a", "b", "c", "d"}
	ok.PresencePenalty, ok.FrequencyPenalty, ok.LogitBias = ptr(-2.0), ptr(2.0), json.RawMessage(`{"50256":-100}`)
	require.NoError(t, ok.Validate())
}

// The prompt hash commits to every parameter, and a request keeps its
// hash across the JSON hop from the gateway to a host, whatever escapes
// and spacing its values came in.
func TestPromptHashCommitsToParams(t *testing.T) {
	t.Parallel()
	req := request("x", 5)
	req.Model = "Qwen/Qwen3-8B"
	bare := req.PromptHash()
	req.Stop = []string{}
	req.ResponseFormat = json.RawMessage{}
	require.Equal(t, bare, req.PromptHash(), "empty stop and response_format are unset")

	seen := map[[32]byte]string{bare: "none"}
	for name, set := range map[string]func(*Request){
		"temperature":     func(r *Request) { r.Temperature = ptr(0.7) },
		"top_p":           func(r *Request) { r.TopP = ptr(0.7) },
		"seed":            func(r *Request) { r.Seed = ptr(int64(-7)) },
		"presence":        func(r *Request) { r.PresencePenalty = ptr(0.7) },
		"frequency":       func(r *Request) { r.FrequencyPenalty = ptr(0.7) },
		"logit_bias":      func(r *Request) { r.LogitBias = json.RawMessage(`{ "2" : 1, "1" : -1 }`) },
		"stop":            func(r *Request) { r.Stop = []string{"<end>"} },
		"response_format": func(r *Request) { r.ResponseFormat = json.RawMessage(` { "type" : "json_object" } `) },
	} {
		r := request("x", 5)
		r.Model = "Qwen/Qwen3-8B"
		set(&r)
		h := r.PromptHash()
		require.NotContains(t, seen, h, name)
		seen[h] = name

		raw, err := json.Marshal(r)
		require.NoError(t, err)
		var hop Request
		require.NoError(t, json.Unmarshal(raw, &hop))
		require.Equal(t, h, hop.PromptHash(), "%s after the JSON hop (%s)", name, raw)
	}
}

// The upstream is sent every parameter the request sets, and temperature
// 0 when it sets none.
func TestUpstreamForwardsParams(t *testing.T) {
	t.Parallel()
	bodies := make(chan map[string]any, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		var body map[string]any
		require.NoError(t, json.Unmarshal(raw, &body))
		bodies <- body
		io.WriteString(w, "data: [DONE]\n\n")
	}))
	defer srv.Close()
	up := &Upstream{BaseURL: srv.URL}

	req := request("x", 5)
	req.Temperature, req.TopP, req.Seed = ptr(0.7), ptr(0.9), ptr(int64(42))
	req.PresencePenalty, req.FrequencyPenalty = ptr(0.1), ptr(-0.2)
	req.LogitBias = json.RawMessage(`{"50256":-100}`)
	req.Stop = []string{"END"}
	req.ResponseFormat = json.RawMessage(`{"type":"json_object"}`)
	req.Model = "Qwen/Qwen3-8B"
	_, err := up.Execute(context.Background(), req, func(string) error { return nil })
	require.NoError(t, err)
	body := <-bodies
	require.Equal(t, 0.7, body["temperature"])
	require.Equal(t, 0.9, body["top_p"])
	require.Equal(t, 42.0, body["seed"])
	require.Equal(t, []any{"END"}, body["stop"])
	require.Equal(t, map[string]any{"type": "json_object"}, body["response_format"])
	require.Equal(t, 0.1, body["presence_penalty"])
	require.Equal(t, -0.2, body["frequency_penalty"])
	require.Equal(t, map[string]any{"50256": -100.0}, body["logit_bias"])

	_, err = up.Execute(context.Background(), request("x", 5), func(string) error { return nil })
	require.NoError(t, err)
	body = <-bodies
	require.Equal(t, 0.0, body["temperature"])
	for _, absent := range []string{"top_p", "seed", "stop", "response_format", "presence_penalty", "frequency_penalty", "logit_bias"} {
		require.NotContains(t, body, absent)
	}
}
