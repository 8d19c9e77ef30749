package host

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// FileConfig is the host daemon's configuration. It is read from a TOML
// file, then overridden by DEVSHARD_HOST_* environment variables, then by
// flags. Every field is listed, with its variable and meaning, in Settings.
type FileConfig struct {
	Listen  string `toml:"listen"`
	Home    string `toml:"home"`
	Version string `toml:"-"`

	Key struct {
		File           string `toml:"file"`
		KeyringBackend string `toml:"keyring_backend"`
		KeyringDir     string `toml:"keyring_dir"`
		KeyName        string `toml:"key_name"`
		Account        string `toml:"account"`
	} `toml:"key"`

	Chain struct {
		RPC  string `toml:"rpc"`
		GRPC string `toml:"grpc"`
	} `toml:"chain"`

	Storage struct {
		Driver        string `toml:"driver"`
		Dir           string `toml:"dir"`
		Synchronous   string `toml:"synchronous"`
		KeepEpochs    int    `toml:"keep_epochs"`
		SnapshotEvery uint64 `toml:"snapshot_every"`
		CatchUp       string `toml:"prune_catch_up"`
	} `toml:"storage"`

	Executor struct {
		Kind   string   `toml:"kind"`
		URL    string   `toml:"url"`
		Models []string `toml:"models"`
		APIKey string   `toml:"api_key"`
		// ThinkTime is the built-in model's pause per token.
		ThinkTime string `toml:"think_time"`
	} `toml:"executor"`

	Recovery struct {
		Workers int `toml:"workers"`
	} `toml:"recovery"`
}

// Setting documents one configuration field.
type Setting struct {
	Key, Env, Default, Help string
	set                     func(c *FileConfig, v string) error
}

// Settings lists every setting, in the order --help and docs/host.md show
// them.
var Settings = []Setting{
	{"listen", "DEVSHARD_HOST_LISTEN", "127.0.0.1:8081", "address the HTTP API binds, first thing at startup", func(c *FileConfig, v string) error { c.Listen = v; return nil }},
	{"home", "DEVSHARD_HOST_HOME", "~/.devshard/host", "directory for storage and keys; relative paths below resolve against it", func(c *FileConfig, v string) error { c.Home = v; return nil }},
	{"key.file", "DEVSHARD_HOST_KEY_FILE", "host.key", "file holding the signing key as 64 hex characters (mode 0600); used when keyring_backend is empty", func(c *FileConfig, v string) error { c.Key.File = v; return nil }},
	{"key.keyring_backend", "DEVSHARD_HOST_KEYRING_BACKEND", "", "Cosmos keyring backend (file, test, os) to take the key from instead of key.file", func(c *FileConfig, v string) error { c.Key.KeyringBackend = v; return nil }},
	{"key.keyring_dir", "DEVSHARD_HOST_KEYRING_DIR", "", "keyring directory (default: home)", func(c *FileConfig, v string) error { c.Key.KeyringDir = v; return nil }},
	{"key.key_name", "DEVSHARD_HOST_KEY_NAME", "host", "name of the key in the keyring", func(c *FileConfig, v string) error { c.Key.KeyName = v; return nil }},
	{"key.account", "DEVSHARD_HOST_ACCOUNT", "", "participant account (hex or bech32) the key signs for, when it is a warm key granted through x/authz; empty: the key's own account", func(c *FileConfig, v string) error { c.Key.Account = v; return nil }},
	{"chain.rpc", "DEVSHARD_HOST_CHAIN_RPC", "http://127.0.0.1:26657", "CometBFT RPC of a chain node: blocks and epoch changes", func(c *FileConfig, v string) error { c.Chain.RPC = v; return nil }},
	{"chain.grpc", "DEVSHARD_HOST_CHAIN_GRPC", "127.0.0.1:9090", "gRPC of a chain node: escrows, params, grants", func(c *FileConfig, v string) error { c.Chain.GRPC = v; return nil }},
	{"storage.driver", "DEVSHARD_HOST_STORAGE", "sqlite", "sqlite, postgres or hybrid; postgres is chosen when PGHOST is set and this is left at its default", func(c *FileConfig, v string) error { c.Storage.Driver = v; return nil }},
	{"storage.dir", "DEVSHARD_HOST_STORAGE_DIR", "data", "SQLite directory: _meta.db plus one epoch_<N>.db per epoch", func(c *FileConfig, v string) error { c.Storage.Dir = v; return nil }},
	{"storage.synchronous", "DEVSHARD_HOST_SQLITE_SYNCHRONOUS", "FULL", "SQLite durability: FULL (fsync every commit) or NORMAL (survives a process crash, not power loss)", func(c *FileConfig, v string) error { c.Storage.Synchronous = v; return nil }},
	{"storage.keep_epochs", "DEVSHARD_HOST_KEEP_EPOCHS", "3", "epochs of sessions kept; older epochs are pruned when the chain's epoch changes", func(c *FileConfig, v string) error { return setInt(&c.Storage.KeepEpochs, v) }},
	{"storage.snapshot_every", "DEVSHARD_HOST_SNAPSHOT_EVERY", "500", "K: a session snapshot every K nonces and at settlement; recovery replays at most K diffs", func(c *FileConfig, v string) error { return setUint(&c.Storage.SnapshotEvery, v) }},
	{"storage.prune_catch_up", "DEVSHARD_HOST_PRUNE_CATCH_UP", "30s", "how often a quiet host checks for epochs to prune", func(c *FileConfig, v string) error { c.Storage.CatchUp = v; return nil }},
	{"executor.kind", "DEVSHARD_HOST_EXECUTOR", "builtin", "builtin (deterministic test model) or openai (an OpenAI-compatible server such as vLLM)", func(c *FileConfig, v string) error { c.Executor.Kind = v; return nil }},
	{"executor.url", "DEVSHARD_HOST_EXECUTOR_URL", "", "base URL of the OpenAI-compatible server (openai only)", func(c *FileConfig, v string) error { c.Executor.URL = v; return nil }},
	{"executor.models", "DEVSHARD_HOST_EXECUTOR_MODELS", "", "comma-separated models the server serves (openai only)", func(c *FileConfig, v string) error { c.Executor.Models = splitList(v); return nil }},
	{"executor.think_time", "DEVSHARD_HOST_THINK_TIME", "0s", "pause per token of the built-in model, to imitate a real one (builtin only)", func(c *FileConfig, v string) error { c.Executor.ThinkTime = v; return nil }},
	{"executor.api_key", "DEVSHARD_HOST_EXECUTOR_API_KEY", "", "bearer token for the server (openai only)", func(c *FileConfig, v string) error { c.Executor.APIKey = v; return nil }},
	{"recovery.workers", "DEVSHARD_HOST_RECOVERY_WORKERS", "4", "parallel workers recovering sessions at startup", func(c *FileConfig, v string) error { return setInt(&c.Recovery.Workers, v) }},
}

func setInt(p *int, v string) error {
	n, err := strconv.Atoi(v)
	if err != nil {
		return fmt.Errorf("%q is not a whole number", v)
	}
	*p = n
	return nil
}

func setUint(p *uint64, v string) error {
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return fmt.Errorf("%q is not a non-negative whole number", v)
	}
	*p = n
	return nil
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// DefaultConfig is the configuration with every default applied.
func DefaultConfig() *FileConfig {
	c := &FileConfig{}
	for _, s := range Settings {
		if err := s.set(c, s.Default); err != nil {
			panic(fmt.Sprintf("default of %s: %v", s.Key, err))
		}
	}
	return c
}

// LoadConfig reads defaults, then the TOML file at path (if path is not
// empty), then the environment, then overrides (setting key → value, from
// flags). It validates the result.
func LoadConfig(path string, environ func(string) (string, bool), overrides map[string]string) (*FileConfig, error) {
	c := DefaultConfig()
	if path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		dec := toml.NewDecoder(strings.NewReader(string(raw)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(c); err != nil {
			var strict *toml.StrictMissingError
			if errors.As(err, &strict) {
				return nil, fmt.Errorf("config %s has unknown settings:\n%s", path, strict.String())
			}
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
	}
	for _, s := range Settings {
		if v, ok := environ(s.Env); ok {
			if err := s.set(c, v); err != nil {
				return nil, fmt.Errorf("environment %s: %w", s.Env, err)
			}
		}
	}
	for key, v := range overrides {
		s, ok := settingByKey(key)
		if !ok {
			return nil, fmt.Errorf("unknown setting %q", key)
		}
		if err := s.set(c, v); err != nil {
			return nil, fmt.Errorf("flag for %s: %w", key, err)
		}
	}
	if c.Storage.Driver == "sqlite" {
		if _, ok := environ("PGHOST"); ok {
			if _, explicit := environ("DEVSHARD_HOST_STORAGE"); !explicit && overrides["storage.driver"] == "" {
				c.Storage.Driver = "postgres"
			}
		}
	}
	return c, c.validate()
}

func settingByKey(key string) (Setting, bool) {
	for _, s := range Settings {
		if s.Key == key {
			return s, true
		}
	}
	return Setting{}, false
}

func (c *FileConfig) validate() error {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("listen %q is not host:port: %v", c.Listen, err)
	}
	switch c.Storage.Driver {
	case "sqlite", "postgres", "hybrid":
	default:
		return fmt.Errorf("storage.driver must be sqlite, postgres or hybrid, got %q", c.Storage.Driver)
	}
	switch strings.ToUpper(c.Storage.Synchronous) {
	case "FULL", "NORMAL":
	default:
		return fmt.Errorf("storage.synchronous must be FULL or NORMAL, got %q", c.Storage.Synchronous)
	}
	if c.Storage.KeepEpochs < 1 {
		return fmt.Errorf("storage.keep_epochs must be at least 1, got %d", c.Storage.KeepEpochs)
	}
	if c.Storage.SnapshotEvery < 1 {
		return fmt.Errorf("storage.snapshot_every must be at least 1, got %d", c.Storage.SnapshotEvery)
	}
	if d, err := time.ParseDuration(c.Executor.ThinkTime); err != nil || d < 0 {
		return fmt.Errorf("executor.think_time must be a duration such as 20ms (0s for none), got %q", c.Executor.ThinkTime)
	}
	if d, err := time.ParseDuration(c.Storage.CatchUp); err != nil || d <= 0 {
		return fmt.Errorf("storage.prune_catch_up must be a positive duration such as 30s, got %q", c.Storage.CatchUp)
	}
	switch c.Executor.Kind {
	case "builtin":
	case "openai":
		if c.Executor.URL == "" || len(c.Executor.Models) == 0 {
			return fmt.Errorf("executor.kind openai needs executor.url and executor.models")
		}
	default:
		return fmt.Errorf("executor.kind must be builtin or openai, got %q", c.Executor.Kind)
	}
	if c.Recovery.Workers < 1 {
		return fmt.Errorf("recovery.workers must be at least 1, got %d", c.Recovery.Workers)
	}
	return nil
}

// Path resolves p against the home directory, expanding a leading ~.
func (c *FileConfig) Path(p string) string {
	home := expandHome(c.Home)
	p = expandHome(p)
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(home, p)
}

func expandHome(p string) string {
	if rest, ok := strings.CutPrefix(p, "~"); ok {
		if h, err := os.UserHomeDir(); err == nil {
			return filepath.Join(h, rest)
		}
	}
	return p
}
