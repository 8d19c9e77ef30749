package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/internal/settings"
	"github.com/devshard/devshard/keys"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/worker"
)

// workerConfigFile is the config file's name in a worker's home.
const workerConfigFile = "worker.toml"

func newWorkerCommand() *cobra.Command {
	var (
		config string
		debug  bool
	)
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Pull a host's jobs and run them on executor child processes",
		Long: `worker connects to one host's job manager, claims its jobs (inferences and
validations) with a long poll, runs them on its executors and pushes the
results back; an inference's output goes back piece by piece as it comes.
Each job is heartbeated from a goroutine of its own while it runs: a job
whose lease the host takes back stops at once.

Executors are long-lived child processes that speak newline-delimited JSON
(see 'devshard executor --help'). Each has its own environment and temp
directory, its jobs in flight are bounded (concurrent), and work is shared
among the executors that can take a job by weight. A child that dies is
started again with backoff; the jobs it was running are run again on
another executor (an inference only if none of its output was sent yet).

The host must accept the worker: add the account 'worker init' prints to the
host's jobs.workers setting. Set jobs.inference on the host to send it
inferences too.

Config (` + workerConfigFile + `, written commented by 'devshard worker init'):

  [host]
  url         the host's public API, e.g. http://127.0.0.1:8081
  account     the host's account the requests are signed for (default: the host's /version)
  chain_id    the chain the requests are signed for (default: the host's /version)
  key_file    the worker's key, 64 hex characters, mode 0600 (default worker.key)
  temp_dir    where each executor gets a temp directory (default: the system's)
  claim_wait  one long poll's wait, at most 30s (default 25s)
  metrics_listen  where to serve GET /metrics (default: nowhere)

  [cache]     dir (default artifacts), max_bytes (default 10 GiB): prepared artifacts
  [[model]]   name, source, sha256: where a model's weights come from

  [[executor]]
  name           a name for the logs
  bin, args      the program and its arguments
  kinds          inference, validation (default: both)
  models         the models it serves (default: those its ready line lists)
  concurrent     jobs in flight in this child (default 1)
  weight         its share of the work (default 1)
  ready_timeout  how long it may take to print its ready line (default 5s)
  prepare        run models from artifacts it prepares, kept in the cache (default false)
  [executor.envs] extra environment for this child, e.g. CUDA_VISIBLE_DEVICES`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			level := slog.LevelInfo
			if debug {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runWorker(ctx, settings.ExpandHome(config), cmd.OutOrStdout(), log)
		},
	}
	cmd.Flags().StringVar(&config, "config", filepath.Join("~/.devshard/worker", workerConfigFile), "the worker's config file")
	cmd.Flags().BoolVar(&debug, "debug", false, "log at debug level")
	cmd.AddCommand(newWorkerInitCommand())
	return cmd
}

func newWorkerInitCommand() *cobra.Command {
	var home, hostURL string
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Write a commented worker config and a new worker key",
		Long: `init writes ` + workerConfigFile + ` (commented, every key listed) and worker.key (a new
key, mode 0600) into --home, and prints the worker's account: add it to the
host's jobs.workers setting. Existing files are left as they are.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir := settings.ExpandHome(home)
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			bin, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find this binary for the built-in executor: %w", err)
			}
			out := cmd.OutOrStdout()
			conf := filepath.Join(dir, workerConfigFile)
			if _, err := os.Stat(conf); err == nil {
				fmt.Fprintf(out, "%s exists; left as it is\n", conf)
			} else if err := os.WriteFile(conf, []byte(worker.DefaultConfig(hostURL, bin)), 0o600); err != nil {
				return err
			} else {
				fmt.Fprintf(out, "wrote %s\n", conf)
			}
			keyPath := filepath.Join(dir, "worker.key")
			key, err := keys.LoadFile(keyPath)
			if errors.Is(err, os.ErrNotExist) {
				key, err = keys.WriteFile(keyPath, rand.Reader)
				if err == nil {
					fmt.Fprintf(out, "wrote %s\n", keyPath)
				}
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "worker account: %s\nadd it to the host's jobs.workers, then run: devshard worker --config %s\n", key.Address(), conf)
			return nil
		},
	}
	cmd.Flags().StringVar(&home, "home", "~/.devshard/worker", "directory to write the config and key into")
	cmd.Flags().StringVar(&hostURL, "host", "http://127.0.0.1:8081", "the host's public API")
	return cmd
}

// runWorker runs the worker that the config at path describes until ctx
// ends, then prints how many jobs it ran.
func runWorker(ctx context.Context, path string, out io.Writer, log *slog.Logger) error {
	cfg, err := worker.LoadConfig(path)
	if err != nil {
		return err
	}
	key, err := keys.LoadFile(cfg.Path(cfg.KeyFile))
	if err != nil {
		return fmt.Errorf("the worker's key: %w (write one with 'devshard worker init')", err)
	}
	account, chainID, err := hostIdentity(ctx, cfg)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	if cfg.MetricsListen != "" {
		ln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return fmt.Errorf("metrics_listen %q: %w", cfg.MetricsListen, err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		log.Info("metrics served", "url", "http://"+ln.Addr().String()+"/metrics")
	}
	x, err := worker.StartExecutors(ctx, cfg, log, reg)
	if err != nil {
		return fmt.Errorf("no executor could start: %w", err)
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := x.Stop(stopCtx); err != nil {
			log.Warn("stopping the executors", "err", err)
		}
	}()
	w, err := worker.New(worker.Config{
		Host: worker.NewHost(key, chainID, cfg.Host.URL, account), Runner: x, Log: log,
		ClaimWait: time.Duration(cfg.ClaimWait), Registerer: reg,
	})
	if err != nil {
		return err
	}
	log.Info("worker running", "account", key.Address(), "host", cfg.Host.URL, "host_account", account, "chain", chainID,
		"kinds", x.Kinds(), "slots", x.Slots())
	err = w.Run(ctx)
	ran, failed := w.Counts()
	fmt.Fprintf(out, "worker stopped: ran %s; failed %s\n", countList(ran), countList(failed))
	return err
}

// hostIdentity is the host account and chain the worker signs for: the
// config's, or what the host's /version says.
func hostIdentity(ctx context.Context, cfg *worker.FileConfig) (signing.Address, string, error) {
	account, chainID := cfg.Host.Account, cfg.Host.ChainID
	if account == "" || chainID == "" {
		v, err := hostVersion(ctx, cfg.Host.URL)
		if err != nil {
			return signing.Address{}, "", fmt.Errorf("ask the host at %s who it is (or set host.account and host.chain_id): %w", cfg.Host.URL, err)
		}
		if account == "" {
			account = v.Address
		}
		if chainID == "" {
			if v.ChainID == "" {
				return signing.Address{}, "", fmt.Errorf("the host at %s has not reached its chain yet; try again, or set host.chain_id", cfg.Host.URL)
			}
			chainID = v.ChainID
		}
	}
	a, err := parseAccount(account)
	if err != nil {
		return signing.Address{}, "", fmt.Errorf("host.account: %w", err)
	}
	return a, chainID, nil
}

func hostVersion(ctx context.Context, base string) (*hostapi.VersionResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+hostapi.Version.Path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", hostapi.Version.Path, resp.Status)
	}
	var v hostapi.VersionResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&v); err != nil {
		return nil, fmt.Errorf("GET %s: %w", hostapi.Version.Path, err)
	}
	return &v, nil
}

// countList is "inference 3, validation 5", or "none".
func countList(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}
