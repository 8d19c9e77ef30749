package child

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/devshard/devshard/executor/ndjson"
)

// maxStderrLine bounds one logged line of a child's stderr.
const maxStderrLine = 64 << 10

// process is one run of the child's command, from spawn to exit.
type process struct {
	name  string
	log   *slog.Logger
	cmd   *exec.Cmd
	stdin io.WriteCloser
	enc   *ndjson.Encoder
	dir   string
	began time.Time

	models []string      // from the ready line; set before ready is closed
	ready  chan struct{} // closed at the ready line
	done   chan struct{} // closed once the process is gone and its calls failed

	mu        sync.Mutex
	calls     map[string]*call
	abandoned int  // calls whose caller left and the child still runs
	gone      bool // stdout ended: no call will be answered
	reaped    bool // Wait returned: the pid may be reused, never signal it
	stopping  bool // asked to exit (Stop): its exit is no trouble
}

// spawn starts the command in a process group of its own (so that killing
// it kills what it started too) and waits for its ready line.
func (c *Child) spawn(ctx context.Context) (*process, error) {
	dir, err := os.MkdirTemp(c.cfg.TempDir, "executor-"+c.cfg.Name+"-")
	if err != nil {
		return nil, fmt.Errorf("executor %s: making its temp dir: %w", c.cfg.Name, err)
	}
	cmd := exec.Command(c.cfg.Bin, c.cfg.Args...)
	// exec keeps the last of duplicate keys, so these override the
	// worker's own values.
	cmd.Env = os.Environ()
	for _, k := range slices.Sorted(maps.Keys(c.cfg.Env)) {
		cmd.Env = append(cmd.Env, k+"="+c.cfg.Env[k])
	}
	cmd.Env = append(cmd.Env, "TMPDIR="+dir)
	// Its own process group, so a kill reaches what it starts; and killed
	// with the worker, so a worker that dies (kill -9) leaves no executor
	// holding a GPU.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdin, err1 := cmd.StdinPipe()
	stdout, err2 := cmd.StdoutPipe()
	stderr, err3 := cmd.StderrPipe()
	if err := errors.Join(err1, err2, err3); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("executor %s: %w", c.cfg.Name, err)
	}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("executor %s: starting %s: %w", c.cfg.Name, c.cfg.Bin, err)
	}
	p := &process{
		name: c.cfg.Name, log: c.log, cmd: cmd, stdin: stdin, dir: dir, began: time.Now(),
		enc:   ndjson.NewEncoder(stdin, ndjson.MaxLine),
		ready: make(chan struct{}), done: make(chan struct{}),
		calls: map[string]*call{},
	}
	c.log.Info("executor started", "pid", cmd.Process.Pid, "tmpdir", dir)
	logged := make(chan struct{})
	go func() { defer close(logged); p.logStderr(stderr) }()
	go p.read(stdout, logged)

	timer := time.NewTimer(c.cfg.ReadyTimeout)
	defer timer.Stop()
	select {
	case <-p.ready:
		c.log.Info("executor ready", "models", p.models, "after", time.Since(p.began).Round(time.Millisecond))
		return p, nil
	case <-p.done:
		return nil, fmt.Errorf("executor %s exited before printing its ready line (%s)", c.cfg.Name, p.cmd.ProcessState)
	case <-timer.C:
		p.kill()
		<-p.done
		return nil, fmt.Errorf("executor %s printed no ready line within its ready timeout of %s; killed it", c.cfg.Name, c.cfg.ReadyTimeout)
	case <-ctx.Done():
		p.kill()
		<-p.done
		return nil, fmt.Errorf("executor %s: stopped while starting: %w", c.cfg.Name, ctx.Err())
	}
}

// read routes the child's stdout: the ready line, then answers by id.
// When stdout ends the process is exiting or gone; read fails every call
// in flight at once, reaps the process, and closes done.
func (p *process) read(stdout io.Reader, logged <-chan struct{}) {
	dec := ndjson.NewDecoder(stdout, ndjson.MaxLine)
	isReady := false
	var woken []*call // given answers since the last wake-up
	for {
		// Callers hear of their answers once the lines that came together
		// are read, before the next read waits: pieces written at once (a
		// fast model's whole answer) reach their caller as one batch.
		if !dec.LineBuffered() {
			for _, c := range woken {
				c.wake()
			}
			woken = woken[:0]
		}
		line, err := dec.Line()
		var tooLong *ndjson.LineTooLongError
		if errors.As(err, &tooLong) {
			// The request it answered cannot be known; its caller's
			// context bounds the wait.
			p.log.Warn("executor line refused", "err", err)
			continue
		}
		if err != nil {
			break
		}
		if !isReady {
			var r ndjson.Ready
			if json.Unmarshal(line, &r) != nil || !r.Ready {
				p.log.Warn("executor printed something other than its ready line on stdout; ignored", "line", preview(line))
				continue
			}
			p.models, isReady = r.Models, true
			close(p.ready)
			continue
		}
		var a ndjson.Answer
		if err := json.Unmarshal(line, &a); err != nil || a.ID == "" {
			p.log.Warn("executor printed a malformed answer; ignored", "line", preview(line))
		} else if c := p.deliver(a); c != nil && !slices.Contains(woken, c) {
			woken = append(woken, c)
		}
	}

	p.failAll()
	p.kill() // stdout may have closed with the process still running
	<-logged
	err := p.cmd.Wait()
	p.mu.Lock()
	p.reaped = true
	stopping := p.stopping
	p.mu.Unlock()
	level := slog.LevelWarn
	if stopping {
		level = slog.LevelInfo
	}
	p.log.Log(context.Background(), level, "executor exited", "status", p.cmd.ProcessState.String(), "err", err, "up", time.Since(p.began).Round(time.Millisecond))
	if err := os.RemoveAll(p.dir); err != nil {
		p.log.Warn("executor's temp dir not removed", "dir", p.dir, "err", err)
	}
	close(p.done)
}

// logStderr sends each line of the child's stderr to the log.
func (p *process) logStderr(stderr io.Reader) {
	dec := ndjson.NewDecoder(stderr, maxStderrLine)
	for {
		line, err := dec.Line()
		var tooLong *ndjson.LineTooLongError
		switch {
		case errors.As(err, &tooLong):
			p.log.Warn("executor stderr line over the limit skipped", "limit", maxStderrLine)
		case err != nil:
			return
		default:
			p.log.Info("executor stderr", "line", string(line))
		}
	}
}

// kill kills the process group, unless the process is already reaped.
func (p *process) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.reaped {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
}

// register opens a call for id; nil when the process is gone.
func (p *process) register(id string) *call {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gone {
		return nil
	}
	c := &call{woken: make(chan struct{}, 1)}
	p.calls[id] = c
	return c
}

// forget drops a call that was never sent.
func (p *process) forget(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.calls, id)
}

// abandon marks a call whose caller has left: its answer will be
// discarded, and until it comes the call still counts against capacity.
func (p *process) abandon(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.calls[id]; ok && !c.abandoned {
		c.abandoned = true
		p.abandoned++
	}
}

func (p *process) alive() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.gone
}

func (p *process) abandonedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.abandoned
}

// deliver queues an answer for its call, which it returns for the caller
// to wake (nil: no one waits for it).
func (p *process) deliver(a ndjson.Answer) *call {
	p.mu.Lock()
	c, ok := p.calls[a.ID]
	abandoned := ok && c.abandoned
	if ok && a.Final() {
		delete(p.calls, a.ID)
		if c.abandoned {
			p.abandoned--
		}
	}
	p.mu.Unlock()
	switch {
	case !ok:
		p.log.Debug("executor answered a request no one waits for", "id", a.ID)
	case !abandoned:
		c.queued(a)
		return c
	}
	return nil
}

// failAll fails every call in flight with ClassDied.
func (p *process) failAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gone = true
	for id, c := range p.calls {
		if !c.abandoned {
			c.push(ndjson.Answer{ID: id, Error: "died with the request in flight", Class: ClassDied})
		}
	}
	p.calls, p.abandoned = map[string]*call{}, 0
}

// call is one request awaiting its answers. The reader pushes them; the
// caller's Do takes them in order. A queue rather than a channel, so a
// slow caller never holds up the reader and the other calls.
type call struct {
	abandoned bool // guarded by the process's mu

	mu    sync.Mutex
	queue []ndjson.Answer
	woken chan struct{} // holds a token once answers wait
}

func (c *call) push(a ndjson.Answer) {
	c.queued(a)
	c.wake()
}

// queued adds an answer without waking the caller.
func (c *call) queued(a ndjson.Answer) {
	c.mu.Lock()
	c.queue = append(c.queue, a)
	c.mu.Unlock()
}

// wake tells the caller answers wait.
func (c *call) wake() {
	select {
	case c.woken <- struct{}{}:
	default:
	}
}

func (c *call) take() []ndjson.Answer {
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.queue
	c.queue = nil
	return q
}

// preview is the start of a line, for a log.
func preview(line []byte) string {
	const n = 200
	if len(line) > n {
		return string(line[:n]) + "…"
	}
	return string(line)
}
