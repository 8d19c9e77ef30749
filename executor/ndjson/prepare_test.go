package ndjson

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
)

// The task lines as docs/workers.md shows them: a prepare task carries no
// request, and an execute task without an artifact is the line it always
// was.
func TestPrepareWireForm(t *testing.T) {
	t.Parallel()
	prep := Task{Kind: KindPrepare, Prepare: &executor.Preparation{Model: "m", Source: "/w", SourceSHA256: "ab", Out: "/c/t"}}
	require.JSONEq(t, `{"kind":"prepare","prepare":{"model":"m","source":"/w","source_sha256":"ab","out":"/c/t"}}`, line(t, prep))
	old := Task{Kind: KindInference, Request: request("hi", 2)}
	require.JSONEq(t, `{"kind":"inference","request":{"model":"devshard-test-1","messages":[{"role":"user","content":"hi"}],"max_tokens":2}}`, line(t, old))
	old.Artifact = "/c/a"
	require.Contains(t, line(t, old), `"artifact":"/c/a"`)
}

// prepareLine is a prepare task's line for the built-in model.
func prepareLine(t *testing.T, id string, p executor.Preparation) string {
	return line(t, Request{ID: id, Task: Task{Kind: KindPrepare, Prepare: &p}})
}

func runLine(t *testing.T, id string, kind Kind, req executor.Request, artifact string) string {
	return line(t, Request{ID: id, Task: Task{Kind: kind, Request: req, Artifact: artifact}})
}

// Prepared, then named in each request, the artifact answers exactly as
// Builtin does, for inferences and validations alike.
func TestPrepareServedThenExecute(t *testing.T) {
	t.Parallel()
	s := setup(t, 2)
	out := filepath.Join(t.TempDir(), "tmp-artifact")
	s.send(t, `{"id":"p","task":{"kind":"prepare","prepare":{"model":"devshard-test-1","source":"","source_sha256":"","out":"`+out+`"}}}`)
	a, _ := s.final(t, "p")
	require.Empty(t, a.Error)
	raw, err := os.ReadFile(out)
	require.NoError(t, err)
	sum := sha256.Sum256(raw)
	require.Equal(t, &executor.Prepared{Bytes: int64(len(raw)), SHA256: hex.EncodeToString(sum[:])}, a.Output.Prepared)

	req := request("what is a root?", 40)
	want, err := executor.Builtin{}.Execute(context.Background(), req, func(string) error { return nil })
	require.NoError(t, err)
	for _, kind := range []Kind{KindInference, KindValidation, KindInference} { // the last from the loaded cache
		s.send(t, runLine(t, "r", kind, req, out))
		a, pieces := s.final(t, "r")
		require.Empty(t, a.Error)
		require.Equal(t, Output{Text: want.Text, Usage: want.Usage, FinishReason: want.FinishReason}, *a.Output)
		require.Equal(t, want.Text, pieces)
	}
}

// flip changes one byte of the payload of the artifact at path, and its
// modification time, as a disk that rots or a hand that edits would.
func flip(t *testing.T, path string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	raw[len(raw)-sha256.Size-5] ^= 0x20
	require.NoError(t, os.WriteFile(path, raw, 0o600))
	later := time.Now().Add(time.Minute)
	require.NoError(t, os.Chtimes(path, later, later))
}

// Each failure comes back with its class, and the next task still runs.
func TestPrepareServedErrorClasses(t *testing.T) {
	t.Parallel()
	s := setup(t, 1)
	dir := t.TempDir()
	src := filepath.Join(dir, "weights")
	require.NoError(t, os.WriteFile(src, []byte("weights"), 0o600))
	blocker := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(blocker, nil, 0o600))
	good := filepath.Join(dir, "good")
	s.send(t, prepareLine(t, "g", executor.Preparation{Model: executor.BuiltinModel, Out: good}))
	a, _ := s.final(t, "g")
	require.NotNil(t, a.Output, a.Error)

	// Served by another machine's executor: its artifact does not load here.
	other := serve(t, executor.Builtin{Features: "arm64/0123456789abcdef"}, 1)
	foreign := filepath.Join(dir, "foreign")
	other.send(t, prepareLine(t, "f", executor.Preparation{Model: executor.BuiltinModel, Out: foreign}))
	a, _ = other.final(t, "f")
	require.NotNil(t, a.Output, a.Error)

	req := request("hi", 5)
	for _, tc := range []struct {
		name  string
		line  string
		class Class
		want  string
	}{
		{"a source with the wrong sha256", prepareLine(t, "x", executor.Preparation{Model: executor.BuiltinModel, Source: src, SourceSHA256: strings.Repeat("ab", 32), Out: filepath.Join(dir, "a")}),
			ClassPreparation, "not the abab"},
		{"an unwritable out", prepareLine(t, "x", executor.Preparation{Model: executor.BuiltinModel, Out: filepath.Join(blocker, "a")}),
			ClassPreparation, "cannot write the artifact"},
		{"a model not served", prepareLine(t, "x", executor.Preparation{Model: "llama", Out: filepath.Join(dir, "a")}),
			ClassPreparation, `model "llama" cannot be prepared here`},
		{"a prepare task without its object", `{"id":"x","task":{"kind":"prepare"}}`,
			ClassBadRequest, `needs a "prepare" object`},
		{"a preparation without out", prepareLine(t, "x", executor.Preparation{Model: executor.BuiltinModel}),
			ClassBadRequest, "needs an output path"},
		{"an artifact for other CPU features", runLine(t, "x", KindValidation, req, foreign),
			ClassConstruction, `built for CPU features "arm64/0123456789abcdef"`},
		{"an artifact that is not there", runLine(t, "x", KindInference, req, filepath.Join(dir, "absent")),
			ClassConstruction, "no such file"},
		{"a request refused with an artifact", runLine(t, "x", KindInference, request("hi", 0), good),
			ClassBadRequest, "max_tokens must be positive"},
	} {
		s.send(t, tc.line)
		a, _ := s.final(t, "x")
		require.Equal(t, tc.class, a.Class, "%s: %s", tc.name, a.Error)
		require.Contains(t, a.Error, tc.want, tc.name)
	}
	require.NoFileExists(t, filepath.Join(dir, "a"), "no preparation that failed leaves a file")

	// The good artifact, loaded, then changed on disk: it is checked again.
	s.send(t, runLine(t, "ok", KindInference, req, good))
	a, _ = s.final(t, "ok")
	require.NotNil(t, a.Output, a.Error)
	flip(t, good)
	s.send(t, runLine(t, "bad", KindValidation, req, good))
	a, _ = s.final(t, "bad")
	require.Equal(t, ClassConstruction, a.Class)
	require.Contains(t, a.Error, "payload checksum mismatch")
}

// plain is an executor that prepares nothing.
type plain struct{ b executor.Builtin }

func (p plain) Models() []string { return p.b.Models() }
func (p plain) Execute(ctx context.Context, req executor.Request, emit func(string) error) (executor.Result, error) {
	return p.b.Execute(ctx, req, emit)
}

// An executor that runs without artifacts says so: a prepare task is a
// preparation error and a task naming an artifact a construction error,
// while a task without one runs.
func TestPrepareServedByAnExecutorWithoutArtifacts(t *testing.T) {
	t.Parallel()
	var exec executor.Executor = plain{}
	_, isPreparer := exec.(executor.Preparer)
	require.False(t, isPreparer)
	s := serve(t, exec, 1)
	s.send(t, prepareLine(t, "p", executor.Preparation{Model: executor.BuiltinModel, Out: filepath.Join(t.TempDir(), "a")}))
	a, _ := s.final(t, "p")
	require.Equal(t, ClassPreparation, a.Class)
	require.Contains(t, a.Error, "runs its models without artifacts")
	s.send(t, runLine(t, "r", KindInference, request("hi", 3), "/somewhere"))
	a, _ = s.final(t, "r")
	require.Equal(t, ClassConstruction, a.Class)
	s.send(t, runLine(t, "old", KindInference, request("hi", 3), ""))
	a, _ = s.final(t, "old")
	require.NotNil(t, a.Output, a.Error)
}

func TestPrepareAnswerWireForm(t *testing.T) {
	t.Parallel()
	var a Answer
	require.NoError(t, json.Unmarshal([]byte(`{"id":"8","output":{"prepared":{"bytes":512,"sha256":"ab"}}}`), &a))
	require.True(t, a.Final())
	require.Equal(t, &executor.Prepared{Bytes: 512, SHA256: "ab"}, a.Output.Prepared)
}
