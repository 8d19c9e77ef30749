package host

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
)

// startWait is the engines' StartWait in these tests: short, so a test of a
// request whose diff never comes does not wait the default.
const startWait = 300 * time.Millisecond

// watchedExecutor is the built-in model, reporting every request it runs.
type watchedExecutor struct {
	executor.Builtin
	called chan executor.Request
}

func (w *watchedExecutor) Execute(ctx context.Context, req executor.Request, emit func(string) error) (executor.Result, error) {
	select {
	case w.called <- req:
	default:
	}
	return w.Builtin.Execute(ctx, req, emit)
}

// ran waits for host i's executor to be asked to run req.
func (b *hostBundle) ran(t *testing.T, i int, req executor.Request) bool {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case got := <-b.executors[i].called:
			if got.PromptHash() == req.PromptHash() {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

type inferOutcome struct {
	status int
	text   string
	body   string
	txs    int
}

// inferAsync runs b.infer in the background.
func (b *hostBundle) inferAsync(t *testing.T, host int, id uint64, req executor.Request) <-chan inferOutcome {
	out := make(chan inferOutcome, 1)
	go func() {
		status, events, body := b.infer(t, host, id, req)
		o := inferOutcome{status: status, body: body}
		for _, ev := range events {
			o.text += ev.Text
			if ev.Done {
				o.txs = len(ev.Txs)
			}
		}
		out <- o
	}()
	return out
}

func TestExecutorStreamsWhileTheDiffIsStored(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req := request(4)
	d, err := b.gw.Next(startTx(1, req))
	require.NoError(t, err)
	gate := make(chan struct{})
	var release sync.Once
	unblock := func() { release.Do(func() { close(gate) }) }
	t.Cleanup(unblock) // a failing test must not leave the write hanging
	b.stores[1].mu.Lock()
	b.stores[1].gate = gate
	b.stores[1].mu.Unlock()
	applied := make(chan hostapi.DiffResponse, 1)
	go func() {
		status, resp, _ := b.send(t, 1, d, map[uint64]executor.Request{1: req})
		if status != http.StatusOK {
			resp.Nonce = 0
		}
		applied <- resp
	}()
	stream := b.inferAsync(t, 1, 1, req)

	require.True(t, b.ran(t, 1, req), "the executor runs the inference while its diff is still being stored")
	var o inferOutcome
	select {
	case o = <-stream:
	case <-time.After(5 * time.Second):
		t.Fatal("the stream waited for the diff's durable write")
	}
	require.Equal(t, http.StatusOK, o.status, o.body)
	want, err := executor.Builtin{}.Execute(context.Background(), req, func(string) error { return nil })
	require.NoError(t, err)
	require.Equal(t, want.Text, o.text)
	require.Equal(t, 2, o.txs, "the done event carries the confirm and the finish")
	select {
	case <-applied:
		t.Fatal("the diff's reply, with its state signatures, came before its durable write")
	default:
	}

	unblock()
	resp := <-applied
	require.Equal(t, uint64(1), resp.Nonce)
	require.NotEmpty(t, resp.Signatures)
	b.wait()
	for _, i := range []int{0, 2} {
		status, _, body := b.send(t, i, d, map[uint64]executor.Request{1: req})
		require.Equal(t, http.StatusOK, status, body)
	}
	pool := decodeTxs(t, b.next(t, nil)[1].Mempool)
	require.Len(t, pool, 2, "once the diff is stored, the run's txs are pooled")
	require.NotNil(t, pool[0].GetConfirm())
	require.NotNil(t, pool[1].GetFinish())
	status, _, body := b.infer(t, 1, 1, req)
	require.Equal(t, http.StatusBadRequest, status)
	require.Contains(t, body, "it runs once")
}

func TestADiffNotStoredDropsItsRun(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req := request(5)
	d, err := b.gw.Next(startTx(1, req))
	require.NoError(t, err)
	b.stores[1].mu.Lock()
	b.stores[1].fail = true
	b.stores[1].mu.Unlock()
	status, _, body := b.send(t, 1, d, map[uint64]executor.Request{1: req})
	require.Equal(t, http.StatusServiceUnavailable, status, body)
	status, _, body = b.infer(t, 1, 1, req)
	require.Equal(t, http.StatusBadRequest, status)
	require.Contains(t, body, "no diff started it within")
	en, err := b.hosts[1].session(context.Background(), d.EscrowId)
	require.NoError(t, err)
	pooled := len(en.pool.txs())
	en.mu.Unlock()
	b.hosts[1].runs.mu.Lock()
	runs := len(b.hosts[1].runs.byKey)
	b.hosts[1].runs.mu.Unlock()
	require.Zero(t, runs, "the run of a diff that was not stored is dropped")
	require.Zero(t, pooled)

	// Stored on the second try, the inference runs as if the first never was.
	b.stores[1].mu.Lock()
	b.stores[1].fail = false
	b.stores[1].mu.Unlock()
	status, _, body = b.send(t, 1, d, map[uint64]executor.Request{1: req})
	require.Equal(t, http.StatusOK, status, body)
	o := <-b.inferAsync(t, 1, 1, req)
	require.Equal(t, http.StatusOK, o.status, o.body)
	require.NotEmpty(t, o.text)
	require.Equal(t, 2, o.txs)
}

func TestInferenceWaitsForItsDiff(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req := request(6)
	d, err := b.gw.Next(startTx(1, req))
	require.NoError(t, err)
	stream := b.inferAsync(t, 1, 1, req) // asked before the diff arrives
	time.Sleep(50 * time.Millisecond)
	status, _, body := b.send(t, 1, d, nil) // no payload: the stream brings it
	require.Equal(t, http.StatusOK, status, body)
	o := <-stream
	require.Equal(t, http.StatusOK, o.status, o.body)
	require.True(t, strings.Contains(o.text, " "), "a whole answer: %q", o.text)
	require.Equal(t, 2, o.txs)
}

// A stream sends what the run made since its last look as one event: a run
// that ended before its stream attached goes out as one piece of text, not
// one write per token.
func TestStreamSendsWhatAccumulatedAsOneEvent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req := request(7)
	d, err := b.gw.Next(startTx(1, req))
	require.NoError(t, err)
	status, _, body := b.send(t, 1, d, map[uint64]executor.Request{1: req})
	require.Equal(t, http.StatusOK, status, body)
	var pieces int
	require.Eventually(t, func() bool {
		b.hosts[1].runs.mu.Lock()
		r := b.hosts[1].runs.byKey[runKey{d.EscrowId, 1}]
		b.hosts[1].runs.mu.Unlock()
		if r == nil {
			return false
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		pieces = len(r.pieces)
		return r.ended
	}, 5*time.Second, time.Millisecond, "the run ends without a stream")
	require.Greater(t, pieces, 1, "the model made several pieces")

	status, events, body := b.infer(t, 1, 1, req)
	require.Equal(t, http.StatusOK, status, body)
	want, err := executor.Builtin{}.Execute(context.Background(), req, func(string) error { return nil })
	require.NoError(t, err)
	require.Len(t, events, 2, "one text event and the done event")
	require.Equal(t, want.Text, events[0].Text)
	require.True(t, events[1].Done)
}
