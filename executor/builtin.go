package executor

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"time"
	"unicode"
)

// BuiltinModel is the name the built-in model serves under.
const BuiltinModel = "devshard-test-1"

// vocabulary the built-in model draws its words from.
var vocabulary = strings.Fields(`the a of to and in is it that for on with as at by from this be are was
host gateway escrow session nonce diff root slot epoch chain settle seal validate
token price fee group quorum signature ledger reward claim worker job runtime cache
model prompt answer stream request reply network compute proof state clock`)

// Builtin is a deterministic stand-in for a language model. Its output is a
// pure function of the request: the same messages, max_tokens and
// parameters give the same words, the same token counts and so the same
// response hash on every host. One word is one token; a prompt costs one
// token per word plus four per message for the chat framing.
//
// Its words are drawn by a generator seeded from the messages; seed,
// temperature, top_p and the penalties, when set, are mixed into that seed, so each of
// them changes the draw as it would a real model's sample, and the same
// values draw the same words. stop ends the answer before the first stop
// sequence, which is not part of it. It answers only in text and has no
// tokenizer, so it refuses response_format other than text and a
// logit_bias (Request.CheckParams).
type Builtin struct {
	// ThinkTime is a pause before each token, to imitate a real model.
	// Zero (the default) streams as fast as the client reads.
	ThinkTime time.Duration
	// Features are the CPU features its artifacts are built for and must
	// match to load: CPUFeatures() when empty. Setting it stands in for
	// another machine.
	Features string
}

// Models implements Executor.
func (Builtin) Models() []string { return []string{BuiltinModel} }

// PromptTokens counts a request's prompt the way Builtin does.
func PromptTokens(msgs []Message) int {
	n := 0
	for _, m := range msgs {
		n += 4 + len(strings.FieldsFunc(m.Content, unicode.IsSpace))
	}
	return n
}

// Execute implements Executor, with the vocabulary compiled in.
func (b Builtin) Execute(ctx context.Context, req Request, emit func(string) error) (Result, error) {
	return b.run(ctx, vocabulary, req, emit)
}

// run answers req with words drawn from vocab.
func (b Builtin) run(ctx context.Context, vocab []string, req Request, emit func(string) error) (Result, error) {
	if err := req.Validate(); err != nil {
		return Result{}, err
	}
	if req.Model != BuiltinModel {
		return Result{}, fmt.Errorf("%w: %q (this executor serves %q)", ErrUnknownModel, req.Model, BuiltinModel)
	}
	words := builtinWords(vocab, &req)
	n, finish := len(words), "stop"
	if req.MaxTokens < n {
		n, finish = req.MaxTokens, "length"
	}
	words = words[:n]
	if cut, ok := stopAt(words, req.Stop); ok {
		words, finish = cut, "stop"
	}
	var text strings.Builder
	for _, word := range words {
		if err := ctx.Err(); err != nil {
			return Result{}, err
		}
		if b.ThinkTime > 0 {
			select {
			case <-ctx.Done():
				return Result{}, ctx.Err()
			case <-time.After(b.ThinkTime):
			}
		}
		text.WriteString(word)
		if err := emit(word); err != nil {
			return Result{}, err
		}
	}
	return Result{
		Text:         text.String(),
		Usage:        Usage{PromptTokens: PromptTokens(req.Messages), CompletionTokens: len(words)},
		FinishReason: finish,
	}, nil
}

// builtinWords is the whole answer Builtin draws for req from vocab, before
// max_tokens and stop cut it: 8..71 words, each but the first with a
// leading space.
func builtinWords(vocab []string, req *Request) []string {
	seed := sha256.New()
	for _, m := range req.Messages {
		fmt.Fprintf(seed, "%d:%s\x00%d:%s\x00", len(m.Role), m.Role, len(m.Content), m.Content)
	}
	// Absent parameters add nothing, so a request without them draws
	// what it always drew.
	if req.Seed != nil {
		fmt.Fprintf(seed, "seed:%d\x00", *req.Seed)
	}
	if req.Temperature != nil {
		fmt.Fprintf(seed, "temperature:%x\x00", math.Float64bits(*req.Temperature))
	}
	if req.TopP != nil {
		fmt.Fprintf(seed, "top_p:%x\x00", math.Float64bits(*req.TopP))
	}
	if req.PresencePenalty != nil {
		fmt.Fprintf(seed, "presence_penalty:%x\x00", math.Float64bits(*req.PresencePenalty))
	}
	if req.FrequencyPenalty != nil {
		fmt.Fprintf(seed, "frequency_penalty:%x\x00", math.Float64bits(*req.FrequencyPenalty))
	}
	state := seed.Sum(nil)
	words := make([]string, 8+int(state[0]%64))
	for i := range words {
		if i%8 == 0 {
			next := sha256.Sum256(state)
			state = next[:]
		}
		words[i] = vocab[binary.BigEndian.Uint32(state[(i%8)*4:])%uint32(len(vocab))]
		if i > 0 {
			words[i] = " " + words[i]
		}
	}
	return words
}

// stopAt cuts words before the first of the stop sequences in their text,
// and reports whether one was found. A word the cut falls in is kept up
// to the cut, and counts as a token.
func stopAt(words []string, stop []string) ([]string, bool) {
	text := strings.Join(words, "")
	at := -1
	for _, s := range stop {
		if i := strings.Index(text, s); i >= 0 && (at < 0 || i < at) {
			at = i
		}
	}
	if at < 0 {
		return words, false
	}
	var out []string
	for _, w := range words {
		if at <= 0 {
			break
		}
		if len(w) > at {
			w = w[:at]
		}
		out = append(out, w)
		at -= len(w)
	}
	return out, true
}
