package devnet

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
)

// openAIResult is the JSON line testdata/openai-client/client.mjs prints.
type openAIResult struct {
	Models      []string    `json:"models"`
	Retrieved   string      `json:"retrieved"`
	StreamText  string      `json:"stream_text"`
	StreamUsage openAIUsage `json:"stream_usage"`
	Text        string      `json:"text"`
	Usage       openAIUsage `json:"usage"`
	RequestID   string      `json:"request_id"`
	Seeded      struct {
		Text      string      `json:"text"`
		Usage     openAIUsage `json:"usage"`
		RequestID string      `json:"request_id"`
	} `json:"seeded"`
	Refused struct {
		Status    int    `json:"status"`
		Param     string `json:"param"`
		Type      string `json:"type"`
		RequestID string `json:"request_id"`
	} `json:"refused"`
}

// tokens is what the client's answered completions used, all told.
func (r openAIResult) tokens() int {
	return r.StreamUsage.TotalTokens + r.Usage.TotalTokens + r.Seeded.Usage.TotalTokens
}

// checkProtocol checks what the client saw of the gateway's honour-or-
// refuse contract: the model retrieved, the seeded answer the built-in
// model's for the request with its seed, the refusal of tools by name, and
// a request id on every answer.
func (r openAIResult) checkProtocol(t *testing.T) {
	t.Helper()
	require.Equal(t, executor.BuiltinModel, r.Retrieved)
	seed := int64(7)
	want, err := executor.Builtin{}.Execute(context.Background(), executor.Request{Model: executor.BuiltinModel, MaxTokens: 24, Seed: &seed,
		Stop:     []string{"never in a devshard answer"},
		Messages: []executor.Message{{Role: "user", Content: "Say something about seeds."}}}, func(string) error { return nil })
	require.NoError(t, err)
	require.Equal(t, want.Text, r.Seeded.Text, "the seed reached the executor")
	require.Equal(t, "devnet-openai-seeded", r.Seeded.RequestID)
	require.Equal(t, "invalid_request_error", r.Refused.Type)
	require.Equal(t, 400, r.Refused.Status)
	require.Equal(t, "tools", r.Refused.Param)
	require.NotEmpty(t, r.Refused.RequestID)
	require.NotEmpty(t, r.RequestID)
}

// openAIUsage is the usage object of an OpenAI chat completion.
type openAIUsage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// runOpenAIClient drives the gateway at gatewayURL with the official openai
// npm package (see testdata/openai-client) and returns what the client saw.
// It installs the package into a fresh copy of the client, so it needs node,
// npm and the npm registry; a missing tool fails the test rather than
// skipping it, because a skipped client test hides a broken gateway.
func runOpenAIClient(t *testing.T, gatewayURL, apiKey string) openAIResult {
	t.Helper()
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the OpenAI client test needs %s on PATH (Debian: apt-get install nodejs npm): %v", tool, err)
		}
	}

	dir := t.TempDir()
	require.NoError(t, os.CopyFS(dir, os.DirFS(filepath.Join("testdata", "openai-client"))))

	installCtx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// npm ci installs exactly what package-lock.json pins, and fails if
	// the lock and package.json disagree.
	install := exec.CommandContext(installCtx, "npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
	install.Dir = dir
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
	}

	runCtx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	client := exec.CommandContext(runCtx, "node", "client.mjs")
	client.Dir = dir
	client.Env = append(os.Environ(),
		"OPENAI_BASE_URL="+strings.TrimSuffix(gatewayURL, "/")+"/v1",
		"OPENAI_API_KEY="+apiKey,
	)
	var stdout, stderr bytes.Buffer
	client.Stdout, client.Stderr = &stdout, &stderr
	if err := client.Run(); err != nil {
		t.Fatalf("node client.mjs against %s: %v\nstderr:\n%s\nstdout:\n%s", gatewayURL, err, stderr.String(), stdout.String())
	}

	var res openAIResult
	require.NoError(t, json.Unmarshal(bytes.TrimSpace(stdout.Bytes()), &res),
		"client.mjs printed %q, want one JSON line", stdout.String())
	return res
}
