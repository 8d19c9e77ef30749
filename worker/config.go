package worker

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// FileConfig is a worker's config file (docs/workers.md, "Config").
type FileConfig struct {
	Host struct {
		// URL is the host's public API.
		URL string `toml:"url"`
		// Account and ChainID are what the worker signs its requests for;
		// empty: read from the host's /version at start.
		Account string `toml:"account"`
		ChainID string `toml:"chain_id"`
	} `toml:"host"`
	// KeyFile holds the worker's key (64 hex characters, mode 0600),
	// relative to the config file's directory.
	KeyFile string `toml:"key_file"`
	// TempDir is where each executor gets a temp directory of its own;
	// empty: the system's.
	TempDir string `toml:"temp_dir"`
	// ClaimWait is one long poll's wait.
	ClaimWait Duration `toml:"claim_wait"`
	// MetricsListen is where the worker serves GET /metrics (Prometheus);
	// empty: nowhere.
	MetricsListen string `toml:"metrics_listen"`
	// Executors are the child processes that run the jobs.
	Executors []ExecutorConfig `toml:"executor"`
	// Cache is where prepared artifacts are kept (docs/artifacts.md).
	Cache CacheConfig `toml:"cache"`
	// Models name the sources executors prepare their models from.
	Models []ModelConfig `toml:"model"`

	dir string // the config file's directory
}

// CacheConfig is the [cache] block.
type CacheConfig struct {
	// Dir holds each preparing executor's artifacts, under its name and
	// its environment's hash; relative to the config file.
	Dir string `toml:"dir"`
	// MaxBytes bounds each executor's artifacts on disk.
	MaxBytes int64 `toml:"max_bytes"`
}

// ModelConfig is one [[model]] block: where a model's weights come from.
type ModelConfig struct {
	Name   string `toml:"name"`
	Source string `toml:"source"`
	SHA256 string `toml:"sha256"`
}

// ExecutorConfig is one [[executor]] block.
type ExecutorConfig struct {
	Name         string            `toml:"name"`
	Bin          string            `toml:"bin"`
	Args         []string          `toml:"args"`
	Kinds        []string          `toml:"kinds"`
	Models       []string          `toml:"models"`
	Concurrent   int               `toml:"concurrent"`
	Weight       int               `toml:"weight"`
	ReadyTimeout Duration          `toml:"ready_timeout"`
	Envs         map[string]string `toml:"envs"`
	// Prepare: the executor runs its models from artifacts it prepares
	// (the prepare task), kept in the cache and verified before each use.
	Prepare bool `toml:"prepare"`
}

// Duration is a time.Duration written as "5s" in TOML.
type Duration time.Duration

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 5s or 1m30s", b)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// The kinds an executor may take.
var knownKinds = []string{"inference", "validation"}

// LoadConfig reads and checks the config file at path. Unknown keys are
// refused, so a misspelt key is not silently ignored.
func LoadConfig(path string) (*FileConfig, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the worker config: %w (write one with 'devshard worker init')", err)
	}
	var c FileConfig
	dec := toml.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		var sm *toml.StrictMissingError
		if errors.As(err, &sm) {
			return nil, fmt.Errorf("%s: %s", path, strings.TrimSpace(sm.String()))
		}
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			return nil, fmt.Errorf("%s:%d:%d: %v", path, row, col, err)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	c.dir = filepath.Dir(path)
	if err := c.check(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}

// check fills defaults and refuses what cannot run.
func (c *FileConfig) check() error {
	if c.Host.URL == "" {
		return errors.New("host.url is required: the host's public API, such as http://127.0.0.1:8081")
	}
	if c.KeyFile == "" {
		c.KeyFile = "worker.key"
	}
	if c.ClaimWait == 0 {
		c.ClaimWait = Duration(25 * time.Second)
	}
	if c.Cache.Dir == "" {
		c.Cache.Dir = "artifacts"
	}
	if c.Cache.MaxBytes < 0 {
		return errors.New("cache.max_bytes must not be negative")
	}
	models := map[string]bool{}
	for _, m := range c.Models {
		switch {
		case m.Name == "":
			return errors.New("a [[model]] block has no name")
		case models[m.Name]:
			return fmt.Errorf("model %q is listed twice", m.Name)
		case m.SHA256 != "" && m.Source == "":
			return fmt.Errorf("model %q: sha256 without a source", m.Name)
		}
		models[m.Name] = true
	}
	if len(c.Executors) == 0 {
		return errors.New("no [[executor]] block: the worker needs at least one executor")
	}
	names := map[string]bool{}
	for i := range c.Executors {
		x := &c.Executors[i]
		if x.Name == "" {
			x.Name = fmt.Sprintf("executor%d", i)
		}
		where := fmt.Sprintf("executor %q", x.Name)
		switch {
		case names[x.Name]:
			return fmt.Errorf("%s: two executors have that name", where)
		case x.Bin == "":
			return fmt.Errorf("%s: bin is required (a program that speaks the NDJSON protocol, or this binary with args [\"executor\", \"builtin\"])", where)
		case x.Concurrent < 0 || x.Weight < 0:
			return fmt.Errorf("%s: concurrent and weight must not be negative", where)
		}
		names[x.Name] = true
		if x.Concurrent == 0 {
			x.Concurrent = 1
		}
		if x.Weight == 0 {
			x.Weight = 1
		}
		if x.ReadyTimeout == 0 {
			x.ReadyTimeout = Duration(5 * time.Second)
		}
		if len(x.Kinds) == 0 {
			x.Kinds = knownKinds
		}
		for _, k := range x.Kinds {
			if !contains(knownKinds, k) {
				return fmt.Errorf("%s: kind %q is not one of %s", where, k, strings.Join(knownKinds, ", "))
			}
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Program is the program an executor's bin names: a bare name (no
// slash) is looked up in PATH when it starts, as a shell would; a
// relative path is resolved against the config file's directory.
func (c *FileConfig) Program(bin string) string {
	if !strings.ContainsRune(bin, filepath.Separator) {
		return bin
	}
	return c.Path(bin)
}

// Path resolves p against the config file's directory.
func (c *FileConfig) Path(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.dir, p)
}

// DefaultConfig is the commented config `devshard worker init` writes:
// one built-in executor, run by bin (this binary).
func DefaultConfig(hostURL, bin string) string {
	return fmt.Sprintf(`# devshard worker configuration (docs/workers.md).
# Every key is listed; the ones commented out show their defaults.

# The worker's key (64 hex characters, mode 0600), relative to this file.
key_file = "worker.key"

# Where each executor gets a temp directory of its own (passed as TMPDIR);
# empty: the system's temp directory.
# temp_dir = ""

# How long one claim waits for a job (the long poll), at most 30s.
# claim_wait = "25s"

# Where to serve GET /metrics for Prometheus (the worker's jobs and its
# artifact caches); empty: nowhere.
# metrics_listen = "127.0.0.1:9464"

[host]
# The public API of the host whose jobs this worker runs. The host must list
# this worker's account in its jobs.workers setting.
url = %q
# The host's account and chain, which every request is signed for; empty:
# read from the host's /version at start.
# account = ""
# chain_id = ""

# Each [[executor]] is a long-lived child process speaking newline-delimited
# JSON on stdin and stdout (docs/workers.md, "The executor protocol").
[[executor]]
name = "builtin"
# The program and its arguments. This one is devshard's built-in
# deterministic model; 'devshard executor openai --url URL --models M'
# bridges to an OpenAI-compatible server such as vLLM.
bin = %q
args = ["executor", "builtin"]
# The job kinds (inference, validation) and models it takes; no models: any.
kinds = ["inference", "validation"]
models = []
# Jobs in flight in this child at once.
concurrent = 2
# Its share of the jobs among the executors that could take one.
weight = 1
# It must print its ready line within this long after it starts.
ready_timeout = "5s"
# Prepare each model once into an artifact (the prepare task), kept in the
# cache below and verified before every use.
prepare = true
# Extra environment for this child only, e.g. one GPU each.
[executor.envs]
# CUDA_VISIBLE_DEVICES = "0"

# Prepared artifacts, per executor, under a directory named by the hash of
# the environment they were prepared in (binaries, CPU features, kernel).
[cache]
# dir = "artifacts"           # relative to this file
# max_bytes = 10737418240     # each executor's bound; 0: 10 GiB

# Where a model's weights come from, for executors that prepare it.
# [[model]]
# name = "llama-3-8b"
# source = "/models/llama-3-8b.safetensors"
# sha256 = "..."
`, hostURL, bin)
}
