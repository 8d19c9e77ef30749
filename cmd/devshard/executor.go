package main

import (
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/executor/ndjson"
)

// executorProtocolHelp is the protocol in brief, for --help; docs/workers.md
// has it whole, with an example executor.
const executorProtocolHelp = `An executor is a child process of a worker. It speaks newline-delimited JSON,
one object a line:

  stdout, once, when it can take work:
    {"ready":true,"models":["devshard-test-1"]}
  stdin, one a request:
    {"id":"7","task":{"kind":"inference"|"validation","request":{...},"artifact":"/cache/a1"}}
    {"id":"8","task":{"kind":"prepare","prepare":{"model":"m","source":"","source_sha256":"","out":"/cache/tmp"}}}
  stdout, per request: zero or more pieces, then one output or one error:
    {"id":"7","piece":" the"}
    {"id":"7","output":{"text":"...","usage":{"prompt_tokens":9,"completion_tokens":2},"finish_reason":"stop"}}
    {"id":"7","error":"max_tokens must be positive, got 0","class":"bad_request"}
    {"id":"8","output":{...,"prepared":{"bytes":512,"sha256":"..."}}}

The request is a chat completion (model, messages, max_tokens and OpenAI's
generation parameters), run from the prepared artifact when one is named. A
prepare task writes the model's artifact for this machine at out, after
checking the source's sha256 when both are given. An error's class is
bad_request (the input cannot run), preparation (the model cannot be prepared
here), construction (the artifact cannot be loaded) or execution (the run
failed). Requests run concurrently, so answers of different ids interleave.
Logs go to stderr. Closing stdin asks the executor to finish what it runs and
exit.`

func newExecutorCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "executor",
		Short: "Serve an executor over the worker protocol (NDJSON on stdin/stdout)",
		Long: `executor serves one executor over stdin and stdout, as a worker runs it: a
worker starts it as a child process and sends it jobs.

` + executorProtocolHelp,
	}
	cmd.AddCommand(newExecutorBuiltinCommand(), newExecutorOpenAICommand())
	return cmd
}

func newExecutorBuiltinCommand() *cobra.Command {
	var (
		concurrent int
		think      time.Duration
		features   string
	)
	cmd := &cobra.Command{
		Use:   "builtin",
		Short: "Serve the built-in deterministic model (" + executor.BuiltinModel + ")",
		Long: `builtin serves the built-in deterministic model, ` + executor.BuiltinModel + `,
whose answer is a pure function of the request: for tests and devnets. Its
artifact holds its word table, built for this machine's CPU features;
--cpu-features stands in for another machine, whose artifacts this one
refuses to load (a construction error).

` + executorProtocolHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return serveExecutor(cmd, executor.Builtin{ThinkTime: think, Features: features}, concurrent)
		},
	}
	cmd.Flags().IntVar(&concurrent, "concurrent", 4, "requests run at once")
	cmd.Flags().DurationVar(&think, "think-time", 0, "a pause before each token, to imitate a real model")
	cmd.Flags().StringVar(&features, "cpu-features", "", "the CPU features artifacts are built for and loaded with (default: this machine's, "+executor.CPUFeatures()+")")
	return cmd
}

func newExecutorOpenAICommand() *cobra.Command {
	var (
		url, apiKeyEnv string
		models         []string
		concurrent     int
		timeout        time.Duration
	)
	cmd := &cobra.Command{
		Use:   "openai --url URL [--models m1,m2] [--api-key-env NAME]",
		Short: "Serve an OpenAI-compatible server (vLLM, llama.cpp) as an executor",
		Long: `openai serves the models of an OpenAI-compatible server (vLLM, llama.cpp's
server, anything with a streaming /v1/chat/completions) as an executor. The
API key, if the server needs one, is read from the environment variable
--api-key-env names, so that it never shows in a process list. The server
prepares its own weights, so a prepare task writes only a small marker that
names the model (a preparation error for a model not in --models, when it is
set); a run that names the marker checks it names the request's model.

` + executorProtocolHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if url == "" {
				return fmt.Errorf("--url is required: the server's root, e.g. http://127.0.0.1:8000")
			}
			up := &executor.Upstream{BaseURL: url, ModelNames: models, Client: &http.Client{Timeout: timeout}}
			if apiKeyEnv != "" {
				up.APIKey = os.Getenv(apiKeyEnv)
				if up.APIKey == "" {
					return fmt.Errorf("--api-key-env names %s, which is not set or empty", apiKeyEnv)
				}
			}
			return serveExecutor(cmd, up, concurrent)
		},
	}
	f := cmd.Flags()
	f.StringVar(&url, "url", "", "the server's root URL, e.g. http://127.0.0.1:8000")
	f.StringSliceVar(&models, "models", nil, "the models the server serves, comma-separated")
	f.StringVar(&apiKeyEnv, "api-key-env", "", "the environment variable holding the server's API key")
	f.IntVar(&concurrent, "concurrent", 8, "requests run at once")
	f.DurationVar(&timeout, "timeout", 10*time.Minute, "the longest one request to the server may take")
	return cmd
}

// serveExecutor serves exec on the command's stdin and stdout until stdin
// closes or a signal comes.
func serveExecutor(cmd *cobra.Command, exec executor.Executor, concurrent int) error {
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := ndjson.Serve(ctx, cmd.InOrStdin(), cmd.OutOrStdout(), exec, concurrent)
	if err != nil && ctx.Err() == nil { // a signal is a stop as asked, not a failure
		return fmt.Errorf("executor serving %s: %w", strings.Join(exec.Models(), ", "), err)
	}
	return nil
}
