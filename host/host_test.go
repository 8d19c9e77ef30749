package host

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/httpauth"
	"github.com/devshard/devshard/jobs"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/sqlite"
)

// fakeChain is a fake of the chain's escrow query: the snapshots it knows.
type fakeChain struct {
	mu    sync.Mutex
	snaps map[uint64]*sessionpb.EscrowSnapshot
}

func (c *fakeChain) EscrowSnapshot(_ context.Context, id uint64) (*sessionpb.EscrowSnapshot, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.snaps[id]
	if !ok {
		return nil, fmt.Errorf("%w: %d", ErrUnknownEscrow, id)
	}
	return s, nil
}

// failingStore is a store whose diff writes fail while fail is set. It
// counts the durable writes the host makes.
type failingStore struct {
	store.Store
	mu      sync.Mutex
	fail    bool
	gate    chan struct{} // if set, a diff write waits for it to close
	appends int           // diff writes (durable commits) that reached the store
	diffs   int           // diffs those writes carried
	puts    int           // PutSignature calls
}

func (s *failingStore) AppendDiff(ctx context.Context, d store.Diff) error {
	return s.AppendDiffs(ctx, []store.Diff{d})
}

func (s *failingStore) AppendDiffs(ctx context.Context, ds []store.Diff) error {
	s.mu.Lock()
	fail, gate := s.fail, s.gate
	if !fail {
		s.appends++
		s.diffs += len(ds)
	}
	s.mu.Unlock()
	if gate != nil {
		<-gate
	}
	if fail {
		return store.Errorf(store.ErrUnavailable, "injected write failure for diffs %d to %d", ds[0].Nonce, ds[len(ds)-1].Nonce)
	}
	return s.Store.AppendDiffs(ctx, ds)
}

func (s *failingStore) PutSignature(ctx context.Context, sig store.Signature) error {
	s.mu.Lock()
	s.puts++
	s.mu.Unlock()
	return s.Store.PutSignature(ctx, sig)
}

func (s *failingStore) writes() (appends, puts int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.appends, s.puts
}

type hostBundle struct {
	f         *sessiontest.Fixture
	gw        *sessiontest.Sequencer
	chain     *fakeChain
	hosts     []*Engine
	stores    []*failingStore
	executors []*watchedExecutor
	urls      []string
	now       time.Time
}

// setup runs one engine per participant of a 3-slot escrow, on real SQLite
// and real HTTP, with a fake chain.
func setup(t *testing.T, mutate ...func(*sessiontest.Options)) *hostBundle {
	t.Helper()
	return setupTuned(t, nil, mutate...)
}

// setupTuned is setup with tune called on each host's config before its
// engine is made; a queue it returns becomes that engine's job queue.
func setupTuned(t *testing.T, tune func(i int, c *Config) *jobs.Queue, mutate ...func(*sessiontest.Options)) *hostBundle {
	t.Helper()
	o := sessiontest.DefaultOptions()
	o.SealGraceNonces = 8
	o.SealGraceSeconds = 0
	for _, m := range mutate {
		m(&o)
	}
	f := sessiontest.New(1, o)
	f.Snapshot.ValidationRateBps = 10000
	b := &hostBundle{f: f, gw: f.Sequencer(), chain: &fakeChain{snaps: map[uint64]*sessionpb.EscrowSnapshot{f.Snapshot.EscrowId: f.Snapshot}}, now: time.Unix(1_800_000_000, 0)}
	for i, key := range f.Hosts {
		st, err := sqlite.Open(context.Background(), t.TempDir(), sqlite.Options{})
		require.NoError(t, err)
		fs := &failingStore{Store: st}
		t.Cleanup(func() { st.Close() })
		ex := &watchedExecutor{called: make(chan executor.Request, 16)}
		cfg := Config{Key: key, Store: fs, Escrows: b.chain, Executor: ex, Now: func() time.Time { return b.now }, StartWait: startWait, ChainID: testChainID, Metrics: NewMetrics()}
		var q *jobs.Queue
		if tune != nil {
			q = tune(i, &cfg)
		}
		e := New(cfg)
		if q != nil {
			e.SetJobs(q)
		}
		e.MarkReady()
		srv := httptest.NewServer(Handler(e, "test"))
		t.Cleanup(srv.Close)
		t.Cleanup(e.Close)
		t.Cleanup(e.Wait)
		b.hosts = append(b.hosts, e)
		b.stores = append(b.stores, fs)
		b.executors = append(b.executors, ex)
		b.urls = append(b.urls, srv.URL)
	}
	return b
}

func request(n uint64) executor.Request {
	return executor.Request{Model: executor.BuiltinModel, MaxTokens: 20, Messages: []executor.Message{{Role: "user", Content: fmt.Sprintf("question %d", n)}}}
}

func startTx(id uint64, req executor.Request) *sessionpb.Tx {
	h := req.PromptHash()
	return &sessionpb.Tx{Body: &sessionpb.Tx_Start{Start: &sessionpb.StartInference{
		InferenceId: id, InputTokens: uint64(executor.PromptTokens(req.Messages)), MaxTokens: uint64(req.MaxTokens), PromptHash: h[:], Model: req.Model,
	}}}
}

// testChainID is the chain the test hosts serve on.
const testChainID = "devshard-test"

// to is the audience of a signed request to the host at addr.
func to(addr signing.Address) httpauth.Audience {
	return httpauth.Audience{ChainID: testChainID, Host: addr}
}

// post posts body to url unsigned.
func post(t *testing.T, url string, body any) (int, []byte) {
	t.Helper()
	return signedPost(t, url, nil, httpauth.Audience{}, body)
}

// signedPost posts body to url, signed by key (nil: unsigned) for aud.
func signedPost(t *testing.T, url string, key signing.Signer, aud httpauth.Audience, body any) (int, []byte) {
	t.Helper()
	var raw []byte
	switch v := body.(type) {
	case []byte:
		raw = v
	default:
		var err error
		raw, err = json.Marshal(body)
		require.NoError(t, err)
	}
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(raw))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if key != nil {
		require.NoError(t, httpauth.Sign(req, raw, key, aud, time.Now()))
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, out
}

// gwPost posts body to path on host i, signed by the escrow's creator.
func (b *hostBundle) gwPost(t *testing.T, i int, path string, body any) (int, []byte) {
	t.Helper()
	return signedPost(t, b.urls[i]+path, b.f.Gateway, to(b.hosts[i].Address()), body)
}

// send posts diff d (with payloads) to host i.
func (b *hostBundle) send(t *testing.T, i int, d *sessionpb.Diff, reqs map[uint64]executor.Request) (int, hostapi.DiffResponse, string) {
	t.Helper()
	raw, err := d.Marshal()
	require.NoError(t, err)
	status, body := b.gwPost(t, i, fmt.Sprintf("/v1/sessions/%d/diffs", d.EscrowId), hostapi.DiffRequest{Diff: raw, Requests: reqs})
	var resp hostapi.DiffResponse
	if status == http.StatusOK {
		require.NoError(t, json.Unmarshal(body, &resp))
	}
	return status, resp, string(body)
}

// next builds the gateway's next diff and sends it to every host, checking
// each signs the gateway's root.
func (b *hostBundle) next(t *testing.T, reqs map[uint64]executor.Request, txs ...*sessionpb.Tx) []hostapi.DiffResponse {
	t.Helper()
	d, err := b.gw.Next(txs...)
	require.NoError(t, err)
	var out []hostapi.DiffResponse
	root := b.gw.Replica.Root()
	for i := range b.hosts {
		status, resp, body := b.send(t, i, d, reqs)
		require.Equal(t, http.StatusOK, status, body)
		require.Equal(t, hex.EncodeToString(root[:]), resp.Root)
		for _, raw := range resp.Signatures {
			var ss sessionpb.StateSignature
			require.NoError(t, ss.Unmarshal(raw))
			require.NoError(t, session.VerifyStateSignature(b.f.Snapshot, &ss, nil))
		}
		out = append(out, resp)
	}
	return out
}

// infer runs inference id on its executor over HTTP and returns the events.
func (b *hostBundle) infer(t *testing.T, host int, id uint64, req executor.Request) (int, []hostapi.StreamEvent, string) {
	t.Helper()
	raw, err := json.Marshal(hostapi.InferenceRequest{Nonce: id, Request: req})
	require.NoError(t, err)
	return b.inferAs(t, host, b.f.Gateway, id, raw)
}

// inferAs opens the inference stream on host with body raw, signed by key
// (nil: unsigned), and returns the events.
func (b *hostBundle) inferAs(t *testing.T, host int, key signing.Signer, id uint64, raw []byte) (int, []hostapi.StreamEvent, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("%s/v1/sessions/%d/inference", b.urls[host], b.f.Snapshot.EscrowId), bytes.NewReader(raw))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if key != nil {
		require.NoError(t, httpauth.Sign(req, raw, key, to(b.hosts[host].Address()), time.Now()))
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, nil, string(body)
	}
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	var events []hostapi.StreamEvent
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var ev hostapi.StreamEvent
			require.NoError(t, json.Unmarshal([]byte(data), &ev))
			events = append(events, ev)
		}
	}
	return resp.StatusCode, events, ""
}

func decodeTxs(t *testing.T, raws [][]byte) []*sessionpb.Tx {
	t.Helper()
	var txs []*sessionpb.Tx
	for _, raw := range raws {
		var tx sessionpb.Tx
		require.NoError(t, tx.Unmarshal(raw))
		txs = append(txs, &tx)
	}
	return txs
}

func TestHonestDiffInferenceAndInclusion(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req := request(3)
	// Inference 1 runs on slot 1: host 1.
	b.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	status, events, body := b.infer(t, 1, 1, req)
	require.Equal(t, http.StatusOK, status, body)
	last := events[len(events)-1]
	require.True(t, last.Done)
	want, err := executor.Builtin{}.Execute(context.Background(), req, func(string) error { return nil })
	require.NoError(t, err)
	var text strings.Builder
	for _, ev := range events[:len(events)-1] {
		text.WriteString(ev.Text)
	}
	require.Equal(t, want.Text, text.String())
	require.Equal(t, want.Usage, *last.Usage)

	// The executor's mempool now carries its ConfirmStart and FinishInference.
	resps := b.next(t, nil)
	pool := decodeTxs(t, resps[1].Mempool)
	require.Len(t, pool, 2)
	require.NotNil(t, pool[0].GetConfirm())
	require.NotNil(t, pool[1].GetFinish())
	// The gateway carries them; they leave the pool; validators re-run.
	resps = b.next(t, nil, pool...)
	require.Empty(t, resps[1].Mempool)
	r, ok := b.gw.Replica.Record(1)
	require.True(t, ok)
	require.Equal(t, sessionpb.InferenceStatus_INFERENCE_STATUS_FINISHED, r.Status)
	for _, h := range b.hosts {
		h.Wait()
	}
	resps = b.next(t, nil)
	votes := append(decodeTxs(t, resps[0].Mempool), decodeTxs(t, resps[2].Mempool)...)
	require.Len(t, votes, 2, "both other hosts are sampled at 100%% and vote")
	for _, v := range votes {
		require.True(t, v.GetValidation().Valid)
	}
	for _, i := range []int{0, 2} {
		list, err := b.hosts[i].Jobs().List(context.Background(), jobs.Filter{All: true})
		require.NoError(t, err)
		require.Len(t, list, 1, "host %d's validation went through its job queue", i)
		require.Equal(t, jobs.Succeeded, list[0].State)
	}
	require.Empty(t, resps[1].Mempool, "an executor never validates itself")
	b.next(t, nil, votes[0])
	_, live := b.gw.Replica.Record(1)
	require.True(t, live, "the other sampled slot has not voted yet")
	b.next(t, nil, votes[1])
	_, live = b.gw.Replica.Record(1)
	require.False(t, live, "validated by every sampled slot and sealed")
}

// state returns host i's nonce and root for escrow 7.
func (b *hostBundle) state(t *testing.T, i int) (uint64, [32]byte) {
	t.Helper()
	en, err := b.hosts[i].session(context.Background(), b.f.Snapshot.EscrowId)
	require.NoError(t, err)
	defer en.mu.Unlock()
	return en.s.Nonce(), en.s.Root()
}

func TestPostDiffBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.next(t, nil) // nonce 1 everywhere
	outsider, err := signing.GenerateKey(rand.New(rand.NewSource(77)))
	require.NoError(t, err)
	good, err := b.gw.Build()
	require.NoError(t, err)
	goodRaw, err := good.Marshal()
	require.NoError(t, err)
	url := fmt.Sprintf("%s/v1/sessions/7/diffs", b.urls[0])
	// Escrow 8 has the same group and creator, so a diff of escrow 7
	// posted to it passes the signature check and meets the escrow check.
	eight := *b.f.Snapshot
	eight.EscrowId = 8
	b.chain.mu.Lock()
	b.chain.snaps[8] = &eight
	b.chain.mu.Unlock()

	cases := []struct {
		name   string
		url    string
		body   any
		status int
		want   string
	}{
		{"malformed JSON", url, []byte("{"), http.StatusBadRequest, "malformed JSON body"},
		{"unknown field", url, []byte(`{"diff":"","bogus":1}`), http.StatusBadRequest, "unknown field"},
		{"no diff", url, hostapi.DiffRequest{}, http.StatusBadRequest, `carry the diff`},
		{"diff not protobuf", url, hostapi.DiffRequest{Diff: []byte{0xff, 0xff, 0xff}}, http.StatusBadRequest, "diff does not decode"},
		{"bad escrow id in path", b.urls[0] + "/v1/sessions/x/diffs", hostapi.DiffRequest{Diff: goodRaw}, http.StatusBadRequest, `escrow id "x" is not a positive integer`},
		{"wrong escrow", b.urls[0] + "/v1/sessions/8/diffs", hostapi.DiffRequest{Diff: goodRaw}, http.StatusBadRequest, "diff is for escrow 7, posted to escrow 8"},
		{"wrong nonce", url, func() hostapi.DiffRequest {
			d := *good
			d.Nonce = 5
			require.NoError(t, session.SignDiff(b.f.Gateway, b.f.Snapshot.ChainId, &d))
			raw, _ := d.Marshal()
			return hostapi.DiffRequest{Diff: raw}
		}(), http.StatusConflict, "nonce must be 2 (latest+1), got 5"},
		{"bad signature", url, func() hostapi.DiffRequest {
			d := *good
			require.NoError(t, session.SignDiff(outsider, sessiontest.ChainID, &d))
			raw, _ := d.Marshal()
			return hostapi.DiffRequest{Diff: raw}
		}(), http.StatusForbidden, "may not sign devshard/v1/diff"},
		{"request not in diff", url, hostapi.DiffRequest{Diff: goodRaw, Requests: map[uint64]executor.Request{2: request(2)}}, http.StatusBadRequest, "which this diff does not start"},
		{"oversized body", url, append(append([]byte(`{"diff":"`), bytes.Repeat([]byte("A"), hostapi.MaxBody)...), `"}`...), http.StatusRequestEntityTooLarge, "body exceeds"},
	}
	nonce, root := b.state(t, 0)
	for _, tc := range cases {
		status, body := signedPost(t, tc.url, b.f.Gateway, to(b.hosts[0].Address()), tc.body)
		require.Equal(t, tc.status, status, "%s: %s", tc.name, body)
		var e map[string]string
		require.NoError(t, json.Unmarshal(body, &e), tc.name)
		require.Contains(t, e["error"], tc.want, tc.name)
		n, r := b.state(t, 0)
		require.Equal(t, nonce, n, tc.name)
		require.Equal(t, root, r, "%s: state unchanged", tc.name)
	}

	// Not a member: an escrow whose group does not include host 0.
	other := sessiontest.New(2, sessiontest.DefaultOptions())
	other.Snapshot.EscrowId = 9
	b.chain.mu.Lock()
	b.chain.snaps[9] = other.Snapshot
	b.chain.mu.Unlock()
	d, err := other.Sequencer().Build()
	require.NoError(t, err)
	raw, _ := d.Marshal()
	status, body := b.gwPost(t, 0, "/v1/sessions/9/diffs", hostapi.DiffRequest{Diff: raw})
	require.Equal(t, http.StatusForbidden, status, string(body))
	require.Contains(t, string(body), "holds no slot of escrow 9")

	d.EscrowId = 10
	raw, _ = d.Marshal()
	status, body = b.gwPost(t, 0, "/v1/sessions/10/diffs", hostapi.DiffRequest{Diff: raw})
	require.Equal(t, http.StatusNotFound, status, string(body))
}

func TestReplayAndFork(t *testing.T) {
	t.Parallel()
	b := setup(t)
	d, err := b.gw.Next(sessiontest.Start(1, 1, 1))
	require.NoError(t, err)
	status, first, body := b.send(t, 0, d, nil)
	require.Equal(t, http.StatusOK, status, body)
	status, again, body := b.send(t, 0, d, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, first.Root, again.Root)
	require.Equal(t, first.Signatures, again.Signatures, "a replay answers as the first time")

	fork := *d
	fork.Txs = []*sessionpb.Tx{sessiontest.Start(1, 2, 2)}
	require.NoError(t, session.SignDiff(b.f.Gateway, b.f.Snapshot.ChainId, &fork))
	status, _, body = b.send(t, 0, &fork, nil)
	require.Equal(t, http.StatusConflict, status, body)
	require.Contains(t, body, "a different diff is stored at that nonce")
}

// A host's state signatures are stored with the diff, in its one durable
// commit: no write of their own, and a replay reads them back.
func TestSignaturesRideWithTheDiff(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var resps []hostapi.DiffResponse
	for range 3 {
		resps = b.next(t, nil)
	}
	for i, st := range b.stores {
		appends, puts := st.writes()
		require.Equal(t, 3, appends, "host %d: one write per diff", i)
		require.Zero(t, puts, "host %d: no separate signature write", i)
		stored, err := st.Signatures(t.Context(), b.f.Snapshot.EscrowId, 3)
		require.NoError(t, err)
		require.NotEmpty(t, resps[i].Signatures, "host %d signed", i)
		require.Len(t, stored, len(resps[i].Signatures), "host %d stored what it answered", i)
		for j, sig := range stored {
			require.Equal(t, resps[i].Signatures[j], sig.Data)
		}
	}
}

func TestSessionRoutesWaitForStorage(t *testing.T) {
	t.Parallel()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	e := New(Config{Key: f.Hosts[0], Escrows: &fakeChain{}, Executor: executor.Builtin{}, Metrics: NewMetrics()})
	srv := httptest.NewServer(Handler(e, "test"))
	defer srv.Close()
	for _, path := range []string{"/healthz", "/version", "/metrics"} {
		resp, err := http.Get(srv.URL + path)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
	}
	status, body := post(t, srv.URL+"/v1/sessions/7/diffs", hostapi.DiffRequest{Diff: []byte{1}})
	require.Equal(t, http.StatusServiceUnavailable, status)
	require.JSONEq(t, `{"error":"initializing"}`, string(body))
	resp, err := http.Get(srv.URL + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
}

// Attack 5: a storage error must not leave the diff applied in memory.
func TestStorageFailureLeavesMemoryWhereDiskIs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.next(t, nil)
	nonce, root := b.state(t, 0)
	d, err := b.gw.Next(sessiontest.Start(2, 1, 1))
	require.NoError(t, err)
	b.stores[0].mu.Lock()
	b.stores[0].fail = true
	b.stores[0].mu.Unlock()
	for range ReadyzFailures {
		status, _, body := b.send(t, 0, d, nil)
		require.Equal(t, http.StatusServiceUnavailable, status, body)
		require.Contains(t, body, "injected write failure")
	}
	n, r := b.state(t, 0)
	require.Equal(t, nonce, n)
	require.Equal(t, root, r)
	resp, err := http.Get(b.urls[0] + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "readyz turns 503 after repeated storage failures")

	b.stores[0].mu.Lock()
	b.stores[0].fail = false
	b.stores[0].mu.Unlock()
	status, resp2, body := b.send(t, 0, d, nil)
	require.Equal(t, http.StatusOK, status, body)
	gwRoot := b.gw.Replica.Root()
	require.Equal(t, hex.EncodeToString(gwRoot[:]), resp2.Root)
}

func TestReadRoutesNeedAMember(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.next(t, nil)
	get := func(key signing.Signer, path string) (int, string) {
		req, err := http.NewRequest("GET", b.urls[0]+path, nil)
		require.NoError(t, err)
		if key != nil {
			require.NoError(t, httpauth.Sign(req, nil, key, to(b.hosts[0].Address()), time.Now()))
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	outsider, err := signing.GenerateKey(rand.New(rand.NewSource(78)))
	require.NoError(t, err)
	for _, path := range []string{"/v1/sessions/7/diffs?from=1", "/v1/sessions/7/signatures?nonce=1", "/v1/sessions/7/mempool"} {
		status, body := get(nil, path)
		require.Equal(t, http.StatusForbidden, status, body)
		require.Contains(t, body, "request is not signed")
		status, body = get(outsider, path)
		require.Equal(t, http.StatusForbidden, status, body)
		require.Contains(t, body, "is for a group member or the escrow's creator (or a key one of them granted); "+outsider.Address().String()+" is neither")
		status, body = get(b.f.Hosts[1], path)
		require.Equal(t, http.StatusOK, status, body)
	}
	status, body := get(b.f.Gateway, "/v1/sessions/7/diffs?from=1")
	require.Equal(t, http.StatusOK, status)
	var diffs struct{ Diffs []struct{ Nonce uint64 } }
	require.NoError(t, json.Unmarshal([]byte(body), &diffs))
	require.Len(t, diffs.Diffs, 1)
	status, body = get(b.f.Gateway, "/v1/sessions/7/signatures?nonce=1")
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, body, "signatures")
	status, _ = get(b.f.Gateway, "/v1/sessions/7/diffs?limit=0")
	require.Equal(t, http.StatusBadRequest, status)
}

// Attack 10: gossip from non-members or without a signature is refused.
func TestGossipOnlyFromMembers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req := request(1)
	b.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	outsider, err := signing.GenerateKey(rand.New(rand.NewSource(79)))
	require.NoError(t, err)
	url := b.urls[0] + "/v1/sessions/7/gossip"
	forged := b.f.SignedBy(outsider, 1, &sessionpb.Tx{Body: &sessionpb.Tx_Confirm{Confirm: &sessionpb.ConfirmStart{InferenceId: 1, ConfirmedAt: 5}}})
	raw, _ := forged.Marshal()
	status, body := signedPost(t, url, b.f.Hosts[1], to(b.hosts[0].Address()), hostapi.GossipRequest{Tx: raw})
	require.Equal(t, http.StatusForbidden, status, string(body))
	unsigned := &sessionpb.Tx{Slot: 1, Body: &sessionpb.Tx_Confirm{Confirm: &sessionpb.ConfirmStart{InferenceId: 1, ConfirmedAt: 5}}}
	raw, _ = unsigned.Marshal()
	status, body = signedPost(t, url, b.f.Hosts[1], to(b.hosts[0].Address()), hostapi.GossipRequest{Tx: raw})
	require.Equal(t, http.StatusForbidden, status, string(body))
	require.Contains(t, string(body), "unsigned")

	honest := b.f.Confirm(1, 1, 5)
	raw, _ = honest.Marshal()
	status, body = signedPost(t, url, b.f.Hosts[1], to(b.hosts[0].Address()), hostapi.GossipRequest{Tx: raw})
	require.Equal(t, http.StatusAccepted, status, string(body))
	resps := b.next(t, nil)
	require.Len(t, resps[0].Mempool, 1, "host 0 now carries host 1's tx")
}

func TestInferenceRejects(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req := request(1)
	b.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	status, _, body := b.infer(t, 0, 1, req)
	require.Equal(t, http.StatusForbidden, status, body)
	require.Contains(t, body, "assigned to slot 1, which this host does not hold")
	status, _, body = b.infer(t, 1, 1, request(2))
	require.Equal(t, http.StatusBadRequest, status, body)
	require.Contains(t, body, "does not match what diff 1 started")
	status, _, body = b.infer(t, 1, 5, req)
	require.Equal(t, http.StatusBadRequest, status, body)
	require.Contains(t, body, "inference 5 of escrow 7 is not live here")
	status, _, _ = b.infer(t, 1, 1, req)
	require.Equal(t, http.StatusOK, status)
	status, _, body = b.infer(t, 1, 1, req)
	require.Equal(t, http.StatusBadRequest, status, body)
	require.Contains(t, body, "it runs once")
}

// A host whose own tx the gateway keeps leaving out stops signing.
func TestWithholdsSignaturesWhenOwnTxIgnored(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req := request(1)
	b.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	status, _, _ := b.infer(t, 1, 1, req)
	require.Equal(t, http.StatusOK, status)
	var resps []hostapi.DiffResponse
	for range 9 { // grace is 8 nonces
		resps = b.next(t, nil)
	}
	require.Empty(t, resps[1].Signatures)
	require.Contains(t, resps[1].Withheld, "own tx for inference 1 (slot 1) has waited 9 nonces for inclusion")
	require.NotEmpty(t, resps[0].Signatures)
	resps = b.next(t, nil, decodeTxs(t, resps[1].Mempool)...)
	require.NotEmpty(t, resps[1].Signatures, "signing resumes once the txs are in")
	require.Empty(t, resps[1].Withheld)
}

// A lying executor is caught by re-running validators.
func TestValidatorsCatchAWrongAnswer(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req := request(4)
	b.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	// Host 1 signs a finish with a made-up answer instead of running it.
	lie := b.f.Signed(1, &sessionpb.Tx{Body: &sessionpb.Tx_Finish{Finish: &sessionpb.FinishInference{InferenceId: 1, InputTokens: 6, OutputTokens: 20, ResponseHash: sessiontest.Hash("made up")}}})
	b.next(t, nil, b.f.Confirm(1, 1, 100), lie)
	for _, h := range b.hosts {
		h.Wait()
	}
	resps := b.next(t, nil)
	v := decodeTxs(t, resps[0].Mempool)
	require.Len(t, v, 1)
	require.False(t, v[0].GetValidation().Valid)
	b.next(t, nil, v[0]) // challenged: host 2 must re-run too
	for _, h := range b.hosts {
		h.Wait()
	}
	resps = b.next(t, nil)
	v2 := decodeTxs(t, resps[2].Mempool)
	require.Len(t, v2, 1)
	require.False(t, v2[0].GetValidation().Valid)
	b.next(t, nil, v2[0])
	require.Equal(t, uint64(1), b.gw.Replica.State().HostStats[1].Invalid)
}

func TestTimeoutVotes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req := request(1)
	b.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	for _, h := range b.hosts {
		h.Tick(context.Background())
	}
	b.now = b.now.Add(2 * time.Minute) // past the 60 s execution timeout
	for _, h := range b.hosts {
		h.Tick(context.Background())
	}
	resps := b.next(t, nil)
	require.Len(t, resps[0].Mempool, 1)
	require.Len(t, resps[2].Mempool, 1)
	require.Empty(t, resps[1].Mempool, "the executor does not vote itself out")
	b.next(t, nil, append(decodeTxs(t, resps[0].Mempool), decodeTxs(t, resps[2].Mempool)...)...)
	require.Equal(t, uint64(1), b.gw.Replica.State().HostStats[1].Missed)
}

// skewed gives participant A (host 0) three of five slots, B (host 1) one
// and C (host 2) one: slots 0-2 are A's, 3 is B's, 4 is C's. Inference 4
// runs on C's slot 4, so four slots are eligible to vote on it and a strict
// majority is three: more than A and B reach with one vote each.
func skewed(o *sessiontest.Options) { o.Holders = []int{0, 0, 0, 1, 2} }

// startOnC brings the session to nonce 3 and starts inference 4 on C's slot.
func (b *hostBundle) startOnC(t *testing.T, req executor.Request) {
	t.Helper()
	for range 3 {
		b.next(t, nil)
	}
	b.next(t, map[uint64]executor.Request{4: req}, startTx(4, req))
	r, ok := b.gw.Replica.Record(4)
	require.True(t, ok)
	require.Equal(t, uint32(4), r.ExecutorSlot)
}

// sampleAt sets the escrow's validation rate, on the chain and in the
// gateway's replica. Call it before the first diff: hosts read the snapshot
// when they first see the escrow.
func (b *hostBundle) sampleAt(bps uint32) {
	snap := *b.f.Snapshot
	snap.ValidationRateBps = bps
	b.chain.mu.Lock()
	b.chain.snaps[snap.EscrowId] = &snap
	b.chain.mu.Unlock()
	b.f.Snapshot = &snap
	b.gw = b.f.Sequencer()
}

// wait blocks until every host has finished its background re-runs.
func (b *hostBundle) wait() {
	for _, h := range b.hosts {
		h.Wait()
	}
}

// slotsOf lists the slots txs are cast for, sorted.
func slotsOf(txs []*sessionpb.Tx) []uint32 {
	out := make([]uint32, 0, len(txs))
	for _, tx := range txs {
		out = append(out, tx.Slot)
	}
	slices.Sort(out)
	return out
}

// bySlot picks the tx cast for slot.
func bySlot(t *testing.T, txs []*sessionpb.Tx, slot uint32) *sessionpb.Tx {
	t.Helper()
	for _, tx := range txs {
		if tx.Slot == slot {
			return tx
		}
	}
	require.Failf(t, "no tx for slot", "slot %d not among %v", slot, slotsOf(txs))
	return nil
}

// status is the status of live inference id on the gateway's replica.
func (b *hostBundle) status(t *testing.T, id uint64) sessionpb.InferenceStatus {
	t.Helper()
	r, ok := b.gw.Replica.Record(id)
	require.True(t, ok, "inference %d is live", id)
	return r.Status
}

// sealedStatus is the status inference id was sealed with, as host i's
// sealed-inference index records it. Decided inferences seal at once.
func (b *hostBundle) sealedStatus(t *testing.T, i int, id uint64) sessionpb.InferenceStatus {
	t.Helper()
	_, live := b.gw.Replica.Record(id)
	require.False(t, live, "inference %d is sealed", id)
	rows, err := b.stores[i].Sealed(context.Background(), b.f.Snapshot.EscrowId)
	require.NoError(t, err)
	for _, row := range rows {
		if row.InferenceID == id {
			var r sessionpb.InferenceRecord
			require.NoError(t, r.Unmarshal(row.Record))
			return r.Status
		}
	}
	require.Failf(t, "not in the sealed index", "inference %d, host %d", id, i)
	return 0
}

// Attack 13: a timeout needs a strict majority of eligible slots, so a host
// votes with every slot it holds. With one vote per participant, A and B
// would cast two of four and the stalled inference would stay open forever.
func TestTimeoutVotesCountEverySlotHeld(t *testing.T) {
	t.Parallel()
	b := setup(t, skewed)
	b.startOnC(t, request(1))
	for _, h := range b.hosts {
		h.Tick(context.Background())
	}
	b.now = b.now.Add(2 * time.Minute) // past the 60 s execution timeout
	for _, h := range b.hosts {
		h.Tick(context.Background())
	}
	resps := b.next(t, nil)
	a, bv := decodeTxs(t, resps[0].Mempool), decodeTxs(t, resps[1].Mempool)
	for _, v := range append(a, bv...) {
		require.NotNil(t, v.GetTimeout())
	}
	require.Equal(t, []uint32{0, 1, 2}, slotsOf(a), "A votes with each of its three slots")
	require.Equal(t, []uint32{3}, slotsOf(bv))
	require.Empty(t, resps[2].Mempool, "the executor does not vote itself out")

	// B's vote and A's first are what one vote per participant would give:
	// two of four eligible slots are no strict majority.
	b.next(t, nil, bySlot(t, bv, 3))
	b.next(t, nil, bySlot(t, a, 0))
	require.Equal(t, sessionpb.InferenceStatus_INFERENCE_STATUS_PENDING, b.status(t, 4))
	resps = b.next(t, nil, bySlot(t, a, 1))
	for i := range b.hosts {
		require.Equal(t, sessionpb.InferenceStatus_INFERENCE_STATUS_TIMED_OUT, b.sealedStatus(t, i, 4), "host %d", i)
	}
	require.Equal(t, uint64(1), b.gw.Replica.State().HostStats[4].Missed)
	require.Empty(t, resps[0].Mempool, "A's vote for slot 2 is dropped: the inference is no longer open")
}

// Attack 13: a challenged inference is decided by a majority of eligible
// slots, so every host re-runs it and votes with every slot it holds that
// has not voted. With one vote per participant, the challenge and A's one
// vote would be two of four slots and decide nothing. Every slot is
// sampled, so B's slot may open the challenge.
func TestChallengeResolvesByMajorityOfSlotsHeld(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		lie  bool // C signs a made-up answer instead of running it
		want sessionpb.InferenceStatus
	}{
		{"wrong answer, challenged by B's sampled slot", true, sessionpb.InferenceStatus_INFERENCE_STATUS_INVALIDATED},
		{"right answer, falsely challenged by B's sampled slot", false, sessionpb.InferenceStatus_INFERENCE_STATUS_VALIDATED},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, skewed)
			req := request(5)
			b.startOnC(t, req)
			if tc.lie {
				lie := b.f.Signed(4, &sessionpb.Tx{Body: &sessionpb.Tx_Finish{Finish: &sessionpb.FinishInference{InferenceId: 4, InputTokens: 6, OutputTokens: 20, ResponseHash: sessiontest.Hash("made up")}}})
				b.next(t, nil, b.f.Confirm(4, 4, 100), lie)
			} else {
				status, _, body := b.infer(t, 2, 4, req)
				require.Equal(t, http.StatusOK, status, body)
				resps := b.next(t, nil)
				b.next(t, nil, decodeTxs(t, resps[2].Mempool)...)
			}
			require.Equal(t, sessionpb.InferenceStatus_INFERENCE_STATUS_FINISHED, b.status(t, 4))
			b.wait()

			// One invalid vote from B's slot challenges the inference: B's
			// host's own when C lied, a lying B's otherwise.
			resps := b.next(t, nil)
			bv := decodeTxs(t, resps[1].Mempool)
			require.Equal(t, []uint32{3}, slotsOf(bv))
			challenge := bv[0]
			if !tc.lie {
				require.True(t, challenge.GetValidation().Valid, "B re-ran it")
				challenge = b.f.Validate(3, 4, false)
			}
			require.False(t, challenge.GetValidation().Valid)
			b.next(t, nil, challenge)
			require.Equal(t, sessionpb.InferenceStatus_INFERENCE_STATUS_CHALLENGED, b.status(t, 4))
			b.wait()

			resps = b.next(t, nil)
			a := decodeTxs(t, resps[0].Mempool)
			require.Equal(t, []uint32{0, 1, 2}, slotsOf(a), "A votes with each of its three slots")
			for _, v := range a {
				require.Equal(t, !tc.lie, v.GetValidation().Valid, "A re-ran it")
			}
			require.Empty(t, resps[1].Mempool, "B's slot has voted")
			require.Empty(t, resps[2].Mempool, "the executor does not judge itself")

			// The challenge and A's first vote: two of four slots decide nothing.
			b.next(t, nil, bySlot(t, a, 0))
			require.Equal(t, sessionpb.InferenceStatus_INFERENCE_STATUS_CHALLENGED, b.status(t, 4))
			// A's second vote decides: three of four invalid is a strict
			// majority; two of four valid is a tie, and ties favour the executor.
			resps = b.next(t, nil, bySlot(t, a, 1))
			for i := range b.hosts {
				require.Equal(t, tc.want, b.sealedStatus(t, i, 4), "host %d", i)
			}
			stats := b.gw.Replica.State().HostStats[4]
			if tc.lie {
				require.Equal(t, uint64(1), stats.Invalid)
			} else {
				require.Equal(t, uint64(1), stats.Validated)
			}
			require.Empty(t, resps[0].Mempool, "A's vote for slot 2 is dropped: the inference is decided")
		})
	}
}

// Item 6, host side: apply accepts a validation of an unchallenged
// inference only from the slots session.SampledSlots names, so a host
// re-runs it and votes with exactly its own slots among them, and every
// vote it pools applies. Fails with the host drawing from the finishing
// diff's post-state root (the old rule): the hosts pool a vote for slot 3
// only, and A's sampled slots 1 and 2 never vote, so the inference can
// never validate.
func TestHostVotesWithItsSampledSlotsOnly(t *testing.T) {
	t.Parallel()
	b := setup(t, skewed)
	b.sampleAt(5000)
	b.startOnC(t, request(5))
	lie := b.f.Signed(4, &sessionpb.Tx{Body: &sessionpb.Tx_Finish{Finish: &sessionpb.FinishInference{InferenceId: 4, InputTokens: 6, OutputTokens: 20, ResponseHash: sessiontest.Hash("made up")}}})
	b.next(t, nil, b.f.Confirm(4, 4, 100), lie)
	r, ok := b.gw.Replica.Record(4)
	require.True(t, ok)
	sampled := b.gw.Replica.SampledSlots(r)
	require.Equal(t, []uint32{1, 2, 3}, sampled, "this fixture's draw picks two of A's slots and B's one")
	b.wait()

	resps := b.next(t, nil)
	var votes []*sessionpb.Tx
	for _, resp := range resps {
		votes = append(votes, decodeTxs(t, resp.Mempool)...)
	}
	require.Equal(t, sampled, slotsOf(votes))
	b.next(t, nil, votes...)
	for i := range b.hosts {
		require.Equal(t, sessionpb.InferenceStatus_INFERENCE_STATUS_INVALIDATED, b.sealedStatus(t, i, 4), "host %d: 3 of 4 eligible slots voted invalid", i)
	}
}

// A restarted host recovers the session from storage on first use.
func TestRecoversLazilyAfterRestart(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *sessiontest.Options) { o.SealGraceNonces = 3 })
	dir := t.TempDir()
	st, err := sqlite.Open(context.Background(), dir, sqlite.Options{})
	require.NoError(t, err)
	e := New(Config{Key: b.f.Hosts[0], Store: st, Escrows: b.chain, Executor: executor.Builtin{}, SnapshotEvery: 4})
	e.MarkReady()
	for i := range 10 {
		d, err := b.gw.Next(sessiontest.Start(uint64(i+1), 1, 1))
		require.NoError(t, err)
		raw, _ := d.Marshal()
		_, err = e.ApplyDiff(context.Background(), 7, raw, nil)
		require.NoError(t, err)
	}
	require.NoError(t, st.Close())
	st, err = sqlite.Open(context.Background(), dir, sqlite.Options{})
	require.NoError(t, err)
	defer st.Close()
	e = New(Config{Key: b.f.Hosts[0], Store: st, Escrows: b.chain, Executor: executor.Builtin{}})
	e.MarkReady()
	en, err := e.session(context.Background(), 7)
	require.NoError(t, err)
	require.Equal(t, b.gw.Replica.Root(), en.s.Root())
	en.mu.Unlock()
}

func TestRecoverAllInParallel(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	st, err := sqlite.Open(context.Background(), dir, sqlite.Options{})
	require.NoError(t, err)
	chain := &fakeChain{snaps: map[uint64]*sessionpb.EscrowSnapshot{}}
	var key *signing.PrivKey
	roots := map[uint64][32]byte{}
	for id := uint64(1); id <= 24; id++ {
		o := sessiontest.DefaultOptions()
		o.EscrowID = id
		f := sessiontest.New(1, o) // same keys: host 0 is in every group
		key = f.Hosts[0]
		chain.snaps[id] = f.Snapshot
		e := New(Config{Key: key, Store: st, Escrows: chain, Executor: executor.Builtin{}})
		e.MarkReady()
		gw := f.Sequencer()
		for range 5 {
			d, err := gw.RandomStep(rand.New(rand.NewSource(int64(id))))
			require.NoError(t, err)
			raw, _ := d.Marshal()
			_, err = e.ApplyDiff(context.Background(), id, raw, nil)
			require.NoError(t, err)
		}
		roots[id] = gw.Replica.Root()
	}
	var logs bytes.Buffer
	m := NewMetrics()
	e := New(Config{Key: key, Store: st, Escrows: chain, Executor: executor.Builtin{}, Logger: slog.New(slog.NewTextHandler(&logs, nil)), Metrics: m})
	e.MarkReady()
	require.NoError(t, e.RecoverAll(context.Background(), 4))
	for id, root := range roots {
		en, err := e.session(context.Background(), id)
		require.NoError(t, err)
		require.Equal(t, root, en.s.Root(), "escrow %d", id)
		en.mu.Unlock()
	}
	require.Contains(t, logs.String(), "recovered 24/24 sessions")
	var g dto.Metric
	require.NoError(t, m.recovered.Write(&g))
	require.Equal(t, 24.0, g.GetGauge().GetValue())
	require.Equal(t, "1,000", commas(1000))
	require.NoError(t, st.Close())
}

// slowStore makes every session lookup slow, as a cold disk would, so that
// recovery of many sessions visibly takes time.
type slowStore struct{ store.Store }

func (s slowStore) Session(ctx context.Context, id uint64) (*store.Session, error) {
	time.Sleep(2 * time.Millisecond)
	return s.Store.Session(ctx, id)
}

// Startup with 1,000 stored sessions: the listener answers at once, session
// routes answer 503 until storage is ready and then until their escrow is
// recovered, and every session comes back.
func TestStartupWithThousandSessions(t *testing.T) {
	t.Parallel()
	const n = 1000
	dir := t.TempDir()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, dir, sqlite.Options{Synchronous: "NORMAL"})
	require.NoError(t, err)
	chain := &fakeChain{snaps: map[uint64]*sessionpb.EscrowSnapshot{}}
	var f *sessiontest.Fixture
	seed := New(Config{Key: sessiontest.New(1, sessiontest.DefaultOptions()).Hosts[0], Store: st, Escrows: chain, Executor: executor.Builtin{}})
	seed.MarkReady()
	roots := map[uint64][32]byte{}
	for id := uint64(1); id <= n; id++ {
		o := sessiontest.DefaultOptions()
		o.EscrowID = id
		f = sessiontest.New(1, o)
		chain.snaps[id] = f.Snapshot
		d, err := f.Sequencer().Build()
		require.NoError(t, err)
		raw, _ := d.Marshal()
		reply, err := seed.ApplyDiff(ctx, id, raw, nil)
		require.NoError(t, err)
		roots[id] = reply.Root
	}
	require.NoError(t, st.Close())

	st, err = sqlite.Open(ctx, dir, sqlite.Options{})
	require.NoError(t, err)
	defer st.Close()
	m := NewMetrics()
	e := New(Config{Key: f.Hosts[0], Store: slowStore{st}, Escrows: chain, Executor: executor.Builtin{}, LoadWait: time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: m})
	srv := httptest.NewServer(Handler(e, "test"))
	defer srv.Close()
	get := func(path string) int {
		req, err := http.NewRequest("GET", srv.URL+path, nil)
		require.NoError(t, err)
		require.NoError(t, httpauth.Sign(req, nil, f.Hosts[1], httpauth.Audience{Host: e.Address()}, time.Now()))
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusOK, get("/healthz"), "the listener serves before storage is ready")
	require.Equal(t, http.StatusServiceUnavailable, get("/v1/sessions/500/mempool"), "session routes wait for storage")

	e.MarkReady()
	done := make(chan error, 1)
	go func() { done <- e.RecoverAll(ctx, 4) }()
	require.Equal(t, http.StatusOK, get("/healthz"))
	var g dto.Metric
	require.NoError(t, m.recovered.Write(&g))
	require.Less(t, g.GetGauge().GetValue(), float64(n), "health answered before recovery ended")
	// The last escrow is not reached yet; its route says so instead of hanging.
	require.Equal(t, http.StatusServiceUnavailable, get(fmt.Sprintf("/v1/sessions/%d/mempool", n)))

	require.NoError(t, <-done)
	for id := uint64(1); id <= n; id += 111 {
		require.Equal(t, http.StatusOK, get(fmt.Sprintf("/v1/sessions/%d/mempool", id)), "escrow %d", id)
		en, err := e.session(ctx, id)
		require.NoError(t, err)
		require.Equal(t, roots[id], en.s.Root())
		en.mu.Unlock()
	}
}
