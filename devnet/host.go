package devnet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/chain/node"
	"github.com/devshard/devshard/keys"
	"github.com/devshard/devshard/signing"
)

// Host is one `devshard host` child process of the devnet.
type Host struct {
	Name    string
	URL     string
	Home    string
	LogPath string
	// Database is the Postgres database the host stores in; empty on SQLite.
	Database string
	Account  sdk.AccAddress
	Key      *signing.PrivKey

	// public is where the host answers: the host's own address, or its
	// versiond's when it runs through one.
	public string
	// versiond: the host runs as a child of versiond.
	versiond bool
	process
}

func newHost(cfg Config, i int, hs hostSetup, c *Chain, pg *pgServer) (*Host, error) {
	acct := c.Accounts[i]
	k, err := signing.PrivKeyFromBytes(acct.Key.Key)
	if err != nil {
		return nil, err
	}
	h := &Host{
		Name: fmt.Sprintf("host%d", i), URL: "http://" + hs.Listen,
		Home: filepath.Join(cfg.Home, fmt.Sprintf("host%d", i)), Account: acct.Address, Key: k,
	}
	h.public = h.URL
	h.LogPath = filepath.Join(h.Home, "host.log")
	if cfg.Versiond {
		h.versiond = true
		h.URL = versiondHostURL(hs.Listen)
		h.LogPath = filepath.Join(h.Home, "versiond.log")
	}
	h.process = process{name: h.Name, logPath: h.LogPath, binary: cfg.Binary, supervise: cfg.Supervise}
	if err := os.MkdirAll(h.Home, 0o700); err != nil {
		return nil, err
	}
	keyPath := filepath.Join(h.Home, "host.key")
	if _, err := os.Stat(keyPath); errors.Is(err, os.ErrNotExist) {
		if err := keys.Save(keyPath, k); err != nil {
			return nil, err
		}
	}
	chainGRPC, chainRPC := c.endpoints(i)
	if cfg.HostConfig != nil {
		if extra := cfg.HostConfig(i); extra != "" {
			// The chain's nodes are in the file too, though the flags below
			// win for the host, so that a proxy host reading this directory
			// finds them.
			toml := fmt.Sprintf("%s\n[chain]\ngrpc = %q\nrpc = %q\n", strings.TrimRight(extra, "\n"), chainGRPC, chainRPC)
			if err := os.WriteFile(filepath.Join(h.Home, "host.toml"), []byte(toml), 0o600); err != nil {
				return nil, err
			}
		}
	}
	hostArgs := []string{"--chain-rpc", chainRPC, "--chain-grpc", chainGRPC, "--chain-stall-after", cfg.stallAfter().String(),
		"--storage-driver", string(cfg.Storage), "--storage-synchronous", cfg.Synchronous,
		"--executor-think-time", cfg.ThinkTime.String()}
	if cfg.HostArgs != nil {
		hostArgs = append(hostArgs, cfg.HostArgs(i)...)
	}
	// Only the devnet says where a host stores: none of the operator's PG*
	// variables reach a host but those of the cluster the devnet picked.
	h.env = withoutPG(os.Environ())
	if pg != nil {
		h.Database = hostDatabase(i)
		for k, v := range pg.hostEnv(h.Database) {
			h.env = append(h.env, k+"="+v)
		}
	}
	if cfg.Versiond {
		h.args, err = versiondArgs(cfg, h, hs.Listen, chainGRPC, chainRPC, hostArgs)
		return h, err
	}
	h.args = append([]string{"host", "--home", h.Home, "--listen", hs.Listen}, hostArgs...)
	return h, nil
}

// UseChain points the host at other chain endpoints (comma-separated
// lists, as its --chain-grpc and --chain-rpc take) from its next Start.
// Through versiond, both versiond and its children's command move.
func (h *Host) UseChain(grpc, rpc string) {
	useChain(h.args, grpc, rpc)
	for i := 0; i+1 < len(h.args); i++ {
		if h.args[i] == "--command" {
			child := strings.Fields(h.args[i+1])
			useChain(child, grpc, rpc)
			h.args[i+1] = strings.Join(child, " ")
		}
	}
}

func useChain(args []string, grpc, rpc string) {
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--chain-grpc":
			args[i+1] = grpc
		case "--chain-rpc":
			args[i+1] = rpc
		}
	}
}

func trimScheme(addr string) string {
	for _, p := range []string{"tcp://", "http://"} {
		if len(addr) > len(p) && addr[:len(p)] == p {
			return addr[len(p):]
		}
	}
	return addr
}

// WaitHealthy waits until the host answers /healthz, failing early if the
// process exits. Through versiond the host is versiond's child, so it waits
// for versiond's /readyz: a version serves, its child having answered its
// own /readyz; versiond's /healthz answers before any child runs, and a
// gateway would find no version to open escrows under.
func (h *Host) WaitHealthy(ctx context.Context, timeout time.Duration) error {
	h.mu.Lock()
	exited := h.exited
	h.mu.Unlock()
	path := "/healthz"
	if h.versiond {
		path = "/readyz"
	}
	return waitHTTP(ctx, h.URL+path, timeout, func() error {
		select {
		case <-exited:
			return fmt.Errorf("%s exited at startup (%v); the end of %s:\n%s", h.Name, h.exitErr, h.LogPath, logTail(h.LogPath, 20))
		default:
			return nil
		}
	})
}

// logTail is the last n lines of the file at path, or why it cannot be read.
func logTail(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// WaitReady waits until the host's storage is open (/readyz answers 200).
func (h *Host) WaitReady(ctx context.Context, timeout time.Duration) error {
	return waitHTTP(ctx, h.URL+"/readyz", timeout, nil)
}

// withoutPG drops the PG* variables, which name a host's Postgres.
func withoutPG(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "PG") {
			out = append(out, kv)
		}
	}
	return out
}

// StartProxy starts `devshard host --proxy` for primary as a child process
// named name, in <home>/<name>, on a free loopback port: a validation node
// that signs with key, a warm key the primary's account must have granted
// (docs/workers.md, "The proxy host"). It reads the chain's nodes from the
// primary's host.toml, so the network needs Config.HostConfig for primary.
// It returns once the process runs; WaitReady says when the grant was
// found and the proxy follows the primary. The caller stops it.
func (n *Network) StartProxy(name string, primary *Host, key *signing.PrivKey) (*Host, error) {
	if _, err := os.Stat(filepath.Join(primary.Home, "host.toml")); err != nil {
		return nil, fmt.Errorf("a proxy host reads its primary's host.toml, and %s has none (%v): give it settings with Config.HostConfig", primary.Name, err)
	}
	ports, err := node.FreePorts(1)
	if err != nil {
		return nil, err
	}
	listen := fmt.Sprintf("127.0.0.1:%d", ports[0])
	p := &Host{Name: name, URL: "http://" + listen, Home: filepath.Join(n.cfg.Home, name), Account: primary.Account, Key: key}
	p.public = p.URL
	p.LogPath = filepath.Join(p.Home, "host.log")
	p.process = process{name: name, logPath: p.LogPath, binary: n.cfg.Binary, supervise: n.cfg.Supervise}
	if err := os.MkdirAll(p.Home, 0o700); err != nil {
		return nil, err
	}
	keyPath := filepath.Join(p.Home, "host.key")
	if old, err := keys.LoadFile(keyPath); err == nil {
		if old.Address() != key.Address() {
			return nil, fmt.Errorf("%s holds another key than the one asked for; remove it, or name the proxy otherwise", keyPath)
		}
	} else if err := keys.Save(keyPath, key); err != nil {
		return nil, err
	}
	p.args = []string{"host", "--home", p.Home, "--listen", listen, "--proxy", primary.public, "--conf-dir", primary.Home,
		"--executor-think-time", n.cfg.ThinkTime.String()}
	return p, p.Start()
}
