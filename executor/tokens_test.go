package executor

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// promptCases are prompts of every shape a gateway may be sent.
func promptCases() map[string][]Message {
	many := make([]Message, 1000)
	for i := range many {
		many[i] = Message{Role: []string{"user", "assistant"}[i%2], Content: "x"}
	}
	return map[string][]Message{
		"one word":        {{Role: "user", Content: "hi"}},
		"system and user": {{Role: "system", Content: "be brief"}, {Role: "user", Content: "what is a diff?"}},
		"empty contents":  {{Role: "system"}, {Role: "user"}, {Role: "assistant"}},
		"empty roles":     {{Content: "a"}, {Content: ""}},
		"multi-byte":      {{Role: "user", Content: "héllo wörld, 你好世界, 🙂🚀 ✓"}},
		"emoji only":      {{Role: "user", Content: strings.Repeat("🙂", 300)}},
		"whitespace":      {{Role: "user", Content: " \t\n  a  b \n\n"}},
		"long text":       {{Role: "user", Content: strings.Repeat("the quick brown fox ", 500)}},
		"many messages":   many,
	}
}

// The built-in model's bound is its exact count: the one Execute reports.
func TestPromptTokenBoundIsExactForBuiltin(t *testing.T) {
	t.Parallel()
	for name, msgs := range promptCases() {
		res, err := Builtin{}.Execute(context.Background(), Request{Model: BuiltinModel, Messages: msgs, MaxTokens: 1}, func(string) error { return nil })
		require.NoError(t, err, name)
		require.Equal(t, uint64(res.Usage.PromptTokens), PromptTokenBound(BuiltinModel, msgs), name)
	}
}

// segment is a piece of a templated prompt: a special token, or text.
type segment struct {
	special bool
	text    string
}

// worstTokens counts a templated prompt the most a real tokenizer could:
// one token per special token, and for text one per UTF-8 byte (byte-level
// BPE falling back to bytes) plus one for SentencePiece's leading space.
func worstTokens(segs []segment) uint64 {
	var n uint64
	for _, s := range segs {
		if s.special {
			n++
		} else {
			n += uint64(len(s.text)) + 1
		}
	}
	return n
}

func special(s string) segment { return segment{special: true, text: s} }
func text(s string) segment    { return segment{text: s} }

// Chat templates of the model families the network serves, with the
// default system messages they insert.
var templates = map[string]func([]Message) []segment{
	"chatml (qwen)": func(msgs []Message) []segment {
		var out []segment
		if len(msgs) == 0 || msgs[0].Role != "system" {
			out = append(out, special("<|im_start|>"), text("system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."), special("<|im_end|>"), text("\n"))
		}
		for _, m := range msgs {
			out = append(out, special("<|im_start|>"), text(m.Role+"\n"), text(m.Content), special("<|im_end|>"), text("\n"))
		}
		return append(out, special("<|im_start|>"), text("assistant\n"))
	},
	"llama 3.1": func(msgs []Message) []segment {
		out := []segment{special("<|begin_of_text|>"), special("<|start_header_id|>"), text("system"), special("<|end_header_id|>"),
			text("\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"), special("<|eot_id|>")}
		for _, m := range msgs {
			out = append(out, special("<|start_header_id|>"), text(m.Role), special("<|end_header_id|>"), text("\n\n"), text(m.Content), special("<|eot_id|>"))
		}
		return append(out, special("<|start_header_id|>"), text("assistant"), special("<|end_header_id|>"), text("\n\n"))
	},
	"llama 2": func(msgs []Message) []segment {
		var out []segment
		for _, m := range msgs {
			switch m.Role {
			case "system":
				out = append(out, special("<s>"), text("[INST] <<SYS>>\n"), text(m.Content), text("\n<</SYS>>\n\n"))
			case "assistant":
				out = append(out, text(" "), text(m.Content), text(" "), special("</s>"))
			default:
				out = append(out, special("<s>"), text("[INST] "), text(m.Role), text(m.Content), text(" [/INST]"))
			}
		}
		return out
	},
}

// For any other model the bound is never below what a real tokenizer
// counts: the worst case of each template, and the built-in model's count.
func TestPromptTokenBoundCoversRealTokenizers(t *testing.T) {
	t.Parallel()
	for name, msgs := range promptCases() {
		bound := PromptTokenBound("Qwen/Qwen3-8B", msgs)
		for tmpl, render := range templates {
			require.GreaterOrEqual(t, bound, worstTokens(render(msgs)), "%s under %s", name, tmpl)
		}
		require.GreaterOrEqual(t, bound, uint64(PromptTokens(msgs)), "%s as the built-in model counts it", name)
	}
	require.Equal(t, PromptTokenBound("a", nil), PromptTokenBound("b", nil), "every other model gets the same bound")
	require.Greater(t, PromptTokenBound("m", []Message{{Role: "user", Content: "🙂"}}), PromptTokenBound("m", []Message{{Role: "user", Content: "a"}}),
		"a multi-byte character may cost a token per byte")
}
