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
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

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

	// The generation parameters, named as OpenAI names them; nil when the
	// app did not set one, and then the executor's default applies. Each
	// one set is committed to by the prompt hash, so a validator re-runs
	// the request with it.
	Temperature      *float64 `json:"temperature,omitempty"`
	TopP             *float64 `json:"top_p,omitempty"`
	PresencePenalty  *float64 `json:"presence_penalty,omitempty"`
	FrequencyPenalty *float64 `json:"frequency_penalty,omitempty"`
	Seed             *int64   `json:"seed,omitempty"`
	// Stop holds up to maxStop sequences; the answer ends before the
	// first of them.
	Stop []string `json:"stop,omitempty"`
	// ResponseFormat is OpenAI's response_format object, as JSON.
	ResponseFormat json.RawMessage `json:"response_format,omitempty"`
	// LogitBias is OpenAI's logit_bias object, token id to bias, as JSON.
	LogitBias json.RawMessage `json:"logit_bias,omitempty"`
}

// maxStop is how many stop sequences a request may carry, as at OpenAI.
const maxStop = 4

// Validate checks what every executor needs of a request, and that the
// executor serving its model honours every parameter it sets
// (CheckParams).
func (r *Request) Validate() error {
	switch {
	case r.Model == "":
		return fmt.Errorf("%w: model is required", ErrBadRequest)
	case len(r.Messages) == 0:
		return fmt.Errorf("%w: at least one message is required", ErrBadRequest)
	case r.MaxTokens <= 0:
		return fmt.Errorf("%w: max_tokens must be positive, got %d", ErrBadRequest, r.MaxTokens)
	}
	return r.CheckParams()
}

// ParamError is a request parameter that cannot be run as asked: out of
// its range, or not honoured by the executor that serves the model. It
// wraps ErrBadRequest.
type ParamError struct {
	Param  string // OpenAI's name for it, e.g. "response_format"
	Reason string
}

func (e *ParamError) Error() string { return e.Param + ": " + e.Reason }
func (e *ParamError) Unwrap() error { return ErrBadRequest }

// CheckParams refuses a parameter out of its range, or one the model's
// executor does not honour. The built-in model (BuiltinModel) is served by
// Builtin, which honours seed, stop, temperature, top_p and the penalties
// but answers only in text and has no tokenizer to bias; every other model
// is served by an OpenAI-compatible upstream, which honours them all.
func (r *Request) CheckParams() error {
	for _, p := range []struct {
		name string
		v    *float64
	}{{"presence_penalty", r.PresencePenalty}, {"frequency_penalty", r.FrequencyPenalty}} {
		if p.v != nil && !(*p.v >= -2 && *p.v <= 2) {
			return &ParamError{p.name, fmt.Sprintf("must be between -2 and 2, got %g", *p.v)}
		}
	}
	if len(r.LogitBias) > 0 {
		var bias map[string]float64
		if err := json.Unmarshal(r.LogitBias, &bias); err != nil {
			return &ParamError{"logit_bias", "must be an object of token ids to numbers: " + err.Error()}
		}
		if r.Model == BuiltinModel && len(bias) > 0 {
			return &ParamError{"logit_bias", fmt.Sprintf("the model %s has no tokenizer whose tokens could be biased", BuiltinModel)}
		}
	}
	if t := r.Temperature; t != nil && !(*t >= 0 && *t <= 2) {
		return &ParamError{"temperature", fmt.Sprintf("must be between 0 and 2, got %g", *t)}
	}
	if p := r.TopP; p != nil && !(*p > 0 && *p <= 1) {
		return &ParamError{"top_p", fmt.Sprintf("must be above 0 and at most 1, got %g", *p)}
	}
	if len(r.Stop) > maxStop {
		return &ParamError{"stop", fmt.Sprintf("holds %d sequences; at most %d are allowed", len(r.Stop), maxStop)}
	}
	for i, s := range r.Stop {
		if s == "" {
			return &ParamError{"stop", fmt.Sprintf("sequence %d is empty", i)}
		}
	}
	if len(r.ResponseFormat) > 0 {
		var f struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(r.ResponseFormat, &f); err != nil {
			return &ParamError{"response_format", "must be an object with a type: " + err.Error()}
		}
		switch f.Type {
		case "text", "json_object", "json_schema":
		default:
			return &ParamError{"response_format", fmt.Sprintf("type must be text, json_object or json_schema, got %q", f.Type)}
		}
		if r.Model == BuiltinModel && f.Type != "text" {
			return &ParamError{"response_format", fmt.Sprintf("the model %s answers only in text; it cannot honour %q", BuiltinModel, f.Type)}
		}
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
	return session.PromptHash(r.Model, uint64(r.MaxTokens), msgs, r.promptParams()...)
}

// promptParams are the parameters r sets, valued as docs/protocol.md
// ("Prompt hash") has it.
func (r *Request) promptParams() []session.PromptParam {
	var out []session.PromptParam
	number := func(name string, v any) {
		b, _ := json.Marshal(v) // a float64 fails only if NaN or infinite, which CheckParams refuses
		out = append(out, session.PromptParam{Name: name, Value: b})
	}
	if r.Temperature != nil {
		number("temperature", *r.Temperature)
	}
	if r.TopP != nil {
		number("top_p", *r.TopP)
	}
	if r.PresencePenalty != nil {
		number("presence_penalty", *r.PresencePenalty)
	}
	if r.FrequencyPenalty != nil {
		number("frequency_penalty", *r.FrequencyPenalty)
	}
	if r.Seed != nil {
		out = append(out, session.PromptParam{Name: "seed", Value: []byte(strconv.FormatInt(*r.Seed, 10))})
	}
	if len(r.Stop) > 0 {
		b, _ := json.Marshal(r.Stop)
		out = append(out, session.PromptParam{Name: "stop", Value: canonical(b)})
	}
	if len(r.LogitBias) > 0 {
		out = append(out, session.PromptParam{Name: "logit_bias", Value: canonical(r.LogitBias)})
	}
	if len(r.ResponseFormat) > 0 {
		out = append(out, session.PromptParam{Name: "response_format", Value: canonical(r.ResponseFormat)})
	}
	return out
}

// canonical is raw in canonical JSON; raw itself if it is not JSON, which
// Validate refuses, so such a request never runs whatever it hashes to.
func canonical(raw []byte) []byte {
	if c, err := session.CanonicalJSON(raw); err == nil {
		return c
	}
	return raw
}
