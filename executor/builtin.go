package executor

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
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
// pure function of the request: the same messages and max_tokens give the
// same words, the same token counts and so the same response hash on every
// host. One word is one token; a prompt costs one token per word plus four
// per message for the chat framing.
type Builtin struct {
	// ThinkTime is a pause before each token, to imitate a real model.
	// Zero (the default) streams as fast as the client reads.
	ThinkTime time.Duration
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

// Execute implements Executor.
func (b Builtin) Execute(ctx context.Context, req Request, emit func(string) error) (Result, error) {
	if err := req.Validate(); err != nil {
		return Result{}, err
	}
	if req.Model != BuiltinModel {
		return Result{}, fmt.Errorf("%w: %q (this executor serves %q)", ErrUnknownModel, req.Model, BuiltinModel)
	}
	seed := sha256.New()
	for _, m := range req.Messages {
		fmt.Fprintf(seed, "%d:%s\x00%d:%s\x00", len(m.Role), m.Role, len(m.Content), m.Content)
	}
	state := seed.Sum(nil)
	// The answer's natural length is 8..71 words; max_tokens cuts it short.
	natural := 8 + int(state[0]%64)
	n, finish := natural, "stop"
	if req.MaxTokens < natural {
		n, finish = req.MaxTokens, "length"
	}
	var text strings.Builder
	for i := range n {
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
		if i%8 == 0 {
			next := sha256.Sum256(state)
			state = next[:]
		}
		word := vocabulary[binary.BigEndian.Uint32(state[(i%8)*4:])%uint32(len(vocabulary))]
		if i > 0 {
			word = " " + word
		}
		text.WriteString(word)
		if err := emit(word); err != nil {
			return Result{}, err
		}
	}
	return Result{
		Text:         text.String(),
		Usage:        Usage{PromptTokens: PromptTokens(req.Messages), CompletionTokens: n},
		FinishReason: finish,
	}, nil
}
