package devnet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	sdk "github.com/cosmos/cosmos-sdk/types"

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

	args      []string
	env       []string
	binary    string
	supervise bool

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the current process exits
	exitErr error
	stopped bool // Stop was called: do not restart
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
		binary: cfg.Binary, supervise: cfg.Supervise,
	}
	h.LogPath = filepath.Join(h.Home, "host.log")
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
	h.args = []string{"host", "--home", h.Home, "--listen", hs.Listen,
		"--chain-rpc", chainRPC, "--chain-grpc", chainGRPC, "--chain-stall-after", cfg.stallAfter().String(),
		"--storage-driver", string(cfg.Storage), "--storage-synchronous", cfg.Synchronous,
		"--executor-think-time", cfg.ThinkTime.String()}
	// Only the devnet says where a host stores: none of the operator's PG*
	// variables reach a host but those of the cluster the devnet picked.
	h.env = withoutPG(os.Environ())
	if pg != nil {
		h.Database = hostDatabase(i)
		for k, v := range pg.hostEnv(h.Database) {
			h.env = append(h.env, k+"="+v)
		}
	}
	if cfg.HostArgs != nil {
		h.args = append(h.args, cfg.HostArgs(i)...)
	}
	return h, nil
}

// UseChain points the host at other chain endpoints (comma-separated
// lists, as its --chain-grpc and --chain-rpc take) from its next Start.
func (h *Host) UseChain(grpc, rpc string) {
	for i := 0; i+1 < len(h.args); i++ {
		switch h.args[i] {
		case "--chain-grpc":
			h.args[i+1] = grpc
		case "--chain-rpc":
			h.args[i+1] = rpc
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

// Start runs the host process. Its output goes to LogPath.
func (h *Host) Start() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped = false
	return h.spawn()
}

// spawn starts the process; call with mu held.
func (h *Host) spawn() error {
	logf, err := os.OpenFile(h.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(h.binary, h.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = h.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("%s: start %s: %w", h.Name, h.binary, err)
	}
	h.cmd = cmd
	exited := make(chan struct{})
	h.exited = exited
	go func() {
		err := cmd.Wait()
		logf.Close()
		h.mu.Lock()
		h.exitErr = err
		close(exited)
		restart := h.supervise && !h.stopped
		h.mu.Unlock()
		if restart {
			time.Sleep(time.Second)
			h.mu.Lock()
			if !h.stopped && h.exited == exited {
				_ = h.spawn()
			}
			h.mu.Unlock()
		}
	}()
	return nil
}

// Kill ends the process with SIGKILL, as a crash would, and waits for it.
// A supervised host is not restarted.
func (h *Host) Kill() {
	h.signal(syscall.SIGKILL)
}

// Stop ends the process with SIGTERM (a clean shutdown) and waits for it.
func (h *Host) Stop() {
	h.signal(syscall.SIGTERM)
}

func (h *Host) signal(sig syscall.Signal) {
	h.mu.Lock()
	h.stopped = true
	cmd, exited := h.cmd, h.exited
	h.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// Pid is the current process id, 0 if none runs.
func (h *Host) Pid() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cmd == nil || h.cmd.Process == nil {
		return 0
	}
	return h.cmd.Process.Pid
}

// Running reports whether the host process is alive.
func (h *Host) Running() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.exited == nil {
		return false
	}
	select {
	case <-h.exited:
		return false
	default:
		return true
	}
}

// WaitHealthy waits until the host answers /healthz, failing early if the
// process exits.
func (h *Host) WaitHealthy(ctx context.Context, timeout time.Duration) error {
	h.mu.Lock()
	exited := h.exited
	h.mu.Unlock()
	return waitHTTP(ctx, h.URL+"/healthz", timeout, func() error {
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
