package devnet

import (
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// process is one devshard child process of the devnet (a host, a worker):
// started with its output appended to its log, stopped by a signal, and
// restarted after a second when it exits on its own if supervised.
type process struct {
	name      string
	logPath   string
	args      []string
	env       []string // nil: this process's environment
	binary    string
	supervise bool

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the current process exits
	exitErr error
	stopped bool // Stop was called: do not restart
}

// Start runs the process. Its output goes to its log.
func (p *process) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped = false
	return p.spawn()
}

// spawn starts the process; call with mu held.
func (p *process) spawn() error {
	logf, err := os.OpenFile(p.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.binary, p.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = p.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("%s: start %s: %w", p.name, p.binary, err)
	}
	p.cmd = cmd
	exited := make(chan struct{})
	p.exited = exited
	go func() {
		err := cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.exitErr = err
		close(exited)
		restart := p.supervise && !p.stopped
		p.mu.Unlock()
		if restart {
			time.Sleep(time.Second)
			p.mu.Lock()
			if !p.stopped && p.exited == exited {
				_ = p.spawn()
			}
			p.mu.Unlock()
		}
	}()
	return nil
}

// Kill ends the process with SIGKILL, as a crash would, and waits for it.
// A supervised process is not restarted.
func (p *process) Kill() {
	p.signal(syscall.SIGKILL)
}

// Stop ends the process with SIGTERM (a clean shutdown) and waits for it.
func (p *process) Stop() {
	p.signal(syscall.SIGTERM)
}

func (p *process) signal(sig syscall.Signal) {
	p.mu.Lock()
	p.stopped = true
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
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
func (p *process) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Running reports whether the process is alive.
func (p *process) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Exited is closed when the process started last exits; nil before any
// start.
func (p *process) Exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exited
}
