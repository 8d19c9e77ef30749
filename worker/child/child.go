// Package child runs one executor as a long-lived child process that speaks
// the ndjson protocol, and keeps it running: a child that dies is started
// again after a pause that grows while it keeps dying, and the requests it
// had in flight fail at once rather than hang.
//
// A Child also keeps the count a picker needs (worker/pool): whether it is
// ready, how many requests it runs and how many it may.
package child

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/devshard/devshard/executor/ndjson"
)

// Classes a Child adds to the protocol's own (bad_request, preparation,
// construction, execution), which it passes on unchanged. Both are the
// executor's trouble, not the request's: another executor, or this one
// later, may run it.
const (
	// ClassDied is a request that was in flight when its child died.
	ClassDied ndjson.Class = "executor_died"
	// ClassNotReady is a request sent while the child was starting or
	// restarting.
	ClassNotReady ndjson.Class = "not_ready"
)

// Error is a request the executor did not answer with an output: the
// child's own error line, with its class, or one of the classes above.
type Error struct {
	Executor string
	Class    ndjson.Class
	Message  string
}

func (e *Error) Error() string {
	return fmt.Sprintf("executor %s: %s (%s)", e.Executor, e.Message, e.Class)
}

// Defaults for the Config fields left zero.
const (
	defaultRestartMin = 100 * time.Millisecond
	defaultRestartMax = 10 * time.Second
	defaultStopGrace  = 5 * time.Second
	// stableFor is how long a child must stay up for its next death to
	// count as new trouble, restarting it after RestartMin again.
	stableFor = 30 * time.Second
)

// Config describes one executor child.
type Config struct {
	// Name names the executor in logs and errors, e.g. "gpu0".
	Name string
	// Bin and Args are the command, e.g. devshard and ["executor", "builtin"].
	Bin  string
	Args []string
	// Env is added to the worker's own environment, e.g.
	// CUDA_VISIBLE_DEVICES, so each child can have its own GPU.
	Env map[string]string
	// Kinds and Models are what the executor serves. Models may be left
	// empty to take those the child lists on its ready line; but then,
	// until its first ready line, it serves none, and a pool fails a job
	// for its model rather than wait for it.
	Kinds  []ndjson.Kind
	Models []string
	// Concurrent is how many requests the child runs at once.
	Concurrent int
	// Weight is the executor's share of the work among those that could
	// take a job (worker/pool); zero takes none.
	Weight int
	// ReadyTimeout is how long a started child has to print its ready
	// line before it is killed.
	ReadyTimeout time.Duration
	// TempDir is where each child process gets a directory of its own,
	// passed as TMPDIR and removed when the process ends; the system's
	// temp directory when empty.
	TempDir string
	// RestartMin and RestartMax bound the pause before a restart, which
	// doubles from the one to the other while the child keeps dying; 100
	// ms and 10 s when zero.
	RestartMin, RestartMax time.Duration
	// StopGrace is how long Stop waits for the child to exit once its
	// stdin is closed, before killing it; 5 s when zero.
	StopGrace time.Duration
	// Logger receives the child's stderr, its exits and restarts;
	// slog.Default() when nil.
	Logger *slog.Logger
}

// Child is one supervised executor process.
type Child struct {
	cfg    Config
	log    *slog.Logger
	nextID atomic.Uint64

	mu     sync.Mutex
	proc   *process // the ready process; nil while starting or restarting
	held   int      // slots taken with TryAcquire
	models []string // as the ready line listed them
	// stop ends supervision, which stops the child; supervised is closed
	// when it has, with stopErr set. hurry, closed, has it kill the child
	// without waiting out StopGrace.
	stop       context.CancelFunc
	supervised chan struct{}
	hurry      chan struct{}
	hurryOnce  sync.Once
	stopErr    error
}

// New checks cfg and returns a Child that is not yet started.
func New(cfg Config) (*Child, error) {
	switch {
	case cfg.Name == "":
		return nil, errors.New("an executor needs a name")
	case cfg.Bin == "":
		return nil, fmt.Errorf("executor %s: bin is required", cfg.Name)
	case cfg.Concurrent < 1:
		return nil, fmt.Errorf("executor %s: concurrent must be at least 1, got %d", cfg.Name, cfg.Concurrent)
	case cfg.Weight < 0:
		return nil, fmt.Errorf("executor %s: weight must not be negative, got %d", cfg.Name, cfg.Weight)
	case cfg.ReadyTimeout <= 0:
		return nil, fmt.Errorf("executor %s: ready timeout must be positive, got %s", cfg.Name, cfg.ReadyTimeout)
	case len(cfg.Kinds) == 0:
		return nil, fmt.Errorf("executor %s: it must serve at least one kind (%s, %s)", cfg.Name, ndjson.KindInference, ndjson.KindValidation)
	}
	if cfg.RestartMin <= 0 {
		cfg.RestartMin = defaultRestartMin
	}
	if cfg.RestartMax < cfg.RestartMin {
		cfg.RestartMax = max(defaultRestartMax, cfg.RestartMin)
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = defaultStopGrace
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Child{cfg: cfg, log: log.With("executor", cfg.Name)}, nil
}

// Start starts the child and supervises it until Stop. It returns when the
// first process is ready, or with the reason it is not (it printed no
// ready line within ReadyTimeout, or exited); even then supervision goes
// on, starting it again after a pause, so an executor slow to come up
// joins later. A caller that would rather give up calls Stop. ctx bounds
// only the wait, not the supervision.
func (c *Child) Start(ctx context.Context) error {
	c.mu.Lock()
	if c.supervised != nil {
		c.mu.Unlock()
		return fmt.Errorf("executor %s: already started", c.cfg.Name)
	}
	sctx, stop := context.WithCancel(context.Background())
	c.stop, c.supervised, c.hurry = stop, make(chan struct{}), make(chan struct{})
	c.mu.Unlock()

	first := make(chan error, 1)
	go c.supervise(sctx, first)
	select {
	case err := <-first:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// supervise runs the child, and runs it again when it ends, until ctx
// ends. The first start's outcome goes to first.
func (c *Child) supervise(ctx context.Context, first chan<- error) {
	defer close(c.supervised)
	pause := c.cfg.RestartMin
	for {
		began := time.Now()
		p, err := c.spawn(ctx)
		if err == nil {
			c.mu.Lock()
			c.proc, c.models = p, p.models
			c.mu.Unlock()
		}
		if first != nil { // after c.proc is set, so that Start returns a ready child
			first <- err
			first = nil
		}
		if err == nil {
			select {
			case <-p.done:
			case <-ctx.Done():
			}
			c.mu.Lock()
			c.proc = nil
			c.mu.Unlock()
			if ctx.Err() != nil {
				c.stopErr = c.shutdown(p)
				return
			}
		} else if ctx.Err() == nil {
			c.log.Error("executor did not start", "err", err)
		}
		if ctx.Err() != nil {
			return
		}
		if time.Since(began) >= stableFor {
			pause = c.cfg.RestartMin
		}
		c.log.Warn("restarting executor", "after", pause)
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, c.cfg.RestartMax)
	}
}

// Stop stops supervising and ends the child: it closes the child's stdin,
// which asks it to finish what it runs and exit, waits up to StopGrace, or
// until ctx ends, then kills it. It returns when the process is gone and
// its temp directory removed, with an error if it had to be killed.
func (c *Child) Stop(ctx context.Context) error {
	c.mu.Lock()
	stop, supervised := c.stop, c.supervised
	c.mu.Unlock()
	if stop == nil {
		return nil
	}
	stop()
	select {
	case <-supervised:
	case <-ctx.Done():
		c.hurryOnce.Do(func() { close(c.hurry) })
		<-supervised
	}
	return c.stopErr
}

// shutdown ends p as Stop says.
func (c *Child) shutdown(p *process) error {
	p.mu.Lock()
	p.stopping = true
	p.mu.Unlock()
	p.stdin.Close()
	grace := time.NewTimer(c.cfg.StopGrace)
	defer grace.Stop()
	var err error
	select {
	case <-p.done:
		return nil
	case <-grace.C:
		err = fmt.Errorf("executor %s did not exit within %s of its stdin closing; killed it", c.cfg.Name, c.cfg.StopGrace)
	case <-c.hurry:
		err = fmt.Errorf("executor %s did not exit before Stop's context ended; killed it", c.cfg.Name)
	}
	p.kill()
	<-p.done
	return err
}

// Do runs task on the child, hands onPieces the pieces in order, and
// returns the output. Pieces the child's lines brought together (read at
// once) come in one call; last says the output came with them, so no
// more follow and no output is yet to wait for. A request the child
// fails, or that it cannot take, returns an *Error with its class. When
// ctx ends first, the request is abandoned: Do returns ctx's error, and
// the answer, should it come, is discarded; so is it when onPieces
// returns an error, which Do returns.
//
// Do does not take a slot: a caller that shares the child with others
// takes one with TryAcquire first, as worker/pool does.
func (c *Child) Do(ctx context.Context, task ndjson.Task, onPieces func(pieces []string, last bool) error) (ndjson.Output, error) {
	c.mu.Lock()
	p := c.proc
	c.mu.Unlock()
	if p == nil {
		return ndjson.Output{}, c.fail(ClassNotReady, "not ready: starting or restarting")
	}
	id := strconv.FormatUint(c.nextID.Add(1), 10)
	call := p.register(id)
	if call == nil {
		return ndjson.Output{}, c.fail(ClassDied, "died before the request could be sent")
	}
	if err := p.enc.Encode(ndjson.Request{ID: id, Task: task}); err != nil {
		p.forget(id)
		var tooLong *ndjson.LineTooLongError
		if errors.As(err, &tooLong) {
			return ndjson.Output{}, c.fail(ndjson.ClassBadRequest, "the request is over the protocol's line limit of "+strconv.Itoa(tooLong.Limit)+" bytes")
		}
		return ndjson.Output{}, c.fail(ClassDied, "cannot write to it: "+err.Error())
	}
	for {
		select {
		case <-ctx.Done():
			p.abandon(id)
			return ndjson.Output{}, fmt.Errorf("executor %s: request %s abandoned: %w", c.cfg.Name, id, ctx.Err())
		case <-call.woken:
		}
		var pieces []string
		for _, a := range call.take() {
			switch {
			case a.Output != nil:
				if err := deliverPieces(onPieces, pieces, true); err != nil {
					return ndjson.Output{}, err
				}
				return *a.Output, nil
			case a.Error != "":
				// The pieces before the error were given out, as any.
				if err := deliverPieces(onPieces, pieces, false); err != nil {
					return ndjson.Output{}, err
				}
				class := a.Class
				if class == "" {
					class = ndjson.ClassExecution
				}
				return ndjson.Output{}, c.fail(class, a.Error)
			case a.Piece != nil:
				pieces = append(pieces, *a.Piece)
			}
		}
		if err := deliverPieces(onPieces, pieces, false); err != nil {
			p.abandon(id)
			return ndjson.Output{}, err
		}
	}
}

func deliverPieces(onPieces func([]string, bool) error, pieces []string, last bool) error {
	if len(pieces) == 0 || onPieces == nil {
		return nil
	}
	return onPieces(pieces, last)
}

func (c *Child) fail(class ndjson.Class, msg string) *Error {
	return &Error{Executor: c.cfg.Name, Class: class, Message: msg}
}

// Name is the executor's name.
func (c *Child) Name() string { return c.cfg.Name }

// Weight is the executor's share of the work.
func (c *Child) Weight() int { return c.cfg.Weight }

// Capacity is how many requests the child may run at once.
func (c *Child) Capacity() int { return c.cfg.Concurrent }

// Serves reports whether the executor takes tasks of kind for model.
func (c *Child) Serves(kind ndjson.Kind, model string) bool {
	if !slices.Contains(c.cfg.Kinds, kind) {
		return false
	}
	if len(c.cfg.Models) > 0 {
		return slices.Contains(c.cfg.Models, model)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Contains(c.models, model)
}

// Ready reports whether the child is up and has printed its ready line.
func (c *Child) Ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ready()
}

// ready is Ready with c.mu held. A process whose stdout has ended is not
// ready, although supervise has yet to see it go.
func (c *Child) ready() bool { return c.proc != nil && c.proc.alive() }

// InFlight is how many requests the child runs: the slots taken, and the
// requests abandoned by their callers that the child has not finished
// (it works on them still, so they still use its capacity).
func (c *Child) InFlight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inFlight()
}

func (c *Child) inFlight() int {
	n := c.held
	if c.proc != nil {
		n += c.proc.abandonedCount()
	}
	return n
}

// TryAcquire takes a slot if the child is ready and has one free, and
// reports whether it did. The taker gives it back with Release.
func (c *Child) TryAcquire() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.ready() || c.inFlight() >= c.cfg.Concurrent {
		return false
	}
	c.held++
	return true
}

// Release gives back a slot TryAcquire took.
func (c *Child) Release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held == 0 {
		panic("child: Release without TryAcquire")
	}
	c.held--
}
