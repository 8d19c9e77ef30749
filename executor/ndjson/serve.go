package ndjson

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/devshard/devshard/executor"
)

// Serve is the child's side of the protocol: it prints the ready line with
// exec's models on out, then runs each request read from in through exec,
// at most concurrency at a time, and writes its pieces and final line.
//
// A line that is not a request is answered with a bad_request error when
// it carries an id, and otherwise logged (slog's default logger, which a
// child sends to stderr) and skipped: one bad line never ends the child,
// since the other requests in flight are someone's work.
//
// A prepare task is run through exec's Prepare when exec is an
// executor.Preparer, after the source's sha256 is verified, and otherwise
// answered with a preparation error. A request that names an artifact is
// run by what exec's Load returns for it; loads are kept by path, size and
// modification time, so a file changed since is loaded, and checked,
// again.
//
// Serve returns nil when in ends, after the requests in flight have
// answered, so a worker stops a child by closing its stdin. It returns
// ctx's error when ctx ends, having cancelled the requests in flight, and
// the write error if out fails, since no answer could reach the worker.
func Serve(ctx context.Context, in io.Reader, out io.Writer, exec executor.Executor, concurrency int) error {
	if concurrency < 1 {
		return fmt.Errorf("concurrency must be at least 1, got %d", concurrency)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	enc := NewEncoder(out, MaxLine)
	if err := enc.Encode(Ready{Ready: true, Models: exec.Models()}); err != nil {
		return fmt.Errorf("writing the ready line: %w", err)
	}
	s := &server{exec: exec, enc: enc, cancel: cancel, loaded: map[string]loaded{}}

	// Lines are read in their own goroutine so that ctx can end Serve
	// while a read blocks.
	lines := make(chan []byte)
	readErr := make(chan error, 1)
	go func() {
		dec := NewDecoder(in, MaxLine)
		for {
			line, err := dec.Line()
			var tooLong *LineTooLongError
			switch {
			case errors.As(err, &tooLong):
				slog.Warn("executor: request line refused", "err", err)
				continue
			case err != nil:
				readErr <- err
				return
			}
			select {
			case lines <- append([]byte(nil), line...):
			case <-ctx.Done():
				return
			}
		}
	}()

	slots := make(chan struct{}, concurrency)
	var running sync.WaitGroup
	defer running.Wait()
	for {
		var line []byte
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case err := <-readErr:
			running.Wait()
			if errors.Is(err, io.EOF) {
				return s.writeErr()
			}
			return fmt.Errorf("reading requests: %w", err)
		case line = <-lines:
		}
		req, ok := s.parse(line)
		if !ok {
			continue
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		running.Add(1)
		go func() {
			defer func() { <-slots; running.Done() }()
			s.run(ctx, req)
		}()
	}
}

type server struct {
	exec   executor.Executor
	enc    *Encoder
	cancel context.CancelCauseFunc

	mu       sync.Mutex
	writeBad error

	loadMu sync.Mutex
	loaded map[string]loaded // by path
}

// loaded is an artifact loaded, and the file it was loaded from.
type loaded struct {
	size  int64
	mtime time.Time
	exec  executor.Executor
}

// maxLoaded bounds the artifacts a server keeps loaded; past it they are
// all dropped, as a worker names few and an executor loads fast.
const maxLoaded = 16

// parse reads a request line, answering or logging one it cannot run.
func (s *server) parse(line []byte) (Request, bool) {
	var req Request
	err := json.Unmarshal(line, &req)
	if err != nil {
		// The line may still carry an id worth answering.
		var id struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(line, &id) == nil && id.ID != "" {
			s.answer(Answer{ID: id.ID, Error: "malformed request: " + err.Error(), Class: ClassBadRequest})
			return Request{}, false
		}
		slog.Warn("executor: malformed request line skipped", "err", err, "line", preview(line))
		return Request{}, false
	}
	switch {
	case req.ID == "":
		slog.Warn("executor: request without an id skipped", "line", preview(line))
		return Request{}, false
	case req.Task.Kind == KindPrepare && req.Task.Prepare == nil:
		s.answer(Answer{ID: req.ID, Error: `a prepare task needs a "prepare" object`, Class: ClassBadRequest})
		return Request{}, false
	case req.Task.Kind != KindInference && req.Task.Kind != KindValidation && req.Task.Kind != KindPrepare:
		s.answer(Answer{ID: req.ID, Error: fmt.Sprintf("task kind must be %q, %q or %q, got %q", KindInference, KindValidation, KindPrepare, req.Task.Kind), Class: ClassBadRequest})
		return Request{}, false
	}
	return req, true
}

// run runs one task and writes its answer.
func (s *server) run(ctx context.Context, req Request) {
	if req.Task.Kind == KindPrepare {
		s.prepare(ctx, req.ID, req.Task.Prepare)
		return
	}
	s.execute(ctx, req.ID, &req.Task)
}

// execute runs an inference or a validation the same way: a validation is
// a re-run whose output the worker compares.
func (s *server) execute(ctx context.Context, id string, task *Task) {
	exec := s.exec
	if task.Artifact != "" {
		var err error
		if exec, err = s.load(task.Request.Model, task.Artifact); err != nil {
			s.fail(id, err)
			return
		}
	}
	res, err := exec.Execute(ctx, task.Request, func(text string) error {
		return s.answer(Answer{ID: id, Piece: &text})
	})
	if err != nil {
		s.fail(id, err)
		return
	}
	s.answer(Answer{ID: id, Output: &Output{Text: res.Text, Usage: res.Usage, FinishReason: res.FinishReason}})
}

// prepare runs a preparation.
func (s *server) prepare(ctx context.Context, id string, p *executor.Preparation) {
	prep, ok := s.exec.(executor.Preparer)
	if !ok {
		s.answer(Answer{ID: id, Error: fmt.Sprintf("model %q cannot be prepared: this executor runs its models without artifacts", p.Model), Class: ClassPreparation})
		return
	}
	err := p.Check()
	if err == nil {
		err = p.VerifySource()
	}
	if err != nil {
		s.fail(id, err)
		return
	}
	done, err := prep.Prepare(ctx, *p)
	if err != nil {
		s.fail(id, err)
		return
	}
	s.answer(Answer{ID: id, Output: &Output{Prepared: &done}})
}

// load returns the executor that runs model from the artifact at path,
// loading it unless the same file is loaded already.
func (s *server) load(model, path string) (executor.Executor, error) {
	prep, ok := s.exec.(executor.Preparer)
	if !ok {
		return nil, fmt.Errorf("%w: this executor runs its models without artifacts, yet the task names %s", executor.ErrConstruction, path)
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", executor.ErrConstruction, err)
	}
	key := model + "\x00" + path
	s.loadMu.Lock()
	defer s.loadMu.Unlock()
	if l, ok := s.loaded[key]; ok && l.size == st.Size() && l.mtime.Equal(st.ModTime()) {
		return l.exec, nil
	}
	delete(s.loaded, key)
	exec, err := prep.Load(model, path)
	if err != nil {
		return nil, err
	}
	if len(s.loaded) >= maxLoaded {
		clear(s.loaded)
	}
	s.loaded[key] = loaded{size: st.Size(), mtime: st.ModTime(), exec: exec}
	return exec, nil
}

// fail answers a task with err and the class its sentinel says.
func (s *server) fail(id string, err error) {
	s.answer(Answer{ID: id, Error: err.Error(), Class: classOf(err)})
}

// classOf is the protocol's class for an executor's error.
func classOf(err error) Class {
	switch {
	case errors.Is(err, executor.ErrBadRequest), errors.Is(err, executor.ErrUnknownModel):
		return ClassBadRequest
	case errors.Is(err, executor.ErrPreparation):
		return ClassPreparation
	case errors.Is(err, executor.ErrConstruction):
		return ClassConstruction
	}
	return ClassExecution
}

// answer writes one line. A failed write means the worker can no longer
// hear this child, so it ends Serve.
func (s *server) answer(a Answer) error {
	err := s.enc.Encode(a)
	var tooLong *LineTooLongError
	switch {
	case errors.As(err, &tooLong) && a.Final() && a.Error == "":
		// Only an output can be that long; say so rather than go silent.
		return s.answer(Answer{ID: a.ID, Error: "the output is over the protocol's line limit: " + err.Error(), Class: ClassExecution})
	case err != nil && !errors.As(err, &tooLong):
		s.mu.Lock()
		if s.writeBad == nil {
			s.writeBad = fmt.Errorf("writing answers: %w", err)
		}
		s.mu.Unlock()
		s.cancel(s.writeErr())
	}
	return err
}

func (s *server) writeErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writeBad
}

// preview is the start of a line, for a log.
func preview(line []byte) string {
	const n = 200
	if len(line) > n {
		return string(line[:n]) + "…"
	}
	return string(line)
}
