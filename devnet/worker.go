package devnet

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/jobs"
	"github.com/devshard/devshard/keys"
	"github.com/devshard/devshard/signing"
)

// Worker is one `devshard worker` child process of the devnet: it pulls
// one host's jobs and runs them on a built-in executor child of its own.
type Worker struct {
	Name    string
	Home    string
	LogPath string
	// Host is the name of the host whose jobs it runs.
	Host    string
	Account signing.Address

	process
}

// workerSlots is how many jobs each devnet worker's executor runs at
// once: enough for a host's sampled validations and its inferences.
const workerSlots = 16

// newWorker makes the j-th worker of host i: its home, its key (kept
// across runs, so the host's list of workers holds) and its config. The
// host's URL and account and the chain are written into the config, so it
// needs no answer from the host to start.
func newWorker(cfg Config, i, j int) (*Worker, error) {
	w := &Worker{
		Name: fmt.Sprintf("worker%d-%d", i, j), Host: fmt.Sprintf("host%d", i),
		Home: filepath.Join(cfg.Home, fmt.Sprintf("host%d", i), fmt.Sprintf("worker%d", j)),
	}
	w.LogPath = filepath.Join(w.Home, "worker.log")
	if err := os.MkdirAll(w.Home, 0o700); err != nil {
		return nil, err
	}
	keyPath := filepath.Join(w.Home, "worker.key")
	k, err := keys.LoadFile(keyPath)
	if errors.Is(err, os.ErrNotExist) {
		k, err = keys.WriteFile(keyPath, rand.Reader)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", w.Name, err)
	}
	w.Account = k.Address()
	w.process = process{name: w.Name, logPath: w.LogPath, binary: cfg.Binary, supervise: cfg.Supervise,
		args: []string{"worker", "--config", filepath.Join(w.Home, "worker.toml")}}
	return w, nil
}

// configure writes the worker's config for host h on chain chainID.
func (w *Worker) configure(cfg Config, h *Host, chainID string) error {
	conf := fmt.Sprintf(`# written by devshard devnet at every start
key_file = "worker.key"
claim_wait = "10s"

[host]
url = %q
account = %q
chain_id = %q

[[executor]]
name = "builtin"
bin = %q
args = ["executor", "builtin", "--concurrent", "%d", "--think-time", %q]
kinds = ["inference", "validation"]
concurrent = %d
ready_timeout = "10s"
prepare = true
`, h.URL, h.Key.Address().String(), chainID, cfg.Binary, workerSlots, cfg.ThinkTime.String(), workerSlots)
	return os.WriteFile(filepath.Join(w.Home, "worker.toml"), []byte(conf), 0o600)
}

// workerArgs are the host flags that hand host i's jobs, inferences
// included, to its workers.
func workerArgs(ws []*Worker) []string {
	if len(ws) == 0 {
		return nil
	}
	accounts := make([]string, len(ws))
	for i, w := range ws {
		accounts[i] = w.Account.String()
	}
	return []string{"--jobs-workers", strings.Join(accounts, ","), "--jobs-inference"}
}

// startWorkers writes each worker's config and starts it beside its host.
// A worker's executor must be ready before it claims, so each worker is
// waited for until its log says it runs.
func (n *Network) startWorkers(ctx context.Context, step func(string, ...any)) error {
	if len(n.Workers) == 0 {
		return nil
	}
	hosts := map[string]*Host{}
	for _, h := range n.Hosts {
		hosts[h.Name] = h
	}
	for _, w := range n.Workers {
		if err := w.configure(n.cfg, hosts[w.Host], n.Chain.ChainID); err != nil {
			return err
		}
		if err := w.Start(); err != nil {
			return err
		}
	}
	for _, w := range n.Workers {
		if err := w.waitRunning(ctx, 30*time.Second); err != nil {
			return err
		}
	}
	step("%d workers run the hosts' jobs (%d a host, each with a built-in executor child); inferences go through them too", len(n.Workers), n.cfg.Workers)
	return nil
}

// waitRunning waits until the worker's log says it runs, failing early if
// it exits.
func (w *Worker) waitRunning(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if raw, err := os.ReadFile(w.LogPath); err == nil && strings.Contains(string(raw), "worker running") {
			return nil
		}
		if !w.Running() && !w.supervise {
			w.mu.Lock()
			err := w.exitErr
			w.mu.Unlock()
			return fmt.Errorf("%s exited at startup (%v); the end of %s:\n%s", w.Name, err, w.LogPath, logTail(w.LogPath, 20))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not start within %s; the end of %s:\n%s", w.Name, timeout, w.LogPath, logTail(w.LogPath, 20))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WorkerJobs counts the jobs each worker finished, by kind, read from its
// host's queue through the host's admin endpoint. Jobs a host ran in
// process count under its own name.
func (n *Network) WorkerJobs(ctx context.Context) (map[string]map[string]int, error) {
	names := map[string]string{}
	for _, w := range n.Workers {
		names[w.Account.String()] = w.Name
	}
	out := map[string]map[string]int{}
	for _, h := range n.Hosts {
		raw, err := os.ReadFile(filepath.Join(h.Home, "admin.json"))
		if err != nil {
			return nil, fmt.Errorf("%s's admin file: %w", h.Name, err)
		}
		var af hostapi.AdminFile
		if err := json.Unmarshal(raw, &af); err != nil {
			return nil, fmt.Errorf("%s's admin file: %w", h.Name, err)
		}
		admin := &hostapi.Admin{BaseURL: af.URL, Token: af.Token, Operator: "devnet", HTTP: http.DefaultClient}
		list, err := admin.List(ctx, true)
		if err != nil {
			return nil, fmt.Errorf("%s's jobs: %w", h.Name, err)
		}
		for _, j := range list {
			if j.State != string(jobs.Succeeded) {
				continue
			}
			who, ok := names[j.Worker]
			if !ok {
				who = h.Name + " (in process)"
			}
			kind := j.Kind
			if jobs.IsInference(jobs.Kind(kind)) {
				kind = string(jobs.KindInference)
			}
			if out[who] == nil {
				out[who] = map[string]int{}
			}
			out[who][kind]++
		}
	}
	return out, nil
}
