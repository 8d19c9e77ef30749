package host

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/jobs"
	"github.com/devshard/devshard/jobs/sqlite"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
)

// inferenceWorkers is a group of hosts that run their inferences on one
// external worker, over real HTTP.
type inferenceWorkers struct {
	*hostBundle
	queues []*jobs.Queue
	key    *signing.PrivKey
}

func setupInferenceWorkers(t *testing.T, opts jobs.Options) *inferenceWorkers {
	t.Helper()
	iw := &inferenceWorkers{key: randomKey(t)}
	iw.hostBundle = setupTuned(t, func(i int, c *Config) *jobs.Queue {
		c.Workers = []signing.Address{iw.key.Address()}
		c.InferenceJobs = true
		q := openQueue(t, filepath.Join(t.TempDir(), sqlite.FileName), opts)
		iw.queues = append(iw.queues, q)
		return q
	})
	return iw
}

// executorHost is the host whose queue holds the inference job of req:
// the inference's executor.
func (iw *inferenceWorkers) executorHost(t *testing.T) int {
	t.Helper()
	require.Eventually(t, func() bool { return iw.inferenceHost() >= 0 }, 5*time.Second, 10*time.Millisecond, "an inference job is enqueued")
	return iw.inferenceHost()
}

func (iw *inferenceWorkers) inferenceHost() int {
	for i, q := range iw.queues {
		list, err := q.List(context.Background(), jobs.Filter{All: true})
		if err != nil {
			continue
		}
		for _, j := range list {
			if jobs.IsInference(j.Kind) {
				return i
			}
		}
	}
	return -1
}

func (iw *inferenceWorkers) worker(i int) *hostapi.Worker {
	return hostapi.NewWorker(iw.key, testChainID, iw.urls[i], iw.hosts[i].Address(), &http.Client{Timeout: time.Minute})
}

// runPieces runs c's request on the built-in model and returns its pieces
// and output.
func runPieces(t *testing.T, c *hostapi.ClaimResponse) ([]string, hostapi.InferenceOutput) {
	t.Helper()
	var in hostapi.InferenceInput
	require.NoError(t, json.Unmarshal(c.Input, &in))
	var pieces []string
	res, err := executor.Builtin{}.Execute(context.Background(), in.Request, func(s string) error {
		pieces = append(pieces, s)
		return nil
	})
	require.NoError(t, err)
	return pieces, hostapi.InferenceOutput{Text: res.Text, Usage: res.Usage, FinishReason: res.FinishReason}
}

func outputJSON(t *testing.T, out hostapi.InferenceOutput) []byte {
	t.Helper()
	raw, err := json.Marshal(out)
	require.NoError(t, err)
	return raw
}

// streamed joins the text of a stream's events and counts them; done is
// its last event, the done event or an error.
func streamed(events []hostapi.StreamEvent) (text string, pieces int, done *hostapi.StreamEvent) {
	var sb strings.Builder
	for i, ev := range events {
		if ev.Done || ev.Error != "" {
			done = &events[i]
			continue
		}
		if ev.Text != "" {
			sb.WriteString(ev.Text)
			pieces++
		}
	}
	return sb.String(), pieces, done
}

// An inference runs on the worker, not the host's executor: the worker's
// pieces reach the user one by one, a batch sent twice (a retry after a
// lost reply) is forwarded once, and the host signs the hash of the text
// the user saw.
func TestInferenceStreamsThroughAWorker(t *testing.T) {
	t.Parallel()
	iw := setupInferenceWorkers(t, jobs.Options{})
	req := request(3)
	iw.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	i := iw.executorHost(t)
	w := iw.worker(i)
	ctx := context.Background()

	type ran struct {
		pieces []string
		out    hostapi.InferenceOutput
		err    error
	}
	done := make(chan ran, 1)
	go func() {
		c, err := w.Claim(ctx, 5*time.Second, hostapi.KindInference)
		if err != nil || c == nil {
			done <- ran{err: err}
			return
		}
		if c.Kind != hostapi.KindInference {
			t.Errorf("claimed kind %q, want %q", c.Kind, hostapi.KindInference)
		}
		pieces, out := runPieces(t, c)
		for seq, p := range pieces {
			if err := w.Pieces(ctx, c.Lease, uint64(seq), []string{p}); err != nil {
				done <- ran{err: err}
				return
			}
			if seq == 0 {
				// The same batch again is taken and forwards nothing.
				if err := w.Pieces(ctx, c.Lease, 0, []string{p}); err != nil {
					done <- ran{err: err}
					return
				}
			}
		}
		done <- ran{pieces, out, w.Finish(ctx, c.Lease, outputJSON(t, out))}
	}()
	status, events, body := iw.infer(t, i, 1, req)
	require.Equal(t, http.StatusOK, status, body)
	got := <-done
	require.NoError(t, got.err)
	require.Greater(t, len(got.pieces), 1, "the built-in model answers in several pieces")

	text, n, end := streamed(events)
	require.Equal(t, got.out.Text, text, "the user saw the worker's text, each piece once (the batch sent twice too)")
	require.LessOrEqual(t, n, len(got.pieces), "pieces that came while the stream wrote go out together")
	require.NotNil(t, end)
	require.Empty(t, end.Error)
	want := executor.Result{Text: text}
	h := want.ResponseHash()
	require.Equal(t, hex.EncodeToString(h[:]), end.ResponseHash)
	require.Empty(t, iw.executors[i].called, "the host's own executor ran nothing")

	j, err := iw.queues[i].List(ctx, jobs.Filter{All: true})
	require.NoError(t, err)
	require.Len(t, j, 1)
	require.Equal(t, jobs.InferenceFor(iw.hosts[i].Address().String()), j[0].Kind, "the job is of this host's inference kind")
	require.Equal(t, jobs.Succeeded, j[0].State)
}

// A worker that streams nothing and sends its whole text at finish still
// answers the user, in one piece.
func TestInferenceJobWithoutPieces(t *testing.T) {
	t.Parallel()
	iw := setupInferenceWorkers(t, jobs.Options{})
	req := request(4)
	iw.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	i := iw.executorHost(t)
	w := iw.worker(i)
	go func() {
		c, err := w.Claim(context.Background(), 5*time.Second)
		if err != nil || c == nil {
			t.Errorf("claim: %v", err)
			return
		}
		_, out := runPieces(t, c)
		if err := w.Finish(context.Background(), c.Lease, outputJSON(t, out)); err != nil {
			t.Error(err)
		}
	}()
	status, events, body := iw.infer(t, i, 1, req)
	require.Equal(t, http.StatusOK, status, body)
	text, n, end := streamed(events)
	require.Equal(t, 1, n)
	res, err := executor.Builtin{}.Execute(context.Background(), req, func(string) error { return nil })
	require.NoError(t, err)
	require.Equal(t, res.Text, text)
	require.NotNil(t, end)
	require.Empty(t, end.Error)
}

// The pieces route takes only the claim's own pieces, in order: a forged
// lease, a batch out of order, a finish whose text is not what was
// streamed, an unknown job, a job no user waits for and a claim of another
// host's inference kind are each refused with a sentence. A worker's fail
// reaches the user.
func TestInferenceJobRefusals(t *testing.T) {
	t.Parallel()
	iw := setupInferenceWorkers(t, jobs.Options{})
	req := request(5)
	iw.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	i := iw.executorHost(t)
	w := iw.worker(i)
	ctx := context.Background()

	status, body := signedPost(t, iw.urls[i]+hostapi.ClaimJob.Path, iw.key, to(iw.hosts[i].Address()),
		hostapi.ClaimRequest{Kinds: []string{string(jobs.InferenceFor("someone-else"))}})
	require.Equal(t, http.StatusBadRequest, status, string(body))
	require.Contains(t, string(body), `ask for \"inference\"`)

	result := make(chan []hostapi.StreamEvent, 1)
	go func() {
		_, events, _ := iw.infer(t, i, 1, req)
		result <- events
	}()
	c, err := w.Claim(ctx, 5*time.Second, hostapi.KindInference)
	require.NoError(t, err)
	require.NotNil(t, c)
	pieces, out := runPieces(t, c)
	require.NoError(t, w.Pieces(ctx, c.Lease, 0, pieces[:1]))

	refused := func(name string, err error, status int, want string) {
		t.Helper()
		var he *hostapi.Error
		require.ErrorAs(t, err, &he, name)
		require.Equal(t, status, he.Status, "%s: %s", name, he.Message)
		require.Contains(t, he.Message, want, name)
	}
	forged := c.Lease
	forged.Token = "forged"
	refused("forged lease", w.Pieces(ctx, forged, 1, []string{"lies"}), http.StatusConflict, "bound to another claim")
	refused("out of order", w.Pieces(ctx, c.Lease, 2, []string{"x"}), http.StatusConflict, "batch 1 of job")
	refused("unknown job", w.Pieces(ctx, hostapi.Lease{JobID: strings.Repeat("ab", 32), Attempt: 1, Token: "x"}, 0, nil), http.StatusNotFound, "no job")
	other := out
	other.Text = "something the user never saw"
	refused("finish with other text", w.Finish(ctx, c.Lease, outputJSON(t, other)), http.StatusBadRequest, "is not the pieces streamed")
	badReason := out
	badReason.FinishReason = "bored"
	refused("bad finish reason", w.Finish(ctx, c.Lease, outputJSON(t, badReason)), http.StatusBadRequest, "finish_reason must be stop or length")

	// A validation job (enqueued by hand) has no user waiting on it.
	v, err := json.Marshal(hostapi.ValidationInput{Host: "elsewhere", Escrow: 9, Inference: 1, Request: req})
	require.NoError(t, err)
	vj, _, err := iw.queues[i].Enqueue(ctx, jobs.KindValidation, v)
	require.NoError(t, err)
	vc, err := w.Claim(ctx, time.Second, string(jobs.KindValidation))
	require.NoError(t, err)
	require.Equal(t, vj.ID, vc.Lease.JobID)
	refused("not an awaited inference", w.Pieces(ctx, vc.Lease, 0, []string{"x"}), http.StatusGone, "no user waits on this host")

	j, err := iw.queues[i].Get(ctx, c.Lease.JobID)
	require.NoError(t, err)
	require.Equal(t, jobs.Running, j.State, "the refusals changed nothing")

	require.NoError(t, w.Fail(ctx, c.Lease, hostapi.ErrorClassExecution, "the GPU caught fire"))
	events := <-result
	_, _, end := streamed(events)
	require.NotNil(t, end)
	require.Contains(t, end.Error, "the GPU caught fire")
}

// A worker that dies before its first piece costs nothing: the lease runs
// out, the job is claimed again, and the user gets the retry's answer.
// The dead worker's late pieces are refused.
func TestInferenceJobRetriedBeforeItsFirstPiece(t *testing.T) {
	t.Parallel()
	iw := setupInferenceWorkers(t, jobs.Options{HeartbeatTimeout: 2 * time.Second, MaxTry: 3})
	req := request(6)
	iw.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	i := iw.executorHost(t)
	w := iw.worker(i)
	ctx := context.Background()
	dead, err := w.Claim(ctx, 5*time.Second, hostapi.KindInference)
	require.NoError(t, err)
	require.NotNil(t, dead)
	result := make(chan []hostapi.StreamEvent, 1)
	go func() {
		_, events, _ := iw.infer(t, i, 1, req)
		result <- events
	}()
	// The dead worker never heartbeats; after the timeout the job is
	// claimed again.
	retry, err := w.Claim(ctx, 10*time.Second, hostapi.KindInference)
	require.NoError(t, err)
	require.NotNil(t, retry)
	require.Equal(t, 2, retry.Lease.Attempt)
	pieces, out := runPieces(t, retry)
	require.NoError(t, w.Pieces(ctx, retry.Lease, 0, pieces))
	var he *hostapi.Error
	require.ErrorAs(t, w.Pieces(ctx, dead.Lease, 0, []string{"stale"}), &he)
	require.Equal(t, http.StatusConflict, he.Status, he.Message)
	require.NoError(t, w.Finish(ctx, retry.Lease, outputJSON(t, out)))
	text, _, end := streamed(<-result)
	require.Equal(t, out.Text, text)
	require.NotNil(t, end)
	require.Empty(t, end.Error)
}

// A worker that dies mid-stream fails the request (the user has half an
// answer, which a retry would repeat), and the job is removed so that no
// worker runs it for nobody.
func TestInferenceJobLostMidStream(t *testing.T) {
	t.Parallel()
	iw := setupInferenceWorkers(t, jobs.Options{HeartbeatTimeout: time.Second})
	req := request(7)
	iw.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	i := iw.executorHost(t)
	w := iw.worker(i)
	ctx := context.Background()
	result := make(chan []hostapi.StreamEvent, 1)
	go func() {
		_, events, _ := iw.infer(t, i, 1, req)
		result <- events
	}()
	c, err := w.Claim(ctx, 5*time.Second, hostapi.KindInference)
	require.NoError(t, err)
	require.NotNil(t, c)
	pieces, _ := runPieces(t, c)
	require.NoError(t, w.Pieces(ctx, c.Lease, 0, pieces[:1]))
	_, _, end := streamed(<-result)
	require.NotNil(t, end)
	require.Contains(t, end.Error, "stopped heartbeating mid-stream")
	_, err = iw.queues[i].Get(ctx, c.Lease.JobID)
	require.ErrorIs(t, err, jobs.ErrNotFound, "the abandoned job is removed")
}

// With no worker to claim it, an inference fails after the heartbeat
// timeout with a sentence that says so, and its job is removed.
func TestInferenceJobNeverClaimed(t *testing.T) {
	t.Parallel()
	iw := setupInferenceWorkers(t, jobs.Options{HeartbeatTimeout: time.Second})
	req := request(8)
	iw.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	i := iw.executorHost(t)
	status, events, body := iw.infer(t, i, 1, req)
	if status == http.StatusOK {
		_, _, end := streamed(events)
		require.NotNil(t, end)
		body = end.Error
	}
	require.Contains(t, body, "no worker claimed the inference within 1s")
	require.Eventually(t, func() bool { return iw.inferenceHost() < 0 }, 5*time.Second, 20*time.Millisecond, "the job is removed")
}

// Only a completed re-run votes against an executor. A validation whose
// worker failed it with class execution (the re-run itself failed) votes
// invalid, as a failed re-run always has; one failed because the model
// could not be prepared or its artifact not loaded (preparation,
// construction: the validator's own trouble) casts no vote at all.
func TestValidationFailedByItsOwnCacheCastsNoVote(t *testing.T) {
	t.Parallel()
	key := randomKey(t)
	var queues []*jobs.Queue
	b := setupTuned(t, func(i int, c *Config) *jobs.Queue {
		c.Workers = []signing.Address{key.Address()}
		q := openQueue(t, filepath.Join(t.TempDir(), sqlite.FileName), jobs.Options{})
		queues = append(queues, q)
		return q
	})
	req := request(9)
	b.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	var exec int
	for i := range b.hosts {
		if status, _, _ := b.infer(t, i, 1, req); status == http.StatusOK {
			exec = i
			break
		}
	}
	resps := b.next(t, nil)
	b.next(t, nil, decodeTxs(t, resps[exec].Mempool)...) // carries the executor's finish: validations are enqueued
	ctx := context.Background()
	classes := map[int]string{}
	for i := range b.hosts {
		if i == exec {
			continue
		}
		class := hostapi.ErrorClassExecution
		if len(classes) == 0 {
			class = "construction"
		}
		classes[i] = class
		w := hostapi.NewWorker(key, testChainID, b.urls[i], b.hosts[i].Address(), &http.Client{Timeout: time.Minute})
		c, err := w.Claim(ctx, 5*time.Second, string(jobs.KindValidation))
		require.NoError(t, err)
		require.NotNil(t, c, "host %d enqueued its validation", i)
		require.NoError(t, w.Fail(ctx, c.Lease, class, "the artifact could not be loaded"))
	}
	for i := range b.hosts {
		b.hosts[i].Wait()
	}
	resps = b.next(t, nil)
	for i, class := range classes {
		var votes []*sessionpb.Validation
		for _, tx := range decodeTxs(t, resps[i].Mempool) {
			if v := tx.GetValidation(); v != nil {
				votes = append(votes, v)
			}
		}
		if class == hostapi.ErrorClassExecution {
			require.NotEmpty(t, votes, "host %d: a failed re-run votes", i)
			for _, v := range votes {
				require.False(t, v.Valid, "host %d: invalid", i)
			}
		} else {
			require.Empty(t, votes, "host %d: a validation failed by its own cache (%s) casts no vote", i, class)
		}
	}
}

// The finish may carry the last batch of pieces: the user gets every
// piece once, in order (a batch sent before and one with the finish, or
// all of them with the finish: a claim and a finish), and a replayed
// finish after a lost reply is answered again without a piece forwarded
// twice.
func TestInferenceFinishCarriesTheLastPieces(t *testing.T) {
	t.Parallel()
	for _, split := range []int{0, 1} {
		iw := setupInferenceWorkers(t, jobs.Options{})
		req := request(uint64(10 + split))
		iw.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
		i := iw.executorHost(t)
		w := iw.worker(i)
		ctx := context.Background()
		result := make(chan []hostapi.StreamEvent, 1)
		go func() {
			_, events, _ := iw.infer(t, i, 1, req)
			result <- events
		}()
		c, err := w.Claim(ctx, 5*time.Second, hostapi.KindInference)
		require.NoError(t, err)
		require.NotNil(t, c)
		pieces, out := runPieces(t, c)
		require.Greater(t, len(pieces), 2)
		if split > 0 {
			require.NoError(t, w.Pieces(ctx, c.Lease, 0, pieces[:split]))
		}
		require.NoError(t, w.FinishInference(ctx, c.Lease, uint64(split), pieces[split:], outputJSON(t, out)))
		text, _, end := streamed(<-result)
		require.Equal(t, out.Text, text, "split %d: every piece once, in order", split)
		require.NotNil(t, end)
		require.Empty(t, end.Error)
		want := executor.Result{Text: text}
		h := want.ResponseHash()
		require.Equal(t, hex.EncodeToString(h[:]), end.ResponseHash)
		require.NoError(t, w.FinishInference(ctx, c.Lease, uint64(split), pieces[split:], outputJSON(t, out)), "the same finish again")
		j, err := iw.queues[i].Get(ctx, c.Lease.JobID)
		require.NoError(t, err)
		require.Equal(t, jobs.Succeeded, j.State)
	}
}

// A finish's pieces are fenced as the pieces route's: another lease's, a
// batch out of order, and a text that is not every piece joined are
// refused, forward nothing and leave the job running; a batch taken
// already is not forwarded again; a validation's finish carries none.
func TestInferenceFinishPiecesRefusals(t *testing.T) {
	t.Parallel()
	iw := setupInferenceWorkers(t, jobs.Options{})
	req := request(12)
	iw.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	i := iw.executorHost(t)
	w := iw.worker(i)
	ctx := context.Background()
	result := make(chan []hostapi.StreamEvent, 1)
	go func() {
		_, events, _ := iw.infer(t, i, 1, req)
		result <- events
	}()
	c, err := w.Claim(ctx, 5*time.Second, hostapi.KindInference)
	require.NoError(t, err)
	require.NotNil(t, c)
	pieces, out := runPieces(t, c)
	require.Greater(t, len(pieces), 2)
	require.NoError(t, w.Pieces(ctx, c.Lease, 0, pieces[:1]))

	refused := func(name string, err error, status int, want string) {
		t.Helper()
		var he *hostapi.Error
		require.ErrorAs(t, err, &he, name)
		require.Equal(t, status, he.Status, "%s: %s", name, he.Message)
		require.Contains(t, he.Message, want, name)
	}
	forged := c.Lease
	forged.Token = "forged"
	refused("another lease", w.FinishInference(ctx, forged, 1, pieces[1:], outputJSON(t, out)), http.StatusConflict, "bound to another claim")
	refused("out of order", w.FinishInference(ctx, c.Lease, 2, pieces[1:], outputJSON(t, out)), http.StatusConflict, "batch 1 of job")
	refused("a piece short", w.FinishInference(ctx, c.Lease, 1, pieces[2:], outputJSON(t, out)), http.StatusBadRequest, "is not the pieces streamed and sent with it")
	// The first batch again, as a retry would send it: taken already, so
	// the text must be that batch alone.
	refused("replayed batch, whole text", w.FinishInference(ctx, c.Lease, 0, pieces[:1], outputJSON(t, out)), http.StatusBadRequest, "is not the pieces streamed")

	v, err := json.Marshal(hostapi.ValidationInput{Host: "elsewhere", Escrow: 9, Inference: 1, Request: req})
	require.NoError(t, err)
	_, _, err = iw.queues[i].Enqueue(ctx, jobs.KindValidation, v)
	require.NoError(t, err)
	vc, err := w.Claim(ctx, time.Second, string(jobs.KindValidation))
	require.NoError(t, err)
	refused("a validation's finish with pieces", w.FinishInference(ctx, vc.Lease, 0, []string{"x"}, validationJSON(t)), http.StatusBadRequest, "only an inference's finish carries pieces")

	j, err := iw.queues[i].Get(ctx, c.Lease.JobID)
	require.NoError(t, err)
	require.Equal(t, jobs.Running, j.State, "the refusals changed nothing")

	require.NoError(t, w.FinishInference(ctx, c.Lease, 1, pieces[1:], outputJSON(t, out)))
	text, _, end := streamed(<-result)
	require.Equal(t, out.Text, text, "nothing the refused finishes carried reached the user")
	require.NotNil(t, end)
	require.Empty(t, end.Error)
}

func validationJSON(t *testing.T) []byte {
	t.Helper()
	raw, err := json.Marshal(hostapi.ValidationResult{ResponseHash: strings.Repeat("ab", 32)})
	require.NoError(t, err)
	return raw
}
