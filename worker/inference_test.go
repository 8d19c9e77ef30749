package worker

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/host"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/jobs"
	"github.com/devshard/devshard/jobs/sqlite"
	"github.com/devshard/devshard/signing"
)

// inferenceRunner runs inferences on an in-process executor.
type inferenceRunner struct{ runner }

func (r *inferenceRunner) Kinds() []string { return []string{hostapi.KindInference} }

// A host's inferences run through a worker end to end, over real HTTP:
// the user gets the model's text, every piece once and in order, whether
// its pieces went through the pieces route or with the finish.
func TestWorkerRunsInferences(t *testing.T) {
	t.Parallel()
	hostKey, workerKey := newKey(t), newKey(t)
	d, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), sqlite.FileName), sqlite.Options{})
	require.NoError(t, err)
	q, err := jobs.New(d, jobs.Options{Volatile: jobs.IsInference})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	e := host.New(host.Config{Key: hostKey, Escrows: noEscrows{}, Executor: executor.Builtin{}, ChainID: chainID,
		Workers: []signing.Address{workerKey.Address()}, InferenceJobs: true, Logger: slog.New(slog.DiscardHandler)})
	e.SetJobs(q)
	e.MarkReady()
	t.Cleanup(e.Close)
	srv := httptest.NewServer(host.Handler(e, "test"))
	t.Cleanup(srv.Close)
	startWorker(t, Config{Host: NewHost(workerKey, chainID, srv.URL, e.Address()), Runner: &inferenceRunner{runner{ex: executor.Builtin{}, slots: 2}}})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for n := range 20 {
		var got strings.Builder
		res, err := e.RunInference(ctx, 1, uint64(n+1), question(n), func(p string) error {
			got.WriteString(p)
			return nil
		})
		require.NoError(t, err, "inference %d", n)
		want, err := executor.Builtin{}.Execute(ctx, question(n), func(string) error { return nil })
		require.NoError(t, err)
		require.Equal(t, want.Text, res.Text, "inference %d", n)
		require.Equal(t, want.Text, got.String(), "inference %d: the user saw every piece once, in order", n)
	}
}

// At the run's end the pieces no call took wait for the call in flight
// and go with the finish, numbered after it; pieces that came with the
// result start no call; a stream that sent nothing hands all its pieces
// to the finish as batch 0.
func TestStreamLastHandsTheRestToTheFinish(t *testing.T) {
	t.Parallel()
	f := &fakeHost{delay: 200 * time.Millisecond, began: make(chan struct{}, 1)}
	s := newStream(context.Background(), f, hostapi.Lease{JobID: "j", Attempt: 1, Token: "t"})
	require.NoError(t, s.add([]string{"a "}, false))
	select {
	case <-f.began:
	case <-time.After(5 * time.Second):
		t.Fatal("the first piece did not leave")
	}
	require.NoError(t, s.add([]string{"b ", "c "}, false))
	require.NoError(t, s.add([]string{"d"}, true))
	seq, rest, err := s.last()
	require.NoError(t, err)
	f.mu.Lock()
	require.Equal(t, [][]string{{"a "}}, f.calls, "the call in flight ended before last returned, and no other was made")
	f.mu.Unlock()
	require.Equal(t, uint64(1), seq)
	require.Equal(t, []string{"b ", "c ", "d"}, rest)

	quiet := &fakeHost{began: make(chan struct{}, 1)}
	s = newStream(context.Background(), quiet, hostapi.Lease{JobID: "k", Attempt: 1, Token: "t"})
	seq, rest, err = s.last()
	require.NoError(t, err)
	require.Zero(t, seq)
	require.Empty(t, rest)

	// A whole answer that came with its result: no pieces call at all.
	s = newStream(context.Background(), quiet, hostapi.Lease{JobID: "l", Attempt: 1, Token: "t"})
	require.NoError(t, s.add([]string{"all ", "at ", "once"}, true))
	require.False(t, s.empty(), "given pieces, the run cannot start over")
	seq, rest, err = s.last()
	require.NoError(t, err)
	require.Zero(t, seq)
	require.Equal(t, []string{"all ", "at ", "once"}, rest)
	quiet.mu.Lock()
	require.Empty(t, quiet.calls)
	quiet.mu.Unlock()
}

// A worker keeps its connections to the host for reuse: draining many
// jobs with many claim loops opens about a connection a loop, not one
// for every few calls (the default transport kept two idle).
func TestWorkerReusesConnections(t *testing.T) {
	t.Parallel()
	hostKey, workerKey := newKey(t), newKey(t)
	d, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), sqlite.FileName), sqlite.Options{})
	require.NoError(t, err)
	q, err := jobs.New(d, jobs.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	e := host.New(host.Config{Key: hostKey, Escrows: noEscrows{}, Executor: executor.Builtin{}, ChainID: chainID,
		Workers: []signing.Address{workerKey.Address()}, Logger: slog.New(slog.DiscardHandler)})
	e.SetJobs(q)
	e.MarkReady()
	t.Cleanup(e.Close)
	var opened atomic.Int32
	srv := httptest.NewUnstartedServer(host.Handler(e, "test"))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			opened.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	h := &realHost{q: q, host: NewHost(workerKey, chainID, srv.URL, e.Address())}

	const slots, count = 8, 160
	var ids []string
	for n := range count {
		ids = append(ids, h.enqueueValidation(t, n))
	}
	// Each run takes a while, as a child's does: meanwhile its loop's
	// connection is idle, with the other loops'.
	startWorker(t, Config{Host: h.host, Runner: &runner{ex: slowExecutor{executor.Builtin{}, 5 * time.Millisecond}, slots: slots}})
	for _, id := range ids {
		waitState(t, q, id, jobs.Succeeded)
	}
	require.LessOrEqual(t, int(opened.Load()), 2*slots, "connections opened for %d jobs by %d loops", count, slots)
}

// slowExecutor is an executor that takes at least pause a run.
type slowExecutor struct {
	executor.Executor
	pause time.Duration
}

func (x slowExecutor) Execute(ctx context.Context, req executor.Request, emit func(string) error) (executor.Result, error) {
	time.Sleep(x.pause)
	return x.Executor.Execute(ctx, req, emit)
}
