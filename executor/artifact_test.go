package executor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// prepared is the built-in model prepared by b into a temp dir: the
// artifact's path.
func prepared(t *testing.T, b Builtin) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "artifact")
	done, err := b.Prepare(context.Background(), Preparation{Model: BuiltinModel, Out: out})
	require.NoError(t, err)
	raw, err := os.ReadFile(out)
	require.NoError(t, err)
	sum := sha256.Sum256(raw)
	require.Equal(t, Prepared{Bytes: int64(len(raw)), SHA256: hex.EncodeToString(sum[:])}, done, "the answer says what is on disk")
	return out
}

func drain(string) error { return nil }

// The executor loaded from a prepared artifact answers exactly as Builtin
// does, parameters and all.
func TestPrepareThenLoadAnswersAsBuiltin(t *testing.T) {
	t.Parallel()
	exec, err := Builtin{}.Load(BuiltinModel, prepared(t, Builtin{}))
	require.NoError(t, err)
	seed, temp := int64(7), 0.5
	for _, req := range []Request{
		request("what is a diff?", 1000),
		request("short", 3),
		{Model: BuiltinModel, MaxTokens: 50, Seed: &seed, Temperature: &temp, Stop: []string{"e"}, Messages: []Message{{Role: "user", Content: "hi"}}},
	} {
		want, err := Builtin{}.Execute(context.Background(), req, drain)
		require.NoError(t, err)
		got, err := exec.Execute(context.Background(), req, drain)
		require.NoError(t, err)
		require.Equal(t, want, got)
	}
}

// The loaded model draws from the artifact's table, not the compiled-in
// one: an artifact with another, well-formed table answers otherwise. So a
// wrong artifact cannot hide behind the built-in vocabulary.
func TestArtifactTableIsWhatAnswers(t *testing.T) {
	t.Parallel()
	out := filepath.Join(t.TempDir(), "artifact")
	_, err := WriteArtifact(out, &Artifact{Model: BuiltinModel, Features: CPUFeatures(), Payload: encodeVocabulary([]string{"only"})})
	require.NoError(t, err)
	exec, err := Builtin{}.Load(BuiltinModel, out)
	require.NoError(t, err)
	res, err := exec.Execute(context.Background(), request("hello", 3), drain)
	require.NoError(t, err)
	require.Equal(t, "only only only", res.Text)
}

// Every mismatch on load is a construction error with a sentence saying
// which.
func TestArtifactLoadRefuses(t *testing.T) {
	t.Parallel()
	good, err := os.ReadFile(prepared(t, Builtin{}))
	require.NoError(t, err)
	payloadAt := len(good) - sha256.Size - len(encodeVocabulary(vocabulary))
	for _, tc := range []struct {
		name string
		file func() []byte
		want string
	}{
		{"a flipped payload byte", func() []byte {
			b := []byte(string(good))
			b[payloadAt+10] ^= 0x01
			return b
		}, "payload checksum mismatch"},
		{"a flipped checksum byte", func() []byte {
			b := []byte(string(good))
			b[len(b)-1] ^= 0x80
			return b
		}, "payload checksum mismatch"},
		{"other CPU features", func() []byte {
			a := Artifact{Model: BuiltinModel, Features: runtime.GOARCH + "/0000000000000000", Payload: encodeVocabulary(vocabulary)}
			return a.Encode()
		}, `was built for CPU features "` + runtime.GOARCH + `/0000000000000000"; this machine's are`},
		{"another model", func() []byte {
			a := Artifact{Model: "llama", Features: CPUFeatures(), Payload: encodeVocabulary(vocabulary)}
			return a.Encode()
		}, `was prepared for model "llama", not "devshard-test-1"`},
		{"another format version", func() []byte {
			b := []byte(string(good))
			b[len(artifactMagic)+1] = 2
			return b
		}, "format version 2; this executor reads version 1"},
		{"not an artifact", func() []byte { return []byte("{\"weights\":[]}") }, "not a devshard artifact"},
		{"a truncated file", func() []byte { return good[:len(good)-1] }, "bytes follow the header"},
		{"a malformed table", func() []byte {
			a := Artifact{Model: BuiltinModel, Features: CPUFeatures(), Payload: []byte{0, 0, 0, 0}}
			return a.Encode()
		}, "its table counts 0 words"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "artifact")
			require.NoError(t, os.WriteFile(path, tc.file(), 0o600))
			_, err := Builtin{}.Load(BuiltinModel, path)
			require.ErrorIs(t, err, ErrConstruction)
			require.ErrorContains(t, err, tc.want)
			require.ErrorContains(t, err, path, "the error names the file")
		})
	}
	_, err = Builtin{}.Load(BuiltinModel, filepath.Join(t.TempDir(), "absent"))
	require.ErrorIs(t, err, ErrConstruction, "a missing file cannot be loaded either")
}

// An executor standing in for another machine prepares what this one
// will not load, and loads its own.
func TestArtifactForOtherCPUFeatures(t *testing.T) {
	t.Parallel()
	other := Builtin{Features: "riscv64/feedfacefeedface"}
	path := prepared(t, other)
	_, err := Builtin{}.Load(BuiltinModel, path)
	require.ErrorIs(t, err, ErrConstruction)
	require.ErrorContains(t, err, `built for CPU features "riscv64/feedfacefeedface"`)
	_, err = other.Load(BuiltinModel, path)
	require.NoError(t, err)
}

func TestPrepareRefuses(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(blocker, nil, 0o600))

	_, err := Builtin{}.Prepare(context.Background(), Preparation{Model: "llama", Out: filepath.Join(dir, "a")})
	require.ErrorIs(t, err, ErrPreparation)
	require.ErrorContains(t, err, `model "llama" cannot be prepared here`)

	// A path under a regular file cannot be written, even by root.
	out := filepath.Join(blocker, "artifact")
	_, err = Builtin{}.Prepare(context.Background(), Preparation{Model: BuiltinModel, Out: out})
	require.ErrorIs(t, err, ErrPreparation)
	require.ErrorContains(t, err, "cannot write the artifact of devshard-test-1")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = Builtin{}.Prepare(ctx, Preparation{Model: BuiltinModel, Out: filepath.Join(dir, "b")})
	require.ErrorIs(t, err, context.Canceled)
	require.NoFileExists(t, filepath.Join(dir, "b"))
}

func TestPrepareVerifiesSource(t *testing.T) {
	t.Parallel()
	src := filepath.Join(t.TempDir(), "weights")
	require.NoError(t, os.WriteFile(src, []byte("weights"), 0o600))
	sum := sha256.Sum256([]byte("weights"))
	right := hex.EncodeToString(sum[:])
	wrong := strings.Repeat("0", 64)

	p := Preparation{Model: "m", Source: src, SourceSHA256: right, Out: "x"}
	require.NoError(t, p.VerifySource())
	p.SourceSHA256 = strings.ToUpper(right)
	require.NoError(t, p.VerifySource(), "hex in either case")
	p.SourceSHA256 = wrong
	err := p.VerifySource()
	require.ErrorIs(t, err, ErrPreparation)
	require.ErrorContains(t, err, "has sha256 "+right+", not the "+wrong+" it was named with")
	p.Source = src + ".absent"
	require.ErrorIs(t, p.VerifySource(), ErrPreparation)
	require.NoError(t, (&Preparation{Model: "m", Source: src, Out: "x"}).VerifySource(), "no sha256, nothing to check")

	require.ErrorIs(t, (&Preparation{Out: "x"}).Check(), ErrBadRequest)
	require.ErrorIs(t, (&Preparation{Model: "m"}).Check(), ErrBadRequest)
	require.ErrorIs(t, (&Preparation{Model: "m", Out: "x", SourceSHA256: right}).Check(), ErrBadRequest)
}

func TestArtifactCPUFeatures(t *testing.T) {
	t.Parallel()
	f := CPUFeatures()
	require.True(t, f == runtime.GOARCH || strings.HasPrefix(f, runtime.GOARCH+"/"), f)
	if runtime.GOOS == "linux" && cpuFlags() != "" {
		require.Len(t, f, len(runtime.GOARCH)+1+16)
	}
}

// The upstream's artifact is a marker for its model, on any machine.
func TestPrepareUpstreamMarker(t *testing.T) {
	t.Parallel()
	up := &Upstream{ModelNames: []string{"llama", "qwen"}}
	out := filepath.Join(t.TempDir(), "artifact")
	_, err := up.Prepare(context.Background(), Preparation{Model: "llama", Out: out})
	require.NoError(t, err)
	exec, err := up.Load("llama", out)
	require.NoError(t, err)
	require.Same(t, up, exec)
	_, err = up.Load("qwen", out)
	require.ErrorIs(t, err, ErrConstruction)
	_, err = up.Prepare(context.Background(), Preparation{Model: "mistral", Out: out})
	require.ErrorIs(t, err, ErrPreparation)
	require.ErrorContains(t, err, "the server serves llama, qwen")
	_, err = Builtin{}.Load(BuiltinModel, out)
	require.ErrorIs(t, err, ErrConstruction, "nor does the built-in model load it")
}

func FuzzDecodeArtifact(f *testing.F) {
	a := Artifact{Model: BuiltinModel, Features: "amd64/x", Payload: encodeVocabulary(vocabulary)}
	f.Add(a.Encode())
	f.Add([]byte(artifactMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := DecodeArtifact(b)
		if err != nil {
			require.ErrorIs(t, err, ErrConstruction)
			return
		}
		require.Equal(t, b, a.Encode(), "what decodes encodes back to the same bytes")
		decodeVocabulary(a.Payload)
	})
}
