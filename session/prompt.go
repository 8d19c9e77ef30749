package session

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
)

// PromptMessage is one chat message of a prompt, as PromptHash reads it.
type PromptMessage struct {
	Role    string
	Content string
}

// PromptParam is one generation parameter a request carries beside its
// messages (seed, stop, temperature, …), as PromptHash reads it: the
// parameter's OpenAI name and its value in canonical JSON (CanonicalJSON).
// A parameter the request does not set is not a PromptParam at all.
type PromptParam struct {
	Name  string
	Value []byte
}

// tagPrompt opens the bytes a prompt hash is taken over.
const tagPrompt = "devshard/v1/prompt"

// paramsMark is the length prefix that ends the messages and opens the
// parameters. No field is 2^64−1 bytes long, so it cannot be read as one
// more message: a prompt with parameters never shares its bytes with one
// without.
const paramsMark = ^uint64(0)

// PromptHash is the hash a StartInference commits to (its prompt_hash):
// SHA-256 over the tag, the model, max_tokens in decimal, and each
// message's role and content, every one of them a field with a u64
// big-endian length prefix, so no two prompts share an encoding. If the
// request sets parameters, the mark paramsMark follows the messages and
// then each parameter's name and value, in the byte order of the names
// (docs/protocol.md, "Prompt hash"). Without parameters the bytes are
// those of the first version, so requests hash as they always did.
//
// The gateway computes it when it starts an inference; the executor and
// the validators recompute it from the request they are sent, and run it
// only if it matches.
func PromptHash(model string, maxTokens uint64, messages []PromptMessage, params ...PromptParam) [32]byte {
	h := sha256.New()
	var n [8]byte
	field := func(b []byte) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	field([]byte(tagPrompt))
	field([]byte(model))
	field([]byte(strconv.FormatUint(maxTokens, 10)))
	for _, m := range messages {
		field([]byte(m.Role))
		field([]byte(m.Content))
	}
	if len(params) > 0 {
		sorted := append([]PromptParam(nil), params...)
		sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
		binary.BigEndian.PutUint64(n[:], paramsMark)
		h.Write(n[:])
		for _, p := range sorted {
			field([]byte(p.Name))
			field(p.Value)
		}
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// CanonicalJSON re-encodes a JSON value the one way PromptHash hashes it:
// no insignificant whitespace, object keys in the byte order of their
// UTF-8, strings escaped only where JSON requires it (and U+2028, U+2029),
// numbers kept as the literal the value carries. Two encodings of the
// same value that differ only in spacing, key order or string escapes come
// out the same, so a value survives any JSON round trip between the
// gateway and the hosts with its hash.
func CanonicalJSON(raw []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("not a JSON value: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("not one JSON value: more follows the first")
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(out.Bytes(), []byte("\n")), nil
}
