package executor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/devshard/devshard/internal/sse"
)

// Upstream runs requests on an OpenAI-compatible server (vLLM, llama.cpp's
// server, or anything speaking /v1/chat/completions with streaming).
type Upstream struct {
	// BaseURL is the server's root, e.g. http://127.0.0.1:8000.
	BaseURL string
	// ModelNames are the models the server is expected to serve.
	ModelNames []string
	// APIKey is sent as a bearer token when set.
	APIKey string
	// Client defaults to http.DefaultClient; set one with timeouts.
	Client *http.Client
}

// Models implements Executor.
func (u *Upstream) Models() []string { return u.ModelNames }

type upstreamRequest struct {
	Model            string          `json:"model"`
	Messages         []Message       `json:"messages"`
	MaxTokens        int             `json:"max_tokens"`
	Stream           bool            `json:"stream"`
	StreamOptions    map[string]any  `json:"stream_options"`
	Temperature      float64         `json:"temperature"`
	TopP             *float64        `json:"top_p,omitempty"`
	PresencePenalty  *float64        `json:"presence_penalty,omitempty"`
	FrequencyPenalty *float64        `json:"frequency_penalty,omitempty"`
	Seed             *int64          `json:"seed,omitempty"`
	Stop             []string        `json:"stop,omitempty"`
	ResponseFormat   json.RawMessage `json:"response_format,omitempty"`
	LogitBias        json.RawMessage `json:"logit_bias,omitempty"`
}

type upstreamChunk struct {
	Choices []struct {
		Delta struct {
			Content string `json:"content"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *Usage `json:"usage"`
	// Error is how OpenAI-style servers (vLLM among them) fail a stream
	// that has begun: a chunk with an error and no choices.
	Error *struct {
		Message string `json:"message"`
	} `json:"error"`
}

// Execute implements Executor. It forwards the request's parameters; a
// request that sets no temperature is asked greedy decoding (temperature
// 0), so that a validator's re-run can match it. It asks for usage in the
// final stream chunk, which the session charges.
func (u *Upstream) Execute(ctx context.Context, req Request, emit func(string) error) (Result, error) {
	if err := req.Validate(); err != nil {
		return Result{}, err
	}
	ur := upstreamRequest{
		Model: req.Model, Messages: req.Messages, MaxTokens: req.MaxTokens, Stream: true,
		StreamOptions: map[string]any{"include_usage": true},
		TopP:          req.TopP, PresencePenalty: req.PresencePenalty, FrequencyPenalty: req.FrequencyPenalty,
		Seed: req.Seed, Stop: req.Stop, ResponseFormat: req.ResponseFormat, LogitBias: req.LogitBias,
	}
	if req.Temperature != nil {
		ur.Temperature = *req.Temperature
	}
	body, err := json.Marshal(ur)
	if err != nil {
		return Result{}, err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(u.BaseURL, "/")+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		return Result{}, fmt.Errorf("%w: %v", ErrUpstream, err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", "text/event-stream")
	if u.APIKey != "" {
		hreq.Header.Set("Authorization", "Bearer "+u.APIKey)
	}
	client := u.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(hreq)
	if err != nil {
		return Result{}, fmt.Errorf("%w: %s: %v", ErrUpstream, u.BaseURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusBadRequest {
			return Result{}, fmt.Errorf("%w: upstream answered %d: %s", ErrBadRequest, resp.StatusCode, bytes.TrimSpace(msg))
		}
		return Result{}, fmt.Errorf("%w: upstream answered %d: %s", ErrUpstream, resp.StatusCode, bytes.TrimSpace(msg))
	}
	return readStream(resp.Body, emit)
}

// maxStreamLine bounds one line of an upstream's stream: a chunk carries a
// few tokens.
const maxStreamLine = 1 << 20

// readStream reads server-sent events until [DONE]. An upstream that fails
// mid-stream, with an "error" event or an error chunk, fails the run with
// its message: the text so far is not a whole answer.
func readStream(r io.Reader, emit func(string) error) (Result, error) {
	var res Result
	var text strings.Builder
	events := sse.NewReader(r, maxStreamLine)
	for {
		ev, err := events.Next()
		var failed *sse.Error
		switch {
		case errors.As(err, &failed):
			return Result{}, fmt.Errorf("%w: the server failed mid-stream: %s", ErrUpstream, failed.Message)
		case errors.Is(err, io.EOF):
			return Result{}, fmt.Errorf("%w: the stream ended without [DONE]", ErrUpstream)
		case err != nil:
			return Result{}, fmt.Errorf("%w: reading the stream: %v", ErrUpstream, err)
		}
		data := strings.TrimSpace(ev.Data)
		if data == "[DONE]" {
			res.Text = text.String()
			if res.Usage.CompletionTokens == 0 && res.Text != "" {
				return Result{}, fmt.Errorf("%w: the stream carried no usage; enable stream_options.include_usage on the server", ErrUpstream)
			}
			return res, nil
		}
		var c upstreamChunk
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			return Result{}, fmt.Errorf("%w: malformed stream chunk: %v", ErrUpstream, err)
		}
		if c.Error != nil {
			return Result{}, fmt.Errorf("%w: the server failed mid-stream: %s", ErrUpstream, c.Error.Message)
		}
		for _, ch := range c.Choices {
			if ch.Delta.Content != "" {
				text.WriteString(ch.Delta.Content)
				if err := emit(ch.Delta.Content); err != nil {
					return Result{}, err
				}
			}
			if ch.FinishReason != nil {
				res.FinishReason = *ch.FinishReason
			}
		}
		if c.Usage != nil {
			res.Usage = *c.Usage
		}
	}
}

// Prepare implements Preparer. The server prepares its own weights, so
// the artifact is only a marker that names the model and fits any
// machine; preparing it keeps the worker's path the same for every
// executor. A model the server is not listed as serving cannot be
// prepared.
func (u *Upstream) Prepare(ctx context.Context, p Preparation) (Prepared, error) {
	if len(u.ModelNames) > 0 && !slices.Contains(u.ModelNames, p.Model) {
		return Prepared{}, fmt.Errorf("%w: model %q cannot be prepared here; the server serves %s", ErrPreparation, p.Model, strings.Join(u.ModelNames, ", "))
	}
	if err := ctx.Err(); err != nil {
		return Prepared{}, err
	}
	return WriteArtifact(p.Out, &Artifact{Model: p.Model})
}

// Load implements Preparer: the marker must name model; the server runs
// it.
func (u *Upstream) Load(model, path string) (Executor, error) {
	if _, err := ReadArtifact(path, model, ""); err != nil {
		return nil, err
	}
	return u, nil
}
