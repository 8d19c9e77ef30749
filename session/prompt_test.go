package session_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
)

// The prompt hash is signed into every StartInference, and a host runs a
// request only if it hashes to it: the bytes may never change. These were
// computed by the executor's PromptHash before the layout moved here.
func TestPromptHashGolden(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		model     string
		maxTokens uint64
		messages  []session.PromptMessage
		want      string
	}{
		{"devshard-test-1", 64, []session.PromptMessage{{Role: "system", Content: "be brief"}, {Role: "user", Content: "héllo, wörld ✓"}, {Role: "assistant", Content: ""}},
			"89e362a0d077bce76e8c2d68a9c283e0229ce18f2e3b8e4fa07d8c6183e20d9b"},
		{"", 1, nil, "7b6ab35cb12b8a072e4df90cbe9a1a87b24994779033dc917a66c2e97cb3f144"},
		{"Qwen/Qwen3-8B", 4096, []session.PromptMessage{{Role: "user", Content: "what is a diff?"}},
			"2c9791c7257a09b929f825944bd5474742371aa04c1e4522df7a24e729d50aca"},
	} {
		h := session.PromptHash(tc.model, tc.maxTokens, tc.messages)
		require.Equal(t, tc.want, hex.EncodeToString(h[:]), "model %q", tc.model)
	}
}

// Length prefixes keep fields apart: moving bytes from one field to the
// next, or from one message to the next, changes the hash.
func TestPromptHashSeparatesFields(t *testing.T) {
	t.Parallel()
	base := session.PromptHash("m", 8, []session.PromptMessage{{Role: "user", Content: "ab"}})
	for name, h := range map[string][32]byte{
		"model":          session.PromptHash("m8", 8, []session.PromptMessage{{Role: "user", Content: "ab"}}),
		"max tokens":     session.PromptHash("m", 9, []session.PromptMessage{{Role: "user", Content: "ab"}}),
		"role into text": session.PromptHash("m", 8, []session.PromptMessage{{Role: "use", Content: "rab"}}),
		"split message":  session.PromptHash("m", 8, []session.PromptMessage{{Role: "user", Content: "a"}, {Role: "b"}}),
		"extra message":  session.PromptHash("m", 8, []session.PromptMessage{{Role: "user", Content: "ab"}, {}}),
	} {
		require.NotEqual(t, base, h, name)
	}
}

// A request with parameters commits to them: each one, its value, and
// that it is there at all. Their order in the call does not matter.
func TestPromptHashCommitsToParams(t *testing.T) {
	t.Parallel()
	msgs := []session.PromptMessage{{Role: "user", Content: "ab"}}
	seed := session.PromptParam{Name: "seed", Value: []byte("7")}
	stop := session.PromptParam{Name: "stop", Value: []byte(`["\n"]`)}
	bare := session.PromptHash("m", 8, msgs)
	both := session.PromptHash("m", 8, msgs, seed, stop)
	require.Equal(t, bare, session.PromptHash("m", 8, msgs, []session.PromptParam{}...), "no parameters hash as the first version")
	require.Equal(t, both, session.PromptHash("m", 8, msgs, stop, seed), "parameters are hashed in the order of their names")
	for name, h := range map[string][32]byte{
		"none":             bare,
		"one":              session.PromptHash("m", 8, msgs, seed),
		"another value":    session.PromptHash("m", 8, msgs, session.PromptParam{Name: "seed", Value: []byte("8")}, stop),
		"name into value":  session.PromptHash("m", 8, msgs, session.PromptParam{Name: "see", Value: []byte("d7")}, stop),
		"as a message":     session.PromptHash("m", 8, append(msgs, session.PromptMessage{Role: "seed", Content: "7"}, session.PromptMessage{Role: "stop", Content: `["\n"]`})),
		"empty parameter":  session.PromptHash("m", 8, msgs, seed, stop, session.PromptParam{Name: "top_p"}),
		"in another field": session.PromptHash("m", 8, []session.PromptMessage{{Role: "user", Content: "ab7"}}, stop),
	} {
		require.NotEqual(t, both, h, name)
	}
}

// The parameters' bytes are pinned as the first version's are; the hash
// was computed apart from this code, from docs/protocol.md's layout.
func TestPromptHashParamsGolden(t *testing.T) {
	t.Parallel()
	h := session.PromptHash("devshard-test-1", 64, []session.PromptMessage{{Role: "user", Content: "hi"}},
		session.PromptParam{Name: "temperature", Value: []byte("0.7")},
		session.PromptParam{Name: "seed", Value: []byte("42")},
		session.PromptParam{Name: "stop", Value: []byte(`["END","\n\n"]`)})
	require.Equal(t, "7bfe4669a71e6953819ef928438101e4a285264efc79830be301a62afde19bc5", hex.EncodeToString(h[:]))
}

func TestCanonicalJSON(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		` { "b" : 1.50, "a" : [ true, null, "x" ] } `:           `{"a":[true,null,"x"],"b":1.50}`,
		`{"type":"json_schema","json_schema":{"name":"<a&b>"}}`: `{"json_schema":{"name":"<a&b>"},"type":"json_schema"}`,
		`"\u003ca\u0026b\u003e \u00e9 \n"`:                      `"<a&b> é \n"`,
		`{"z":{"y":1,"x":2},"é":0,"e":1}`:                       `{"e":1,"z":{"x":2,"y":1},"é":0}`,
		`12345678901234567890123`:                               `12345678901234567890123`,
	} {
		got, err := session.CanonicalJSON([]byte(in))
		require.NoError(t, err, in)
		require.Equal(t, want, string(got), in)
		again, err := session.CanonicalJSON(got)
		require.NoError(t, err)
		require.Equal(t, got, again, "canonical JSON is its own canonical form")
	}
	for _, bad := range []string{``, `{`, `{"a":1} {"b":2}`, `nul`} {
		_, err := session.CanonicalJSON([]byte(bad))
		require.Error(t, err, bad)
	}
}

// FuzzCanonicalJSON: any input either is refused or comes out in a form
// that is its own canonical form and holds the same value.
func FuzzCanonicalJSON(f *testing.F) {
	f.Add(`{"b":1,"a":[true,null,"<x>"]}`)
	f.Add(`"\u2028\ud800"`)
	f.Add(`{"a":{"a":1e400}}`)
	f.Fuzz(func(t *testing.T, in string) {
		out, err := session.CanonicalJSON([]byte(in))
		if err != nil {
			return
		}
		again, err := session.CanonicalJSON(out)
		require.NoError(t, err)
		require.Equal(t, string(out), string(again))
		value := func(raw []byte) any {
			d := json.NewDecoder(bytes.NewReader(raw))
			d.UseNumber()
			var v any
			require.NoError(t, d.Decode(&v))
			return v
		}
		require.Equal(t, value([]byte(in)), value(out))
	})
}
