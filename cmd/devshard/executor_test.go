package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/executor/ndjson"
)

// runExecutorCommand runs `devshard <args>` with stdin as its input and
// returns its stdout, split into lines.
func runExecutorCommand(t *testing.T, stdin string, args ...string) ([]string, error) {
	t.Helper()
	root := newRootCommand()
	var out bytes.Buffer
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(io.Discard)
	root.SetArgs(args)
	err := root.Execute()
	return strings.Split(strings.TrimSpace(out.String()), "\n"), err
}

// answers routes the lines after the ready line by id: each id's pieces,
// concatenated, and its final answer.
func answers(t *testing.T, lines []string) (map[string]string, map[string]ndjson.Answer) {
	t.Helper()
	pieces, finals := map[string]string{}, map[string]ndjson.Answer{}
	for _, l := range lines {
		var a ndjson.Answer
		require.NoError(t, json.Unmarshal([]byte(l), &a), l)
		require.NotContains(t, finals, a.ID, "a line after the final one of %s", a.ID)
		switch {
		case a.Final():
			finals[a.ID] = a
		case a.Piece != nil:
			pieces[a.ID] += *a.Piece
		default:
			t.Fatalf("neither a piece nor a final line: %s", l)
		}
	}
	return pieces, finals
}

// `devshard executor builtin` answers over NDJSON what executor.Builtin
// answers in process.
func TestExecutorBuiltinCommand(t *testing.T) {
	t.Parallel()
	var in strings.Builder
	want := map[string]executor.Result{}
	for i := range 5 {
		req := executor.Request{Model: executor.BuiltinModel, MaxTokens: 20 + i, Messages: []executor.Message{{Role: "user", Content: fmt.Sprint("question ", i)}}}
		res, err := executor.Builtin{}.Execute(context.Background(), req, func(string) error { return nil })
		require.NoError(t, err)
		id := fmt.Sprint("r", i)
		want[id] = res
		b, err := json.Marshal(ndjson.Request{ID: id, Task: ndjson.Task{Kind: ndjson.KindInference, Request: req}})
		require.NoError(t, err)
		in.Write(append(b, '\n'))
	}
	in.WriteString("{\"id\":\"bad\",\"task\":{\"kind\":\"inference\",\"request\":{\"model\":\"devshard-test-1\"}}}\n")

	lines, err := runExecutorCommand(t, in.String(), "executor", "builtin", "--concurrent", "3")
	require.NoError(t, err, "stdin's end is a clean stop")
	var ready ndjson.Ready
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &ready))
	require.Equal(t, ndjson.Ready{Ready: true, Models: []string{executor.BuiltinModel}}, ready)
	pieces, finals := answers(t, lines[1:])
	for id, res := range want {
		require.Equal(t, ndjson.Output{Text: res.Text, Usage: res.Usage, FinishReason: res.FinishReason}, *finals[id].Output, id)
		require.Equal(t, res.Text, pieces[id], "%s: pieces concatenate to the text", id)
	}
	require.Equal(t, ndjson.ClassBadRequest, finals["bad"].Class)
}

// `devshard executor openai` serves an OpenAI-compatible server's stream.
// It sets an environment variable, so it does not run in parallel.
func TestExecutorOpenAICommand(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer sk-test" {
			http.Error(w, "no key", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"choices\":[{\"delta\":{\"content\":\"hello\"}}]}\n\n")
		io.WriteString(w, "data: {\"choices\":[{\"delta\":{\"content\":\" world\"},\"finish_reason\":\"stop\"}]}\n\n")
		io.WriteString(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\n")
		io.WriteString(w, "data: [DONE]\n\n")
	}))
	defer srv.Close()
	t.Setenv("DEVSHARD_TEST_UPSTREAM_KEY", "sk-test")

	// One at a time, so the preparation is done before the run that names it.
	marker := filepath.Join(t.TempDir(), "marker")
	req := `{"id":"a","task":{"kind":"validation","request":{"model":"llama","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}}}` + "\n" +
		`{"id":"p","task":{"kind":"prepare","prepare":{"model":"llama","out":"` + marker + `"}}}` + "\n" +
		`{"id":"b","task":{"kind":"inference","artifact":"` + marker + `","request":{"model":"llama","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}}}` + "\n" +
		`{"id":"c","task":{"kind":"inference","artifact":"` + marker + `","request":{"model":"qwen","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}}}` + "\n" +
		`{"id":"m","task":{"kind":"prepare","prepare":{"model":"mistral","out":"` + marker + `.m"}}}` + "\n"
	lines, err := runExecutorCommand(t, req, "executor", "openai", "--url", srv.URL, "--models", "llama,qwen", "--api-key-env", "DEVSHARD_TEST_UPSTREAM_KEY", "--concurrent", "1")
	require.NoError(t, err)
	require.JSONEq(t, `{"ready":true,"models":["llama","qwen"]}`, lines[0])
	pieces, finals := answers(t, lines[1:])
	want := ndjson.Output{Text: "hello world", Usage: executor.Usage{PromptTokens: 7, CompletionTokens: 2}, FinishReason: "stop"}
	require.Equal(t, "hello world", pieces["a"])
	require.Equal(t, want, *finals["a"].Output)
	require.NotNil(t, finals["p"].Output.Prepared, "the upstream's preparation writes a marker")
	require.Equal(t, want, *finals["b"].Output, "a run from the marker is the server's")
	require.Equal(t, ndjson.ClassConstruction, finals["c"].Class, "the marker names llama, not qwen")
	require.Equal(t, ndjson.ClassPreparation, finals["m"].Class, "mistral is not among --models")

	_, err = runExecutorCommand(t, "", "executor", "openai", "--models", "llama")
	require.ErrorContains(t, err, "--url is required")
	_, err = runExecutorCommand(t, "", "executor", "openai", "--url", srv.URL, "--api-key-env", "DEVSHARD_TEST_NO_SUCH_VAR")
	require.ErrorContains(t, err, "DEVSHARD_TEST_NO_SUCH_VAR, which is not set")
}

func TestExecutorHelpExplainsTheProtocol(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"executor", "--help"}, {"executor", "builtin", "--help"}, {"executor", "openai", "--help"}} {
		lines, err := runExecutorCommand(t, "", args...)
		require.NoError(t, err)
		help := strings.Join(lines, "\n")
		for _, s := range []string{`{"ready":true`, `"piece"`, `"output"`, `"prepare"`, `"artifact"`, "bad_request", "preparation", "construction", "execution"} {
			require.Contains(t, help, s, "%v", args)
		}
	}
	lines, err := runExecutorCommand(t, "", "--help")
	require.NoError(t, err)
	require.Contains(t, strings.Join(lines, "\n"), "executor  serve an executor")
}

// pipedExecutor runs `devshard <args>` on OS pipes for its stdin and
// stdout, so a test talks to it a line at a time as a worker does.
type pipedExecutor struct {
	in   *os.File
	out  *ndjson.Decoder
	done chan error
}

func startPipedExecutor(t *testing.T, args ...string) *pipedExecutor {
	t.Helper()
	inR, inW, err := os.Pipe()
	require.NoError(t, err)
	outR, outW, err := os.Pipe()
	require.NoError(t, err)
	root := newRootCommand()
	root.SetIn(inR)
	root.SetOut(outW)
	root.SetErr(io.Discard)
	root.SetArgs(args)
	p := &pipedExecutor{in: inW, out: ndjson.NewDecoder(outR, ndjson.MaxLine), done: make(chan error, 1)}
	go func() { p.done <- root.Execute(); outW.Close(); inR.Close() }()
	t.Cleanup(func() { inW.Close(); outR.Close() })
	var ready ndjson.Ready
	require.NoError(t, json.Unmarshal(p.line(t), &ready))
	require.True(t, ready.Ready)
	return p
}

func (p *pipedExecutor) line(t *testing.T) []byte {
	t.Helper()
	l, err := p.out.Line()
	require.NoError(t, err)
	return l
}

// do sends task and reads its answers up to the final one.
func (p *pipedExecutor) do(t *testing.T, id string, task ndjson.Task) ndjson.Answer {
	t.Helper()
	b, err := json.Marshal(ndjson.Request{ID: id, Task: task})
	require.NoError(t, err)
	_, err = p.in.Write(append(b, '\n'))
	require.NoError(t, err)
	for {
		var a ndjson.Answer
		require.NoError(t, json.Unmarshal(p.line(t), &a))
		require.Equal(t, id, a.ID)
		if a.Final() {
			return a
		}
	}
}

func (p *pipedExecutor) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, p.in.Close())
	require.NoError(t, <-p.done, "stdin's end is a clean stop")
}

// `devshard executor builtin` prepares its artifact and answers from it
// what executor.Builtin answers; one started for other CPU features
// refuses to load it.
func TestExecutorBuiltinCommandPrepares(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	art := filepath.Join(dir, "artifact")
	req := executor.Request{Model: executor.BuiltinModel, MaxTokens: 30, Messages: []executor.Message{{Role: "user", Content: "prepare me"}}}
	want, err := executor.Builtin{}.Execute(context.Background(), req, func(string) error { return nil })
	require.NoError(t, err)
	wantOut := ndjson.Output{Text: want.Text, Usage: want.Usage, FinishReason: want.FinishReason}

	p := startPipedExecutor(t, "executor", "builtin")
	a := p.do(t, "p", ndjson.Task{Kind: ndjson.KindPrepare, Prepare: &executor.Preparation{Model: executor.BuiltinModel, Out: art}})
	require.NotNil(t, a.Output, a.Error)
	st, err := os.Stat(art)
	require.NoError(t, err)
	require.Equal(t, st.Size(), a.Output.Prepared.Bytes)
	a = p.do(t, "r", ndjson.Task{Kind: ndjson.KindValidation, Request: req, Artifact: art})
	require.NotNil(t, a.Output, a.Error)
	require.Equal(t, wantOut, *a.Output)
	a = p.do(t, "old", ndjson.Task{Kind: ndjson.KindInference, Request: req})
	require.Equal(t, wantOut, *a.Output, "a task without an artifact runs as before")
	a = p.do(t, "src", ndjson.Task{Kind: ndjson.KindPrepare, Prepare: &executor.Preparation{Model: executor.BuiltinModel, Source: art, SourceSHA256: strings.Repeat("0", 64), Out: filepath.Join(dir, "b")}})
	require.Equal(t, ndjson.ClassPreparation, a.Class, a.Error)
	p.stop(t)

	other := startPipedExecutor(t, "executor", "builtin", "--cpu-features", "amd64/not-this-machine")
	a = other.do(t, "r", ndjson.Task{Kind: ndjson.KindInference, Request: req, Artifact: art})
	require.Equal(t, ndjson.ClassConstruction, a.Class)
	require.Contains(t, a.Error, `this machine's are "amd64/not-this-machine"`)
	other.stop(t)
}
