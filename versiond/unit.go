package versiond

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// workDir is the child's working directory, beside its binaries in
// versions/<name>/.
const workDir = "work"

// State is where a version is in its life on this host.
type State string

const (
	// StateInstalling: its binary is being downloaded or verified, or a
	// failed download waits for its retry.
	StateInstalling State = "installing"
	// StateStarting: its child is starting, or restarting after an exit
	// or after it was not ready in time, and has not yet answered /readyz
	// with 200. It gets no traffic.
	StateStarting State = "starting"
	// StateServing: its child answered /readyz and gets traffic.
	StateServing State = "serving"
	// StateDraining: it left the approved list. It takes no new sessions
	// but still serves its open traffic until it drains or the bound ends.
	StateDraining State = "draining"
)

// unit is one version on this host: its install, its child process, and
// the proxy to it. Its lifecycle runs in run, on one goroutine; the rest
// of versiond reads it through snapshot and route.
type unit struct {
	v   Version
	cfg *Config
	in  *installer
	m   *metrics
	// notify is called after every change that snapshot would show.
	notify func()

	cancel context.CancelFunc
	done   chan struct{} // closed when run returns: the child has exited
	// inflight counts proxied requests still open, so a drain waits for
	// them.
	inflight atomic.Int64

	mu       sync.Mutex
	phase    State // installing, starting or serving
	draining bool
	retiring bool // the drain is over and the unit is being removed
	// drainStop ends the wait of a drain; set while draining.
	drainStop context.CancelFunc
	addr      string // the child's loopback address, while it runs
	alive     bool
	started   time.Time              // when the running child was started
	proxy     *httputil.ReverseProxy // non-nil only while serving
	restarts  int
	lastErr   string
	// served: a child of this unit answered /readyz and got traffic at
	// some point. One that never did has no session to drain.
	served bool
}

// VersionStatus is what versiond knows of one version.
type VersionStatus struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
	State  State  `json:"state"`
	// Address is the child's loopback address; empty when no child runs.
	Address string `json:"address,omitempty"`
	// Running says whether a child process is alive (ready or not).
	Running bool `json:"running"`
	// Started is when the running child was started; zero when none runs.
	Started time.Time `json:"started,omitzero"`
	// Restarts counts the child's restarts: after it exited, or after it
	// was stopped for not being ready within ReadyTimeout.
	Restarts int `json:"restarts"`
	// LastError is the latest failure: a download, a hash mismatch, a
	// child's exit, a child not ready in time. It stays after later
	// successes, for the operator.
	LastError string `json:"last_error,omitempty"`
}

func (u *unit) snapshot() VersionStatus {
	u.mu.Lock()
	defer u.mu.Unlock()
	st := u.phase
	if u.draining {
		st = StateDraining
	}
	addr, started := u.addr, u.started
	if !u.alive {
		addr, started = "", time.Time{}
	}
	return VersionStatus{Name: u.v.Name, SHA256: u.v.SHA256, State: st, Address: addr, Running: u.alive, Started: started,
		Restarts: u.restarts, LastError: u.lastErr}
}

// neverRan says that no child of u ever served and none runs now: u is
// installing, or its child exits before it is ready. A child that runs
// but is not ready yet may be recovering sessions, so it does not count.
func (u *unit) neverRan() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return !u.served && !u.alive
}

// route is the proxy to the child, or nil while it is not ready.
func (u *unit) route() *httputil.ReverseProxy {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.proxy
}

func (u *unit) update(f func()) {
	u.mu.Lock()
	f()
	u.mu.Unlock()
	u.notify()
}

// fail records err as the unit's last error, logs it and counts it.
func (u *unit) fail(err error) {
	u.cfg.Logger.Warn("versiond: version failed", "version", u.v.Name, "err", err)
	u.update(func() { u.lastErr = err.Error() })
}

// run installs the version and keeps its child running until ctx ends.
// A binary that fails its check before a start is installed again.
func (u *unit) run(ctx context.Context) {
	defer close(u.done)
	for {
		path, ok := u.installLoop(ctx)
		if !ok || !u.superviseLoop(ctx, path) {
			return
		}
	}
}

// installLoop installs the binary, retrying with backoff, and returns its
// path; false once ctx has ended.
func (u *unit) installLoop(ctx context.Context) (string, bool) {
	var delay time.Duration
	for {
		u.update(func() { u.phase = StateInstalling })
		path, fetched, err := u.in.install(ctx, u.v)
		if ctx.Err() != nil {
			return "", false
		}
		if err == nil {
			if fetched {
				u.m.downloads.WithLabelValues("ok").Inc()
			}
			return path, true
		}
		u.m.countDownloadError(u.v.Name, err)
		u.fail(err)
		delay = u.cfg.DownloadBackoff.next(delay)
		if !sleep(ctx, delay) {
			return "", false
		}
	}
}

// superviseLoop runs the child, restarting it with backoff after each
// exit. It returns true when the binary must be installed again (it failed
// its check), false once ctx has ended.
func (u *unit) superviseLoop(ctx context.Context, path string) bool {
	var delay time.Duration
	for {
		if err := verify(u.v, path); err != nil {
			var mismatch *HashMismatchError
			if errors.As(err, &mismatch) {
				u.m.hashMismatches.WithLabelValues(u.v.Name).Inc()
			}
			u.fail(err)
			return ctx.Err() == nil
		}
		servedSince, err := u.runChild(ctx, path)
		if ctx.Err() != nil {
			return false
		}
		// A child that served for a while before it exited starts again
		// at the shortest delay: its exit is not part of a crash loop.
		if !servedSince.IsZero() && time.Since(servedSince) > u.cfg.RestartBackoff.Max {
			delay = 0
		}
		delay = u.cfg.RestartBackoff.next(delay)
		u.m.restarts.WithLabelValues(u.v.Name).Inc()
		var notReady *NotReadyError
		if errors.As(err, &notReady) {
			u.fail(fmt.Errorf("%w; restarting in %s", err, delay))
		} else {
			u.fail(fmt.Errorf("version %s: child exited (%v); restarting in %s", u.v.Name, err, delay))
		}
		u.update(func() { u.restarts++ })
		if !sleep(ctx, delay) {
			return false
		}
	}
}

// runChild starts the child, gates it on /readyz, and waits until it
// exits (its exit error is returned), ctx ends (it is stopped) or it was
// not ready within ReadyTimeout (it is stopped; a *NotReadyError). It
// returns when the child began serving, zero if it never did.
func (u *unit) runChild(ctx context.Context, path string) (servedSince time.Time, err error) {
	addr, err := freeLoopback()
	if err != nil {
		return time.Time{}, err
	}
	work := filepath.Join(u.in.versionDir(u.v.Name), workDir)
	if err := os.MkdirAll(work, 0o755); err != nil {
		return time.Time{}, err
	}
	logf, err := os.OpenFile(filepath.Join(work, "child.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return time.Time{}, err
	}
	defer logf.Close()
	args := expand(u.cfg.Command, map[string]string{"{binary}": path, "{listen}": addr, "{name}": u.v.Name, "{workdir}": work})
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "DEVSHARD_VERSION="+u.v.Name, "DEVSHARD_LISTEN="+addr)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A child never outlives versiond, even one killed with SIGKILL.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return time.Time{}, fmt.Errorf("starting %s: %w", args[0], err)
	}
	exited := make(chan struct{})
	var exitErr error
	go func() { exitErr = cmd.Wait(); close(exited) }()
	u.update(func() { u.phase, u.addr, u.alive, u.proxy, u.started = StateStarting, addr, true, nil, time.Now() })
	defer u.update(func() { u.phase, u.alive, u.proxy = StateStarting, false, nil })

	if err := u.awaitReady(ctx, addr, exited); err != nil {
		if errors.Is(err, errExited) {
			return time.Time{}, exitErr
		}
		u.stopChild(cmd, exited)
		return time.Time{}, err
	}
	servedSince = time.Now()
	proxy := newProxy(addr)
	u.update(func() { u.phase, u.proxy, u.served = StateServing, proxy, true })
	select {
	case <-exited:
		return servedSince, exitErr
	case <-ctx.Done():
		u.stopChild(cmd, exited)
		return servedSince, ctx.Err()
	}
}

// NotReadyError is a child that ran but did not answer GET /readyz with
// 200 within ReadyTimeout. A child stuck in its start (a lock it waits
// for, a dependency that never answers) would otherwise hold its version
// out of service silently; it is stopped and started again instead.
type NotReadyError struct {
	Version string
	After   time.Duration
	// Last is the last answer to /readyz: a status, or why none came.
	Last string
}

func (e *NotReadyError) Error() string {
	return fmt.Sprintf("version %s: its child did not answer GET /readyz with 200 within %s (last: %s), so it was stopped", e.Version, e.After, e.Last)
}

// awaitReady polls the child's /readyz until it answers 200 (nil), the
// child exits (errExited), ctx ends (ctx's error) or ReadyTimeout passes
// (a *NotReadyError).
func (u *unit) awaitReady(ctx context.Context, addr string, exited <-chan struct{}) error {
	client := &http.Client{Timeout: time.Second}
	url := "http://" + addr + "/readyz"
	deadline := time.NewTimer(u.cfg.ReadyTimeout)
	defer deadline.Stop()
	last := "no answer yet"
	for {
		select {
		case <-exited:
			return errExited
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return &NotReadyError{Version: u.v.Name, After: u.cfg.ReadyTimeout, Last: last}
		case <-time.After(u.cfg.ReadyPoll):
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err != nil {
			last = err.Error()
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		last = resp.Status
	}
}

// errExited is a child that exited before it was ready.
var errExited = errors.New("the child exited before it was ready")

// stopChild sends SIGTERM and waits for the exit; a child still running
// after StopTimeout is killed.
func (u *unit) stopChild(cmd *exec.Cmd, exited <-chan struct{}) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(u.cfg.StopTimeout):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// openSessions asks the child how many sessions it still has open, by
// the optional probe GET <OpenSessionsPath> answering
// {"open_sessions": n}. ok is false when the child does not answer it.
func (u *unit) openSessions(ctx context.Context) (n int, ok bool) {
	u.mu.Lock()
	addr, alive := u.addr, u.alive
	u.mu.Unlock()
	if !alive || u.cfg.OpenSessionsPath == "" {
		return 0, false
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+u.cfg.OpenSessionsPath, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	var body struct {
		OpenSessions *int `json:"open_sessions"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&body) != nil || body.OpenSessions == nil {
		return 0, false
	}
	return *body.OpenSessions, true
}

// freeLoopback picks a free loopback port. The port is free when picked;
// a child that loses it to another process exits and is restarted on a
// new one.
func freeLoopback() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

// expand replaces each placeholder in each argument of the template.
func expand(template []string, vars map[string]string) []string {
	out := make([]string, len(template))
	for i, a := range template {
		for k, v := range vars {
			a = strings.ReplaceAll(a, k, v)
		}
		out[i] = a
	}
	return out
}
