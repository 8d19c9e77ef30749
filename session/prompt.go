package session

import (
	"crypto/sha256"
	"encoding/binary"
	"strconv"
)

// PromptMessage is one chat message of a prompt, as PromptHash reads it.
type PromptMessage struct {
	Role    string
	Content string
}

// tagPrompt opens the bytes a prompt hash is taken over.
const tagPrompt = "devshard/v1/prompt"

// PromptHash is the hash a StartInference commits to (its prompt_hash):
// SHA-256 over the tag, the model, max_tokens in decimal, and each
// message's role and content, every one of them a field with a u64
// big-endian length prefix, so no two prompts share an encoding
// (docs/protocol.md, "Prompt hash"). The gateway computes it when it starts
// an inference; the executor and the validators recompute it from the
// request they are sent, and run it only if it matches.
func PromptHash(model string, maxTokens uint64, messages []PromptMessage) [32]byte {
	h := sha256.New()
	var n [8]byte
	field := func(s string) {
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	field(tagPrompt)
	field(model)
	field(strconv.FormatUint(maxTokens, 10))
	for _, m := range messages {
		field(m.Role)
		field(m.Content)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}
