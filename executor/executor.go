// Package executor runs inference requests for a host. An Executor takes one
// chat completion request and streams its output; the host wraps the result
// in FinishInference, and validators re-run requests through their own
// executors to compare.
//
// Two executors live here: a built-in deterministic model, whose output and
// token counts are a pure function of the request (so validation can compare
// exactly and tests are reproducible), and an OpenAI-compatible HTTP
// upstream such as vLLM or llama.cpp. The job plane's worker executors plug
// in behind the same interface.
package executor

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/devshard/devshard/session"
)

// Message is one chat message.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Request is one chat completion to run.
type Request struct {
	Model     string    `json:"model"`
	Messages  []Message `json:"messages"`
	MaxTokens int       `json:"max_tokens"`
}

// Validate checks what every executor needs of a request.
func (r *Request) Validate() error {
	switch {
	case r.Model == "":
		return fmt.Errorf("%w: model is required", ErrBadRequest)
	case len(r.Messages) == 0:
		return fmt.Errorf("%w: at least one message is required", ErrBadRequest)
	case r.MaxTokens <= 0:
		return fmt.Errorf("%w: max_tokens must be positive, got %d", ErrBadRequest, r.MaxTokens)
	}
	return nil
}

// Usage counts tokens the way the session charges them.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
}

// Result is a finished completion.
type Result struct {
	Text         string
	Usage        Usage
	FinishReason string // "stop" or "length"
}

// ResponseHash is the hash FinishInference commits to: SHA-256 of the text.
func (r *Result) ResponseHash() [32]byte { return sha256.Sum256([]byte(r.Text)) }

// Executor runs requests. Execute calls emit with each piece of text as it is
// produced, in order, and returns the whole result. An error from emit (the
// client went away) stops the run and is returned.
type Executor interface {
	Execute(ctx context.Context, req Request, emit func(text string) error) (Result, error)
	// Models lists the model names this executor serves.
	Models() []string
}

// Errors callers tell apart.
var (
	// ErrBadRequest is a request no executor can run; the caller's fault.
	ErrBadRequest = errors.New("bad request")
	// ErrUnknownModel is a model this executor does not serve.
	ErrUnknownModel = errors.New("unknown model")
	// ErrUpstream is a failure of the model server behind the executor.
	ErrUpstream = errors.New("upstream failure")
)

// PromptHash is the hash StartInference commits to (session.PromptHash,
// which owns the byte layout). The gateway computes it when it starts an
// inference; the executor and validators recompute it from the request.
func (r *Request) PromptHash() [32]byte {
	msgs := make([]session.PromptMessage, len(r.Messages))
	for i, m := range r.Messages {
		msgs[i] = session.PromptMessage(m)
	}
	return session.PromptHash(r.Model, uint64(r.MaxTokens), msgs)
}
