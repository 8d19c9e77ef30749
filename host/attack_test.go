package host

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/httpauth"
	"github.com/devshard/devshard/internal/httpserve"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
)

// Attacks on the host's HTTP API, each by a party the host must not trust:
// a co-host, a stranger, an executor. Each test asserts the refusal; the
// comment says how it was seen to fail without the defence.

// grants is an Authorizer holding explicit warm-key grants.
type grants struct {
	mu sync.Mutex
	by map[[2]signing.Address]session.Kind
}

func (g *grants) MayActFor(holder, signer signing.Address, kind session.Kind) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	k, ok := g.by[[2]signing.Address{holder, signer}]
	return ok && k == kind
}

func newKey(t *testing.T, seed int64) *signing.PrivKey {
	t.Helper()
	k, err := signing.GenerateKey(rand.New(rand.NewSource(seed)))
	require.NoError(t, err)
	return k
}

func inferenceBody(t *testing.T, id uint64, req executor.Request) []byte {
	t.Helper()
	raw, err := json.Marshal(hostapi.InferenceRequest{Nonce: id, Request: req})
	require.NoError(t, err)
	return raw
}

// Item 1: every member sees the prompt in the diff broadcast. A co-host
// that opened the executor's stream first would receive the answer and the
// executor's signed txs, and the gateway's own request would be refused
// ("it runs once"), so the gateway marks the honest executor down and pays
// for a retry. Only the creator, or a key it granted, opens the stream.
//
// Without the defence (the route took no credentials) the co-host's
// stream was 200 with the done event and both txs, and the gateway's
// request after it 400 "it runs once" (checked on the parent commit).
func TestAttackCoHostHijacksInferenceStream(t *testing.T) {
	t.Parallel()
	b := setup(t)
	warm := newKey(t, 101)
	b.hosts[1].cfg.Auth = &grants{by: map[[2]signing.Address]session.Kind{{b.f.Gateway.Address(), warm.Address()}: session.KindDiff}} // before any traffic
	req := request(1)
	b.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	require.True(t, b.ran(t, 1, req), "the diff started the run (run-ahead)")
	raw := inferenceBody(t, 1, req)

	for _, c := range []struct {
		name string
		key  signing.Signer
		want string
	}{
		{"unsigned", nil, "request is not signed"},
		{"a co-host", b.f.Hosts[0], b.f.Hosts[0].Address().String() + " is neither"},
		{"the executor itself", b.f.Hosts[1], b.f.Hosts[1].Address().String() + " is neither"},
		{"a stranger", newKey(t, 102), "is neither"},
	} {
		status, _, body := b.inferAs(t, 1, c.key, 1, raw)
		require.Equal(t, http.StatusForbidden, status, "%s: %s", c.name, body)
		require.Contains(t, body, "the escrow's creator (or a key it granted)", c.name)
		require.Contains(t, body, c.want, c.name)
	}
	select {
	case got := <-b.executors[1].called:
		t.Fatalf("a refused stream ran the model again, on %v", got)
	default:
	}

	// The gateway's warm key opens it, and gets the answer and the txs.
	status, events, body := b.inferAs(t, 1, warm, 1, raw)
	require.Equal(t, http.StatusOK, status, body)
	done := events[len(events)-1]
	require.True(t, done.Done)
	require.Len(t, done.Txs, 2)
}

// Item 2, first half: deliveries of diffs come from the gateway or a
// member; anything else is refused before the body is decoded, the
// escrow's session touched or a payload looked at.
//
// Without the defence the stranger's malformed body was 400 "malformed
// JSON body" and its well-formed diff was applied (200).
func TestAttackStrangerDeliversDiffs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	warm := newKey(t, 105)
	auth := &grants{by: map[[2]signing.Address]session.Kind{{b.f.Hosts[2].Address(), warm.Address()}: session.KindFinish}}
	b.hosts[0].cfg.Auth = auth // before any traffic
	b.next(t, nil)
	d, err := b.gw.Next()
	require.NoError(t, err)
	raw, err := d.Marshal()
	require.NoError(t, err)
	stranger := newKey(t, 103)
	url := fmt.Sprintf("%s/v1/sessions/7/diffs", b.urls[0])
	appends, _ := b.stores[0].writes()
	for _, body := range []any{[]byte("{"), hostapi.DiffRequest{Diff: raw}} {
		status, out := signedPost(t, url, stranger, to(b.hosts[0].Address()), body)
		require.Equal(t, http.StatusForbidden, status, string(out))
		require.Contains(t, string(out), "is for a group member or the escrow's creator")
		status, out = post(t, url, body)
		require.Equal(t, http.StatusForbidden, status, string(out))
		require.Contains(t, string(out), httpauth.ErrUnsigned.Error())
	}
	after, _ := b.stores[0].writes()
	require.Equal(t, appends, after, "nothing was stored")
	nonce, _ := b.state(t, 0)
	require.Equal(t, uint64(1), nonce)

	// A member's warm key delivers, once granted for state signatures.
	status, out := signedPost(t, url, warm, to(b.hosts[0].Address()), hostapi.DiffRequest{Diff: raw})
	require.Equal(t, http.StatusForbidden, status, "granted only for finishes: %s", out)
	auth.mu.Lock()
	auth.by[[2]signing.Address{b.f.Hosts[2].Address(), warm.Address()}] = session.KindState
	auth.mu.Unlock()
	status, out = signedPost(t, url, warm, to(b.hosts[0].Address()), hostapi.DiffRequest{Diff: raw})
	require.Equal(t, http.StatusOK, status, string(out))
}

// Item 2: the executor gets each diff first. It re-posts it to a peer
// without the request payloads (as a member it may deliver diffs); the
// gateway's delivery, with the payloads, is then a byte-identical replay.
// The replay must keep the payloads (they match the prompt hashes the
// stored diff commits to), or the peer cannot validate and the executor
// is paid for anything it returns.
//
// Without replayPayloads the peer logged "cannot validate: request
// payload unknown", its executor was never asked, and it pooled no vote:
// the test failed at "host 0 re-ran the inference" (checked by removing
// the call in ApplyDiffs, and on the parent commit).
func TestAttackExecutorStripsPayloadsToSuppressValidation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req := request(1)
	reqs := map[uint64]executor.Request{1: req}
	d, err := b.gw.Next(startTx(1, req))
	require.NoError(t, err)
	raw, err := d.Marshal()
	require.NoError(t, err)

	// The executor, host 1, has the diff first.
	status, _, body := b.send(t, 1, d, reqs)
	require.Equal(t, http.StatusOK, status, body)
	// It re-posts it to host 0 without the payloads, signed as itself.
	status, out := signedPost(t, b.urls[0]+"/v1/sessions/7/diffs", b.f.Hosts[1], to(b.hosts[0].Address()), hostapi.DiffRequest{Diff: raw})
	require.Equal(t, http.StatusOK, status, string(out))
	// Then the gateway's deliveries arrive, with the payloads.
	for i := range b.hosts {
		if i != 1 {
			status, _, body = b.send(t, i, d, reqs)
			require.Equal(t, http.StatusOK, status, body)
		}
	}
	// The executor answers; its finish is carried to everyone.
	status, events, body := b.infer(t, 1, 1, req)
	require.Equal(t, http.StatusOK, status, body)
	b.next(t, nil, decodeTxs(t, events[len(events)-1].Txs)...)
	require.True(t, b.ran(t, 0, req), "host 0 re-ran the inference: it kept the payload")
	b.hosts[0].Wait()
	resps := b.next(t, nil)
	votes := decodeTxs(t, resps[0].Mempool)
	require.Len(t, votes, 1)
	require.Equal(t, uint64(1), votes[0].GetValidation().GetInferenceId())
	require.True(t, votes[0].GetValidation().GetValid())

	// A replay carrying a payload that does not match the stored diff is
	// refused.
	status, _, body = b.send(t, 0, d, map[uint64]executor.Request{1: request(2)})
	require.Equal(t, http.StatusBadRequest, status, body)
	require.Contains(t, body, "does not match its prompt hash")
}

// Item 2, the executor's side: a host that executes an inference and got
// its diff without the payload starts the run when a replay brings it.
// Without replayPayloads the run never started and the stream waited for
// the diff, then ran the ordinary way; here the run must exist right after
// the replay (checked by removing the call).
func TestAttackReplayWithPayloadStartsTheExecutorsRun(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req := request(1)
	d, err := b.gw.Next(startTx(1, req))
	require.NoError(t, err)
	status, _, body := b.send(t, 1, d, nil)
	require.Equal(t, http.StatusOK, status, body)
	status, _, body = b.send(t, 1, d, map[uint64]executor.Request{1: req})
	require.Equal(t, http.StatusOK, status, body)
	require.True(t, b.ran(t, 1, req), "the replay started the run")
	b.hosts[1].runs.mu.Lock()
	_, ok := b.hosts[1].runs.byKey[runKey{7, 1}]
	b.hosts[1].runs.mu.Unlock()
	require.True(t, ok)
	status, events, body := b.infer(t, 1, 1, req)
	require.Equal(t, http.StatusOK, status, body)
	require.Len(t, events[len(events)-1].Txs, 2)
}

// Item a: a signed request holds only for the host, the chain and the body
// it was signed for.
//
// Without the defence (the signature covered the method, the URI and the
// time) the read signed for host 0 was answered 200 by host 1, and the
// POST routes took no signature at all, so a changed body went through
// (checked on the parent commit).
func TestAttackSignedRequestReplayedElsewhere(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.next(t, nil)
	do := func(r *http.Request) (int, string) {
		resp, err := http.DefaultClient.Do(r)
		require.NoError(t, err)
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(out)
	}
	const refused = "does not verify for this request to host"

	// A read signed for host 0, sent to host 1.
	for0, err := http.NewRequest("GET", b.urls[0]+"/v1/sessions/7/mempool", nil)
	require.NoError(t, err)
	require.NoError(t, httpauth.Sign(for0, nil, b.f.Gateway, to(b.hosts[0].Address()), time.Now()))
	status, _ := do(for0.Clone(t.Context()))
	require.Equal(t, http.StatusOK, status, "host 0 takes it")
	at1, err := http.NewRequest("GET", b.urls[1]+"/v1/sessions/7/mempool", nil)
	require.NoError(t, err)
	at1.Header.Set(httpauth.Header, for0.Header.Get(httpauth.Header))
	status, body := do(at1)
	require.Equal(t, http.StatusForbidden, status, body)
	require.Contains(t, body, refused)

	// The gateway's delivery with its body changed: the payloads stripped.
	req := request(2)
	d, err := b.gw.Next(startTx(2, req))
	require.NoError(t, err)
	raw, err := d.Marshal()
	require.NoError(t, err)
	signedBody, err := json.Marshal(hostapi.DiffRequest{Diff: raw, Requests: map[uint64]executor.Request{2: req}})
	require.NoError(t, err)
	stripped, err := json.Marshal(hostapi.DiffRequest{Diff: raw})
	require.NoError(t, err)
	tampered, err := http.NewRequest("POST", b.urls[0]+"/v1/sessions/7/diffs", bytes.NewReader(stripped))
	require.NoError(t, err)
	require.NoError(t, httpauth.Sign(tampered, signedBody, b.f.Gateway, to(b.hosts[0].Address()), time.Now()))
	status, body = do(tampered)
	require.Equal(t, http.StatusForbidden, status, body)
	require.Contains(t, body, refused)

	// Signed for another chain.
	other, err := http.NewRequest("POST", b.urls[0]+"/v1/sessions/7/diffs", bytes.NewReader(signedBody))
	require.NoError(t, err)
	require.NoError(t, httpauth.Sign(other, signedBody, b.f.Gateway, httpauth.Audience{ChainID: "devshard-other", Host: b.hosts[0].Address()}, time.Now()))
	status, body = do(other)
	require.Equal(t, http.StatusForbidden, status, body)
	require.Contains(t, body, refused)

	nonce, _ := b.state(t, 0)
	require.Equal(t, uint64(1), nonce, "nothing refused was applied")
	status, _, body = b.send(t, 0, d, map[uint64]executor.Request{2: req})
	require.Equal(t, http.StatusOK, status, body)
}

// Item d: a co-host puts a FinishInference for an inference that does not
// exist into its peers' mempools. The host checks a gossiped tx against
// the session before pooling it.
//
// Without the defence the ghost finish was answered 202 (checked on the
// parent commit, and by pooling without the Includable check).
func TestAttackGossipOfATxTheSessionCannotInclude(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req := request(1)
	b.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	url := b.urls[0] + "/v1/sessions/7/gossip"
	gossip := func(tx *sessionpb.Tx) (int, string) {
		raw, err := tx.Marshal()
		require.NoError(t, err)
		status, out := signedPost(t, url, b.f.Hosts[1], to(b.hosts[0].Address()), hostapi.GossipRequest{Tx: raw})
		return status, string(out)
	}
	ghost := b.f.Finish(1, 99, 1, 1)
	status, body := gossip(ghost)
	require.Equal(t, http.StatusConflict, status, body)
	require.Contains(t, body, "inference 99 is not live in this session")
	vote := b.f.Validate(2, 1, true) // inference 1 is not finished yet
	status, body = gossip(vote)
	require.Equal(t, http.StatusConflict, status, body)
	require.Contains(t, body, "inference 1 is INFERENCE_STATUS_PENDING; a Validation applies only")
	require.Empty(t, b.pooled(t, 0), "nothing was pooled")

	status, body = gossip(b.f.Confirm(1, 1, 5))
	require.Equal(t, http.StatusAccepted, status, body)
	require.Len(t, b.pooled(t, 0), 1)
}

// Item b at the host: a signed body that trickles in is cut at the body
// bound and answered 408, before any work. Without the bound the host
// waited for the last byte (the test's 5 s cut).
func TestAttackSlowBodyIsCut(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.next(t, nil)
	srv := httptest.NewServer(httpserve.BodyDeadline(Handler(b.hosts[0], "test"), 300*time.Millisecond))
	t.Cleanup(srv.Close)
	raw, err := b.f.Confirm(1, 1, 5).Marshal()
	require.NoError(t, err)
	body, err := json.Marshal(hostapi.GossipRequest{Tx: raw})
	require.NoError(t, err)
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/v1/sessions/7/gossip", bytes.NewReader(body))
	require.NoError(t, err)
	require.NoError(t, httpauth.Sign(req, body, b.f.Hosts[1], to(b.hosts[0].Address()), time.Now()))

	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	require.NoError(t, err)
	defer conn.Close()
	_, err = fmt.Fprintf(conn, "POST /v1/sessions/7/gossip HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s: %s\r\nContent-Length: %d\r\n\r\n", httpauth.Header, req.Header.Get(httpauth.Header), len(body))
	require.NoError(t, err)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for _, c := range body {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := conn.Write([]byte{c}); err != nil {
				return
			}
		}
	}()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
	began := time.Now()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	require.Equal(t, http.StatusRequestTimeout, resp.StatusCode, string(out))
	require.Contains(t, string(out), httpserve.ErrSlowBody.Error())
	require.Less(t, time.Since(began), 2*time.Second)
}
