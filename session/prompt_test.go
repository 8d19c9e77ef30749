package session_test

import (
	"encoding/hex"
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
