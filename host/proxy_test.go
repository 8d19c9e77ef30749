package host

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/jobs"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/store"
)

// warmGrants is an Authorizer where each holder granted its warm keys
// every kind, as the chain's generic grant of MsgSignSession does.
type warmGrants map[signing.Address]signing.Address // warm key → holder

func (g warmGrants) MayActFor(holder, signer signing.Address, _ session.Kind) bool {
	h, ok := g[signer]
	return ok && h == holder
}

// readCounter counts the stored diffs read from a store.
type readCounter struct {
	store.Store
	mu    sync.Mutex
	reads int
}

func (s *readCounter) Diffs(ctx context.Context, id, from uint64, limit int) ([]store.Diff, error) {
	s.mu.Lock()
	s.reads++
	s.mu.Unlock()
	return s.Store.Diffs(ctx, id, from, limit)
}

func (s *readCounter) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reads
}

// proxyBundle is the three-host harness with host 0 as a primary that
// hands its validations to a proxy, whose warm key host 0's account
// granted. Every host and the gateway's replica know the grant.
type proxyBundle struct {
	*hostBundle
	warm  *signing.PrivKey
	reads *readCounter // host 0's store
	proxy *Engine
	purl  string // the proxy's API
}

func setupProxy(t *testing.T, workers ...signing.Address) *proxyBundle {
	t.Helper()
	p := &proxyBundle{warm: newKey(t, 901)}
	grants := warmGrants{}
	p.hostBundle = setupTuned(t, func(i int, c *Config) *jobs.Queue {
		c.Auth = grants
		if i == 0 {
			grants[p.warm.Address()] = c.Key.PubKey().Address()
			c.ProxyValidation = true
			p.reads = &readCounter{Store: c.Store}
			c.Store = p.reads
		}
		return nil
	})
	b := p.hostBundle
	b.gw = &sessiontest.Sequencer{F: b.f, Replica: b.f.NewSession(grants)}
	p.proxy = NewProxy(Config{Key: p.warm, Account: b.hosts[0].Address(), Escrows: b.chain, Executor: executor.Builtin{},
		Auth: grants, ChainID: testChainID, Now: func() time.Time { return b.now }, Metrics: NewMetrics(), Workers: workers})
	p.proxy.MarkReady()
	srv := httptest.NewServer(Handler(p.proxy, "test"))
	t.Cleanup(srv.Close)
	t.Cleanup(p.proxy.Close)
	p.purl = srv.URL
	return p
}

// follow runs the proxy's link to host 0 until the test ends.
func (p *proxyBundle) follow(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.proxy.followPrimary(ctx, p.urls[0], time.Second)
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// pooledOwn lists host i's pooled txs, and whether each is its own.
func (b *hostBundle) pooledOwn(t *testing.T, i int) ([]*sessionpb.Tx, []bool) {
	t.Helper()
	en, err := b.hosts[i].session(context.Background(), b.f.Snapshot.EscrowId)
	require.NoError(t, err)
	defer en.mu.Unlock()
	var txs []*sessionpb.Tx
	var own []bool
	for _, k := range en.pool.order {
		if pp, ok := en.pool.byKey[k]; ok {
			txs, own = append(txs, pp.tx), append(own, pp.own)
		}
	}
	return txs, own
}

// finishOnHost1 runs inference 1 on host 1 and has the gateway carry its
// confirm and finish; the diffs go to every host.
func (p *proxyBundle) finishOnHost1(t *testing.T) {
	t.Helper()
	req := request(1)
	p.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	status, _, body := p.infer(t, 1, 1, req)
	require.Equal(t, http.StatusOK, status, body)
	resps := p.next(t, nil)
	p.next(t, nil, decodeTxs(t, resps[1].Mempool)...)
	r, ok := p.gw.Replica.Record(1)
	require.True(t, ok)
	require.Equal(t, sessionpb.InferenceStatus_INFERENCE_STATUS_FINISHED, r.Status)
}

// (1) A proxy following its primary re-runs the sampled inference and
// votes for the primary's slot with its warm key; the vote reaches the
// primary, which carries it to the gateway as its own, and the primary's
// session counts it. The primary ran no validation itself: without
// ProxyValidation's guard in maybeValidate its queue would hold a job.
func TestProxyVotesForItsPrimary(t *testing.T) {
	t.Parallel()
	p := setupProxy(t)
	p.follow(t)
	p.finishOnHost1(t)

	var vote *sessionpb.Tx
	require.Eventually(t, func() bool {
		txs, own := p.pooledOwn(t, 0)
		for i, tx := range txs {
			if tx.GetValidation() != nil {
				vote = tx
				return own[i]
			}
		}
		return false
	}, 10*time.Second, 20*time.Millisecond, "the proxy's vote reaches the primary's pool, as its own")
	require.Equal(t, uint32(0), vote.Slot, "the vote is for the primary's slot")
	require.True(t, vote.GetValidation().Valid)
	pub := p.warm.PubKey()
	require.Equal(t, pub[:], vote.Sig.PubKey, "signed by the warm key")

	list, err := p.hosts[0].Jobs().List(context.Background(), jobs.Filter{All: true})
	require.NoError(t, err)
	require.Empty(t, list, "the primary runs no validation itself")
	list, err = p.proxy.Jobs().List(context.Background(), jobs.Filter{All: true})
	require.NoError(t, err)
	require.Len(t, list, 1, "the proxy's validation went through its own queue")
	require.Equal(t, jobs.Succeeded, list[0].State)

	// The primary offers the vote to the gateway in its diff reply, and
	// the session takes it.
	resps := p.next(t, nil)
	offered := decodeTxs(t, resps[0].Mempool)
	require.Len(t, offered, 1)
	p.next(t, nil, offered...)
	en, err := p.hosts[0].session(context.Background(), p.f.Snapshot.EscrowId)
	require.NoError(t, err)
	r, ok := en.s.Record(1)
	en.mu.Unlock()
	require.True(t, ok, "host 2's sampled slot has not voted yet")
	require.True(t, voted(r.ValidVotes, 0), "the primary's session counts the proxy's vote for slot 0")
}

// The proxy's validations go to its own external workers over the worker
// routes it serves, as a host's do; the vote still reaches the primary.
func TestProxyValidatesOnItsWorkers(t *testing.T) {
	t.Parallel()
	worker := newKey(t, 904)
	p := setupProxy(t, worker.Address())
	p.follow(t)
	p.finishOnHost1(t)
	w := hostapi.NewWorker(worker, testChainID, p.purl, p.proxy.Address(), &http.Client{Timeout: time.Minute})
	c, err := w.Claim(context.Background(), 10*time.Second, string(jobs.KindValidation))
	require.NoError(t, err)
	require.NotNil(t, c, "the proxy queued the validation for its worker")
	var in hostapi.ValidationInput
	require.NoError(t, json.Unmarshal(c.Input, &in))
	require.Equal(t, uint64(1), in.Inference)
	res, err := executor.Builtin{}.Execute(context.Background(), in.Request, func(string) error { return nil })
	require.NoError(t, err)
	h := res.ResponseHash()
	out, err := json.Marshal(hostapi.ValidationResult{ResponseHash: hex.EncodeToString(h[:]), Usage: res.Usage})
	require.NoError(t, err)
	require.NoError(t, w.Finish(context.Background(), c.Lease, out))
	require.Eventually(t, func() bool {
		txs, _ := p.pooledOwn(t, 0)
		return len(txs) == 1 && txs[0].GetValidation().GetValid()
	}, 10*time.Second, 20*time.Millisecond, "the worker's re-run becomes the primary's vote")
}

// follow posts a follow request to host i signed by key.
func (p *proxyBundle) followAs(t *testing.T, i int, key signing.Signer, req hostapi.FollowRequest) (int, string) {
	t.Helper()
	status, body := signedPost(t, p.urls[i]+hostapi.Follow.Path, key, to(p.hosts[i].Address()), req)
	return status, string(body)
}

// (2) The read route answers only the primary's account and the keys it
// granted, before reading anything; its inputs are bounded; and it hands
// over the payloads of the inferences others execute, never those of the
// primary's own.
func TestProxyReadRouteAdmitsOnlyTheAccountAndItsWarmKeys(t *testing.T) {
	t.Parallel()
	p := setupProxy(t)
	req1, req3 := request(1), request(3)
	// Inference 3 is executed by slot 0, the primary's; inference 1 by host 1.
	p.next(t, map[uint64]executor.Request{1: req1}, startTx(1, req1))
	p.next(t, nil)
	p.next(t, map[uint64]executor.Request{3: req3}, startTx(3, req3))

	stranger := newKey(t, 902)
	status, raw := signedPost(t, p.urls[0]+hostapi.Follow.Path, nil, to(p.hosts[0].Address()), hostapi.FollowRequest{})
	require.Equal(t, http.StatusUnauthorized, status, string(raw))
	status, body := p.followAs(t, 0, stranger, hostapi.FollowRequest{WaitMS: 5000})
	require.Equal(t, http.StatusForbidden, status, body)
	require.Contains(t, body, "is neither this host's account")
	status, body = p.followAs(t, 0, p.f.Hosts[1], hostapi.FollowRequest{})
	require.Equal(t, http.StatusForbidden, status, "a group member is not the primary: %s", body)
	require.Zero(t, p.reads.count(), "a refused request reads nothing")

	status, body = p.followAs(t, 0, p.warm, hostapi.FollowRequest{WaitMS: hostapi.MaxFollowWait.Milliseconds() + 1})
	require.Equal(t, http.StatusBadRequest, status, body)
	many := map[uint64]uint64{}
	for i := range hostapi.MaxFollowSessions + 1 {
		many[uint64(i+1)] = 0
	}
	status, body = p.followAs(t, 0, p.warm, hostapi.FollowRequest{Sessions: many})
	require.Equal(t, http.StatusBadRequest, status, body)
	require.Zero(t, p.reads.count())

	// A host that validates itself refuses a proxy: both would vote.
	status, body = p.followAs(t, 1, p.f.Hosts[1], hostapi.FollowRequest{})
	require.Equal(t, http.StatusConflict, status, body)
	require.Contains(t, body, "validation.proxy")

	for _, key := range []signing.Signer{p.warm, p.f.Hosts[0]} {
		status, body = p.followAs(t, 0, key, hostapi.FollowRequest{})
		require.Equal(t, http.StatusOK, status, body)
		var out hostapi.FollowResponse
		require.NoError(t, json.Unmarshal([]byte(body), &out))
		require.Len(t, out.Sessions, 1)
		s := out.Sessions[0]
		require.Equal(t, p.f.Snapshot.EscrowId, s.Escrow)
		require.Equal(t, uint64(3), s.Nonce)
		require.Len(t, s.Diffs, 3)
		require.Equal(t, map[uint64]executor.Request{1: req1}, s.Diffs[0].Requests, "the payload of the inference another host executes")
		require.Empty(t, s.Diffs[2].Requests, "never the payload of the primary's own inference")
	}
	require.NotZero(t, p.reads.count())

	// A session the primary does not serve is gone: the proxy stops naming it.
	status, body = p.followAs(t, 0, p.warm, hostapi.FollowRequest{Sessions: map[uint64]uint64{p.f.Snapshot.EscrowId: 3, 99: 5}})
	require.Equal(t, http.StatusOK, status, body)
	var gone hostapi.FollowResponse
	require.NoError(t, json.Unmarshal([]byte(body), &gone))
	require.Equal(t, []hostapi.FollowedSession{{Escrow: p.f.Snapshot.EscrowId, Nonce: 3}, {Escrow: 99, Gone: true}}, gone.Sessions)

	// Caught up, the long poll waits for the next diff and answers with it.
	got := make(chan hostapi.FollowResponse, 1)
	go func() {
		status, body := p.followAs(t, 0, p.warm, hostapi.FollowRequest{Sessions: map[uint64]uint64{p.f.Snapshot.EscrowId: 3}, WaitMS: 10_000})
		var out hostapi.FollowResponse
		if status == http.StatusOK && json.Unmarshal([]byte(body), &out) == nil {
			got <- out
		}
		close(got)
	}()
	select {
	case <-got:
		t.Fatal("a caught-up proxy was answered before anything changed")
	case <-time.After(300 * time.Millisecond):
	}
	p.next(t, nil)
	select {
	case out, ok := <-got:
		require.True(t, ok, "the long poll failed")
		require.Len(t, out.Sessions, 1)
		require.Len(t, out.Sessions[0].Diffs, 1)
		d, err := session.DecodeDiff(out.Sessions[0].Diffs[0].Diff)
		require.NoError(t, err)
		require.Equal(t, uint64(4), d.Nonce)
	case <-time.After(5 * time.Second):
		t.Fatal("the long poll did not answer the new diff")
	}
}

// (3) The proxy keeps its replicas in memory and never writes the
// primary's storage: the primary's store holds exactly the diffs the
// gateway delivered, one write each, however long the proxy followed.
// The proxy serves no session route, so nothing but its primary feeds its
// replicas, and it never runs the primary's inferences even when handed
// their payloads.
func TestProxyNeverWritesThePrimarysStore(t *testing.T) {
	t.Parallel()
	p := setupProxy(t)
	p.follow(t)
	p.finishOnHost1(t)
	require.Eventually(t, func() bool {
		txs, _ := p.pooledOwn(t, 0)
		return len(txs) == 1
	}, 10*time.Second, 20*time.Millisecond)
	p.next(t, nil)
	p.next(t, nil)
	appends, _ := p.stores[0].writes()
	require.Equal(t, 5, appends, "the primary stored the gateway's five diffs and nothing else")
	_, isReplica := p.proxy.cfg.Store.(*replicaStore)
	require.True(t, isReplica, "the proxy stores in memory only")

	raw, err := (&sessionpb.Diff{EscrowId: p.f.Snapshot.EscrowId, Nonce: 99}).Marshal()
	require.NoError(t, err)
	status, body := signedPost(t, p.purl+hostapi.PostDiffs.For(p.f.Snapshot.EscrowId), p.f.Gateway, to(p.proxy.Address()), hostapi.DiffRequest{Diff: raw})
	require.Equal(t, http.StatusNotFound, status, "a proxy serves no session route: %s", body)

	// A primary (or anyone posing as one) that hands the proxy the payload
	// of an inference the primary's account executes does not make the
	// proxy run it.
	// Inference 6 is executed by slot 0, the primary's.
	req := request(6)
	d, err := p.gw.Next(startTx(6, req))
	require.NoError(t, err)
	raw, err = d.Marshal()
	require.NoError(t, err)
	link := &proxyLink{e: p.proxy, known: map[uint64]uint64{}}
	require.Eventually(t, func() bool { return link.replicaNonce(d.EscrowId) == d.Nonce-1 }, 5*time.Second, 10*time.Millisecond, "the replica follows the primary")
	require.NoError(t, link.apply(context.Background(), hostapi.FollowedSession{Escrow: d.EscrowId, Nonce: d.Nonce,
		Diffs: []hostapi.DiffItem{{Diff: raw, Requests: map[uint64]executor.Request{6: req}}}}))
	en, err := p.proxy.session(context.Background(), d.EscrowId)
	require.NoError(t, err)
	defer en.mu.Unlock()
	require.Equal(t, d.Nonce, en.s.Nonce())
	require.False(t, en.ran[6], "the proxy does not run the primary's inference")
	_, kept := en.requests[6]
	require.False(t, kept, "nor keeps its payload")
}

// (4) A vote for the primary's slot signed by a key the primary's account
// did not grant is refused by the primary, and not pooled, whoever pushes
// it.
func TestProxyVoteFromAnUngrantedKeyIsRefused(t *testing.T) {
	t.Parallel()
	p := setupProxy(t)
	p.finishOnHost1(t)
	stranger := newKey(t, 903)
	forged := p.f.SignedBy(stranger, 0, &sessionpb.Tx{Body: &sessionpb.Tx_Validation{Validation: &sessionpb.Validation{InferenceId: 1, Valid: true, ResponseHash: make([]byte, 32)}}})
	raw, err := forged.Marshal()
	require.NoError(t, err)
	url := p.urls[0] + hostapi.Gossip.For(p.f.Snapshot.EscrowId)
	for _, pusher := range []signing.Signer{stranger, p.warm, p.f.Hosts[1]} {
		status, body := signedPost(t, url, pusher, to(p.hosts[0].Address()), hostapi.GossipRequest{Tx: raw})
		require.Equal(t, http.StatusForbidden, status, string(body))
	}
	txs, _ := p.pooledOwn(t, 0)
	require.Empty(t, txs, "the forged vote is not pooled")

	// The same vote signed by the granted warm key is taken.
	granted := p.f.SignedBy(p.warm, 0, &sessionpb.Tx{Body: &sessionpb.Tx_Validation{Validation: &sessionpb.Validation{InferenceId: 1, Valid: true, ResponseHash: make([]byte, 32)}}})
	raw, err = granted.Marshal()
	require.NoError(t, err)
	status, body := signedPost(t, url, p.warm, to(p.hosts[0].Address()), hostapi.GossipRequest{Tx: raw})
	require.Equal(t, http.StatusAccepted, status, string(body))
}

// The proxy's in-memory store keeps diffs in order as a disk store does
// (replays, forks, gaps), and drops those a snapshot makes needless.
func TestReplicaStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newReplicaStore()
	snap := sessiontest.New(1, sessiontest.DefaultOptions()).Snapshot
	id := snap.EscrowId
	require.ErrorIs(t, s.AppendDiff(ctx, store.Diff{EscrowID: id, Nonce: 1, Data: []byte{1}}), store.ErrNotFound)
	require.NoError(t, s.CreateSession(ctx, snap))
	require.NoError(t, s.CreateSession(ctx, snap), "the same snapshot again is a no-op")
	other := *snap
	other.Epoch++
	require.ErrorIs(t, s.CreateSession(ctx, &other), store.ErrConflict)
	for n := uint64(1); n <= 5; n++ {
		require.NoError(t, s.AppendDiff(ctx, store.Diff{EscrowID: id, Nonce: n, Data: []byte{byte(n)}}))
	}
	require.NoError(t, s.AppendDiff(ctx, store.Diff{EscrowID: id, Nonce: 4, Data: []byte{4}}), "a replay")
	require.ErrorIs(t, s.AppendDiff(ctx, store.Diff{EscrowID: id, Nonce: 4, Data: []byte{9}}), store.ErrFork)
	require.ErrorIs(t, s.AppendDiff(ctx, store.Diff{EscrowID: id, Nonce: 7, Data: []byte{7}}), store.ErrNonceGap)
	require.NoError(t, s.PutSnapshot(ctx, store.Snapshot{EscrowID: id, Nonce: 3}))
	require.NoError(t, s.PutSnapshot(ctx, store.Snapshot{EscrowID: id, Nonce: 2}), "an older snapshot is a no-op")
	got, err := s.Snapshot(ctx, id)
	require.NoError(t, err)
	require.Equal(t, uint64(3), got.Nonce)
	diffs, err := s.Diffs(ctx, id, 1, 10)
	require.NoError(t, err)
	require.Len(t, diffs, 3, "diffs before the snapshot are dropped")
	require.Equal(t, uint64(3), diffs[0].Nonce)
	require.NoError(t, s.AppendDiff(ctx, store.Diff{EscrowID: id, Nonce: 6, Data: []byte{6}}))
	last, err := s.LastNonce(ctx, id)
	require.NoError(t, err)
	require.Equal(t, uint64(6), last)
	s.forget(id)
	_, err = s.Session(ctx, id)
	require.ErrorIs(t, err, store.ErrNotFound)
}

// A primary that hands its validations to a proxy does not re-run a
// challenged inference either: the challenge is the proxy's to answer.
// Host 1 lies, host 2's invalid vote lands first, and the primary, whose
// slot has not voted yet, still queues nothing.
func TestProxyPrimaryLeavesChallengesToTheProxy(t *testing.T) {
	t.Parallel()
	p := setupProxy(t)
	req := request(4)
	p.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	lie := p.f.Signed(1, &sessionpb.Tx{Body: &sessionpb.Tx_Finish{Finish: &sessionpb.FinishInference{InferenceId: 1, InputTokens: 6, OutputTokens: 20, ResponseHash: sessiontest.Hash("made up")}}})
	p.next(t, nil, p.f.Confirm(1, 1, 100), lie)
	p.hosts[2].Wait()
	resps := p.next(t, nil)
	v := decodeTxs(t, resps[2].Mempool)
	require.Len(t, v, 1)
	require.False(t, v[0].GetValidation().Valid)
	p.next(t, nil, v[0])
	require.Equal(t, sessionpb.InferenceStatus_INFERENCE_STATUS_CHALLENGED, p.status(t, 1))
	p.hosts[0].Wait()
	list, err := p.hosts[0].Jobs().List(context.Background(), jobs.Filter{All: true})
	require.NoError(t, err)
	require.Empty(t, list, "the primary re-runs no challenged inference itself")
}

// A session that reaches its settlement phase takes no more votes: the
// proxy, once caught up with it, forgets its replica.
func TestProxyForgetsASettlingSession(t *testing.T) {
	t.Parallel()
	p := setupProxy(t)
	p.follow(t)
	p.next(t, nil)
	link := &proxyLink{e: p.proxy}
	require.Eventually(t, func() bool { return link.replicaNonce(p.f.Snapshot.EscrowId) == 1 }, 5*time.Second, 10*time.Millisecond, "the proxy follows the session")
	p.next(t, nil, sessiontest.Finalize())
	p.next(t, nil, sessiontest.Finalize())
	require.Eventually(t, func() bool {
		p.proxy.mu.Lock()
		defer p.proxy.mu.Unlock()
		return len(p.proxy.sessions) == 0
	}, 5*time.Second, 10*time.Millisecond, "the replica is dropped once the session settles")
	_, err := p.proxy.cfg.Store.Session(context.Background(), p.f.Snapshot.EscrowId)
	require.ErrorIs(t, err, store.ErrNotFound, "and its diffs with it")
}
