package devnet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/internal/sse"
)

// Client calls a gateway's chat completions API, the way an app would, for
// the demo and the end-to-end tests.
type Client struct {
	URL, Key string
	HTTP     *http.Client
	// OnText, if set, sees each piece of a streamed answer as it arrives.
	OnText func(text string)
}

// NewClient returns a client for the gateway at url.
func NewClient(url, key string) *Client { return &Client{URL: url, Key: key, HTTP: http.DefaultClient} }

// ChatRequest is a chat completion request.
type ChatRequest struct {
	Model     string             `json:"model"`
	Messages  []executor.Message `json:"messages"`
	MaxTokens int                `json:"max_tokens,omitempty"`
}

// ChatResult is an answer: the text and the usage the gateway reported.
type ChatResult struct {
	Text             string
	PromptTokens     int
	CompletionTokens int
	FinishReason     string
}

// APIError is a gateway error answer.
type APIError struct {
	Status  int
	Type    string
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("gateway answered %d (%s %s): %s", e.Status, e.Type, e.Code, e.Message)
}

// Chat sends one request, streamed or not.
func (c *Client) Chat(ctx context.Context, req ChatRequest, stream bool) (*ChatResult, error) {
	body := map[string]any{"model": req.Model, "messages": req.Messages, "stream": stream}
	if req.MaxTokens > 0 {
		body["max_tokens"] = req.MaxTokens
	}
	if stream {
		body["stream_options"] = map[string]bool{"include_usage": true}
	}
	raw, _ := json.Marshal(body)
	return c.Post(ctx, raw, stream)
}

// Post sends a raw request body.
func (c *Client) Post(ctx context.Context, body []byte, stream bool) (*ChatResult, error) {
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.URL+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	if c.Key != "" {
		hreq.Header.Set("Authorization", "Bearer "+c.Key)
	}
	resp, err := c.HTTP.Do(hreq)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, readAPIError(resp)
	}
	if !stream {
		var out struct {
			Choices []struct {
				Message      executor.Message `json:"message"`
				FinishReason string           `json:"finish_reason"`
			} `json:"choices"`
			Usage struct {
				PromptTokens     int `json:"prompt_tokens"`
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			return nil, err
		}
		if len(out.Choices) != 1 {
			return nil, fmt.Errorf("answer has %d choices, want 1", len(out.Choices))
		}
		return &ChatResult{Text: out.Choices[0].Message.Content, FinishReason: out.Choices[0].FinishReason,
			PromptTokens: out.Usage.PromptTokens, CompletionTokens: out.Usage.CompletionTokens}, nil
	}
	return c.readStream(resp.Body)
}

// maxStreamLine bounds one line of a gateway's chat stream.
const maxStreamLine = 1 << 20

// readStream reads a chat stream's chunks until [DONE]. An error, as an
// error chunk or an "error" event, is an *APIError.
func (c *Client) readStream(r io.Reader) (*ChatResult, error) {
	res := &ChatResult{}
	var text strings.Builder
	events := sse.NewReader(r, maxStreamLine)
	for {
		ev, err := events.Next()
		var failed *sse.Error
		switch {
		case errors.As(err, &failed):
			return nil, &APIError{Status: http.StatusOK, Message: failed.Message}
		case err != nil:
			return nil, fmt.Errorf("stream ended without [DONE]: %w", err)
		}
		if ev.Data == "[DONE]" {
			res.Text = text.String()
			return res, nil
		}
		var chunk struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
				FinishReason *string `json:"finish_reason"`
			} `json:"choices"`
			Usage *struct {
				PromptTokens     int `json:"prompt_tokens"`
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
			Error *struct {
				Message string `json:"message"`
				Type    string `json:"type"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(ev.Data), &chunk); err != nil {
			return nil, fmt.Errorf("undecodable stream chunk %q: %w", ev.Data, err)
		}
		if chunk.Error != nil {
			return nil, &APIError{Status: http.StatusOK, Type: chunk.Error.Type, Message: chunk.Error.Message}
		}
		for _, ch := range chunk.Choices {
			text.WriteString(ch.Delta.Content)
			if c.OnText != nil && ch.Delta.Content != "" {
				c.OnText(ch.Delta.Content)
			}
			if ch.FinishReason != nil {
				res.FinishReason = *ch.FinishReason
			}
		}
		if chunk.Usage != nil {
			res.PromptTokens, res.CompletionTokens = chunk.Usage.PromptTokens, chunk.Usage.CompletionTokens
		}
	}
}

func readAPIError(resp *http.Response) error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e struct {
		Error struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Code    *string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(raw, &e); err != nil {
		return &APIError{Status: resp.StatusCode, Message: strings.TrimSpace(string(raw))}
	}
	ae := &APIError{Status: resp.StatusCode, Type: e.Error.Type, Message: e.Error.Message}
	if e.Error.Code != nil {
		ae.Code = *e.Error.Code
	}
	return ae
}
