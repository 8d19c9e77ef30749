package host

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/internal/settings"
)

// FileConfig is the host daemon's configuration. Settings declares every
// field, with its file key, flag, variable and meaning.
type FileConfig struct {
	Listen  string
	Home    string
	Version string
	// RuntimeVersion is the approved runtime version this process serves
	// (Config.RuntimeVersion).
	RuntimeVersion string

	Key struct {
		File           string
		KeyringBackend string
		KeyringDir     string
		KeyName        string
		Account        string
	}

	Chain struct {
		RPC        string
		GRPC       string
		StallAfter time.Duration
	}

	Storage struct {
		Driver        string
		Dir           string
		Synchronous   string
		KeepEpochs    int
		SnapshotEvery uint64
		CatchUp       time.Duration
	}

	Executor struct {
		Kind   string
		URL    string
		Models []string
		APIKey string
		// ThinkTime is the built-in model's pause per token.
		ThinkTime time.Duration
	}

	Recovery struct {
		Workers int
	}

	Jobs struct {
		HeartbeatTimeout time.Duration
		MaxTry           int
		Lifetime         time.Duration
		Workers          []string
		Inference        bool
	}

	Validation struct {
		Proxy bool
	}

	Admin struct {
		Listen string
		File   string
	}

	Log settings.Log
}

// Settings declares every setting of the host, bound to c's fields and
// written with their defaults, in the order --help and docs/host.md show
// them.
func Settings(c *FileConfig) *settings.Schema {
	s := settings.New("host")
	s.String(&c.Listen, "listen", "127.0.0.1:8081", "address the HTTP API binds, first thing at startup")
	s.String(&c.Home, "home", "~/.devshard/host", "directory for storage and keys; relative paths below resolve against it")
	s.String(&c.Key.File, "key.file", "host.key", "file holding the signing key as 64 hex characters (mode 0600); used when keyring.backend is empty")
	// Until issue 16 the keyring's settings sat in [key]; as [keyring] their
	// flags are the chain's (--keyring-backend, --keyring-dir).
	backend := s.String(&c.Key.KeyringBackend, "keyring.backend", "", "Cosmos keyring backend (file, test, os) to take the key from instead of key.file")
	dir := s.String(&c.Key.KeyringDir, "keyring.dir", "", "keyring directory (default: home)")
	name := s.String(&c.Key.KeyName, "key.name", "host", "name of the key in the keyring")
	former := map[*settings.Setting]string{backend: "key.keyring_backend", dir: "key.keyring_dir", name: "key.key_name"}
	s.String(&c.Key.Account, "key.account", "", "participant account (hex or bech32) the key signs for, when it is a warm key granted through x/authz; empty: the key's own account").
		FormerEnv("DEVSHARD_HOST_ACCOUNT")
	s.String(&c.Chain.RPC, "chain.rpc", "http://127.0.0.1:26657", "CometBFT RPC of the chain's nodes (http://host:port), comma-separated, tried in turn: blocks and epoch changes; a subscription that drops is made again on the next")
	s.String(&c.Chain.GRPC, "chain.grpc", "127.0.0.1:9090", "gRPC of the chain's nodes, host:port, comma-separated: escrows, params, grants; the first that answers is used, and the next once it stops")
	s.Duration(&c.Chain.StallAfter, "chain.stall_after", 30*time.Second, "a chain whose latest block is older than this is making no blocks: /readyz says degraded (still 200: open escrows are still served) and settlements and claims wait")
	s.String(&c.Storage.Driver, "storage.driver", "sqlite", "sqlite, postgres or hybrid; postgres is chosen when PGHOST is set and this is left at its default").
		FormerEnv("DEVSHARD_HOST_STORAGE")
	s.String(&c.Storage.Dir, "storage.dir", "data", "SQLite directory: _meta.db plus one epoch_<N>.db per epoch")
	s.String(&c.Storage.Synchronous, "storage.synchronous", "FULL", "SQLite durability: FULL (fsync every commit) or NORMAL (survives a process crash, not power loss)").
		FormerEnv("DEVSHARD_HOST_SQLITE_SYNCHRONOUS")
	s.Int(&c.Storage.KeepEpochs, "storage.keep_epochs", 3, "epochs of sessions kept; older epochs are pruned when the chain's epoch changes").
		FormerEnv("DEVSHARD_HOST_KEEP_EPOCHS")
	s.Uint(&c.Storage.SnapshotEvery, "storage.snapshot_every", 500, "K: a session snapshot every K nonces and at settlement; recovery replays at most K diffs").
		FormerEnv("DEVSHARD_HOST_SNAPSHOT_EVERY")
	s.Duration(&c.Storage.CatchUp, "storage.prune_catch_up", 30*time.Second, "how often a quiet host checks for epochs to prune").
		FormerEnv("DEVSHARD_HOST_PRUNE_CATCH_UP")
	s.String(&c.Executor.Kind, "executor.kind", "builtin", "builtin (deterministic test model) or openai (an OpenAI-compatible server such as vLLM)").
		FormerEnv("DEVSHARD_HOST_EXECUTOR")
	s.String(&c.Executor.URL, "executor.url", "", "base URL of the OpenAI-compatible server (openai only)")
	s.List(&c.Executor.Models, "executor.models", nil, "models the server serves (openai only)")
	s.Duration(&c.Executor.ThinkTime, "executor.think_time", 0, "pause per token of the built-in model, to imitate a real one (builtin only)").
		FormerEnv("DEVSHARD_HOST_THINK_TIME")
	s.String(&c.Executor.APIKey, "executor.api_key", "", "bearer token for the server (openai only)")
	s.Int(&c.Recovery.Workers, "recovery.workers", 4, "parallel workers recovering sessions at startup")
	s.String(&c.RuntimeVersion, "runtime_version", "", "the approved runtime version this process serves behind versiond; it refuses (409) sessions of escrows created under another. Default: DEVSHARD_VERSION, which versiond sets for its children; empty serves every escrow")
	// Until issue 16 a host flag kept its key's dots (--storage.keep-epochs).
	for _, st := range s.Settings() {
		key := st.Key
		if old, ok := former[st]; ok {
			st.FormerKey(old)
			key = old
		}
		if old := strings.ReplaceAll(key, "_", "-"); old != st.Flag() {
			st.FormerFlag(old)
		}
	}
	s.Duration(&c.Jobs.HeartbeatTimeout, "jobs.heartbeat_timeout", 15*time.Second, "a running job whose worker sends no heartbeat for this long is taken back: retried, or failed after jobs.max_try claims")
	s.Int(&c.Jobs.MaxTry, "jobs.max_try", 2, "claims a job gets before an expired lease fails it; only an operator's reset (devshard jobs reset) revives it then")
	s.Duration(&c.Jobs.Lifetime, "jobs.lifetime", 25*time.Hour, "how long a finished or failed job is kept, counted from when it finished")
	s.List(&c.Jobs.Workers, "jobs.workers", nil, "accounts (hex or bech32) of the external workers accepted on the worker routes; empty: the host runs its jobs in process")
	s.Bool(&c.Jobs.Inference, "jobs.inference", false, "run this host's inferences on its external workers too, streamed back piece by piece (needs jobs.workers); off: inferences run on the host's own executor")
	s.Bool(&c.Validation.Proxy, "validation.proxy", false, "a proxy host (devshard host --proxy) validates for this host: it samples and re-runs nothing itself, answers its proxy on POST /v1/proxy/follow and carries the proxy's votes (docs/workers.md)")
	s.String(&c.Admin.Listen, "admin.listen", "127.0.0.1:0", "address of the admin endpoint that devshard jobs talks to (port 0: any free port); keep it on loopback; empty: none")
	s.String(&c.Admin.File, "admin.file", "admin.json", "file the host writes the admin endpoint's URL and a fresh token to at start (mode 0600); devshard jobs reads it")
	settings.Logging(s, &c.Log)
	return s
}

// DefaultConfig is the configuration with every default applied.
func DefaultConfig() *FileConfig {
	c := &FileConfig{}
	Settings(c)
	return c
}

// ConfigFlags registers the host's flags, and --config, on fs. Once fs is
// parsed, the function it returns loads the configuration: the file
// (--config, or <home>/host.toml when it exists), then the environment,
// then the flags. Deprecation notices for former variable names go to warn.
func ConfigFlags(fs *pflag.FlagSet) func(environ func(string) (string, bool), warn io.Writer) (*FileConfig, error) {
	c := &FileConfig{}
	s := Settings(c)
	s.AddFlags(fs)
	return func(environ func(string) (string, bool), warn io.Writer) (*FileConfig, error) {
		return load(c, s, s.File(environ), environ, warn)
	}
}

// LoadConfig reads defaults, then the TOML file at path (if path is not
// empty), then the environment, then overrides (setting key → value, as
// its flag takes it). It validates the result.
func LoadConfig(path string, environ func(string) (string, bool), overrides map[string]string) (*FileConfig, error) {
	c := &FileConfig{}
	s := Settings(c)
	fs := pflag.NewFlagSet("host", pflag.ContinueOnError)
	s.AddFlags(fs)
	for key, v := range overrides {
		st, ok := s.Lookup(key)
		if !ok {
			return nil, fmt.Errorf("unknown setting %q", key)
		}
		if err := fs.Set(st.Flag(), v); err != nil {
			return nil, err
		}
	}
	return load(c, s, path, environ, io.Discard)
}

func load(c *FileConfig, s *settings.Schema, path string, environ func(string) (string, bool), warn io.Writer) (*FileConfig, error) {
	if err := s.Load(path, environ, warn); err != nil {
		return nil, err
	}
	// Postgres is the host's storage wherever PGHOST says one is at hand,
	// unless the operator named the driver in the environment or a flag.
	if c.Storage.Driver == "sqlite" && s.Source("storage.driver") < settings.Env {
		if _, ok := environ("PGHOST"); ok {
			c.Storage.Driver = "postgres"
		}
	}
	// versiond names each child's version in DEVSHARD_VERSION; a name set
	// otherwise must agree with it, or the child would refuse the very
	// sessions versiond routes to it.
	if v, ok := environ(versionEnv); ok && v != "" {
		switch {
		case c.RuntimeVersion == "":
			c.RuntimeVersion = v
		case c.RuntimeVersion != v:
			return nil, fmt.Errorf("runtime_version is %q but versiond runs this process as %s=%q; leave runtime_version unset behind versiond", c.RuntimeVersion, versionEnv, v)
		}
	}
	return c, c.validate()
}

// versionEnv is the variable versiond sets to the version its child runs.
const versionEnv = "DEVSHARD_VERSION"

func (c *FileConfig) validate() error {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("listen %q is not host:port: %v", c.Listen, err)
	}
	if _, err := chainclient.ParseGRPC(c.Chain.GRPC); err != nil {
		return fmt.Errorf("chain.grpc: %v; set it (--chain-grpc, DEVSHARD_HOST_CHAIN_GRPC) to the nodes' gRPC as host:port, comma-separated", err)
	}
	if _, err := chainclient.ParseRPC(c.Chain.RPC); err != nil {
		return fmt.Errorf("chain.rpc: %v; set it (--chain-rpc, DEVSHARD_HOST_CHAIN_RPC) to the nodes' CometBFT RPC as http://host:port, comma-separated", err)
	}
	if c.Chain.StallAfter <= 0 {
		return fmt.Errorf("chain.stall_after must be a positive duration such as 30s, got %s", c.Chain.StallAfter)
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
	if c.Executor.ThinkTime < 0 {
		return fmt.Errorf("executor.think_time must be a duration such as 20ms (0s for none), got %s", c.Executor.ThinkTime)
	}
	if c.Storage.CatchUp <= 0 {
		return fmt.Errorf("storage.prune_catch_up must be a positive duration such as 30s, got %s", c.Storage.CatchUp)
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
	if c.Jobs.HeartbeatTimeout <= 0 {
		return fmt.Errorf("jobs.heartbeat_timeout must be a positive duration such as 15s, got %s", c.Jobs.HeartbeatTimeout)
	}
	if c.Jobs.MaxTry < 1 {
		return fmt.Errorf("jobs.max_try must be at least 1, got %d", c.Jobs.MaxTry)
	}
	if c.Jobs.Lifetime <= 0 {
		return fmt.Errorf("jobs.lifetime must be a positive duration such as 25h, got %s", c.Jobs.Lifetime)
	}
	if c.Jobs.Inference && len(c.Jobs.Workers) == 0 {
		return fmt.Errorf("jobs.inference needs jobs.workers: list the workers that run the inferences, or turn jobs.inference off")
	}
	if c.Admin.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Admin.Listen); err != nil {
			return fmt.Errorf("admin.listen %q is not host:port (or empty for no admin endpoint): %v", c.Admin.Listen, err)
		}
	}
	if c.Recovery.Workers < 1 {
		return fmt.Errorf("recovery.workers must be at least 1, got %d", c.Recovery.Workers)
	}
	return nil
}

// Path resolves p against the home directory, expanding a leading ~.
func (c *FileConfig) Path(p string) string {
	home := settings.ExpandHome(c.Home)
	p = settings.ExpandHome(p)
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(home, p)
}
