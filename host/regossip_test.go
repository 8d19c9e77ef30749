package host

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/httpauth"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
)

// peerBook is the participant registry the hosts look each other up in.
// Each host is reached through a proxy that counts the gossip it receives.
type peerBook struct {
	mu      sync.Mutex
	urls    map[signing.Address]string
	down    map[signing.Address]bool // lookups fail, as for a host that is gone
	lookups int
	posts   map[signing.Address]int // gossip pushes received, by participant
}

func (p *peerBook) PeerURL(_ context.Context, addr signing.Address) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lookups++
	u, ok := p.urls[addr]
	if !ok || p.down[addr] {
		return "", fmt.Errorf("participant %s is not reachable", addr)
	}
	return u, nil
}

func (p *peerBook) setDown(addr signing.Address, down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down[addr] = down
}

func (p *peerBook) received(addr signing.Address) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.posts[addr]
}

func (p *peerBook) stats() (lookups, posts int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, n := range p.posts {
		posts += n
	}
	return p.lookups, posts
}

// gossipSetup is setup with every host gossiping through a shared peer
// book. The grace is 8 nonces, so own txs go out once they have waited 5.
func gossipSetup(t *testing.T, mutate ...func(*sessiontest.Options)) (*hostBundle, *peerBook) {
	t.Helper()
	b := setup(t, mutate...)
	book := &peerBook{urls: map[signing.Address]string{}, down: map[signing.Address]bool{}, posts: map[signing.Address]int{}}
	for i, h := range b.hosts {
		target, err := url.Parse(b.urls[i])
		require.NoError(t, err)
		rp := httputil.NewSingleHostReverseProxy(target)
		addr := h.Address()
		proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/gossip") {
				book.mu.Lock()
				book.posts[addr]++
				book.mu.Unlock()
			}
			rp.ServeHTTP(w, r)
		}))
		t.Cleanup(proxy.Close)
		book.urls[addr] = proxy.URL
		h.cfg.Peers = book // before any traffic
	}
	require.Equal(t, uint64(4), regossipAfter(b.f.Snapshot.SealGraceNonces))
	return b, book
}

// tick runs every host's tick and waits for the pushes it started.
func (b *hostBundle) tick() {
	for _, h := range b.hosts {
		h.Tick(context.Background())
	}
	b.wait()
}

// pooled lists host i's pooled txs through its GET mempool route, asked by
// the escrow's creator.
func (b *hostBundle) pooled(t *testing.T, i int) []*sessionpb.Tx {
	t.Helper()
	req, err := http.NewRequest("GET", fmt.Sprintf("%s/v1/sessions/%d/mempool", b.urls[i], b.f.Snapshot.EscrowId), nil)
	require.NoError(t, err)
	require.NoError(t, httpauth.Sign(req, nil, b.f.Gateway, to(b.hosts[i].Address()), time.Now()))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var body struct{ Txs [][]byte }
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	return decodeTxs(t, body.Txs)
}

func holds(txs []*sessionpb.Tx, want *sessionpb.Tx) bool {
	for _, tx := range txs {
		if session.TxKey(tx) == session.TxKey(want) {
			return true
		}
	}
	return false
}

// runOnHost1 starts inference 1 (slot 1, host 1) at nonce 1 and runs it; it
// returns the executor's ConfirmStart and FinishInference, pooled at nonce 1.
func (b *hostBundle) runOnHost1(t *testing.T) (confirm, finish *sessionpb.Tx) {
	t.Helper()
	req := request(1)
	b.next(t, map[uint64]executor.Request{1: req}, startTx(1, req))
	status, events, body := b.infer(t, 1, 1, req)
	require.Equal(t, http.StatusOK, status, body)
	txs := decodeTxs(t, events[len(events)-1].Txs)
	require.Len(t, txs, 2)
	return txs[0], txs[1]
}

func TestRegossipAfterIsHalfTheGrace(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ grace, want uint64 }{
		{0, 2}, {2, 2}, {4, 2}, {5, 2}, {8, 4}, {150, 75},
	} {
		require.Equal(t, tc.want, regossipAfter(tc.grace), "grace %d", tc.grace)
	}
}

// A gateway that leaves the executor's finish out cannot bury it: once it
// has waited past the re-gossip threshold, host 1 pushes it to hosts 0 and
// 2, once each, and the gateway gets it in their replies. Gossip from
// outside the group is still refused (attack 10).
func TestRegossipsAFinishTheGatewayLeavesOut(t *testing.T) {
	t.Parallel()
	b, book := gossipSetup(t)
	confirm, finish := b.runOnHost1(t)
	b.next(t, nil, confirm) // nonce 2: the confirm goes in, the finish does not
	for b.gw.Replica.Nonce() < 5 {
		b.next(t, nil)
	}
	b.tick() // nonce 5: the finish has waited 4 nonces, the threshold
	require.False(t, holds(b.pooled(t, 0), finish))

	b.next(t, nil) // nonce 6: waited 5
	b.tick()
	for _, i := range []int{0, 2} {
		require.True(t, holds(b.pooled(t, i), finish), "host %d carries host 1's finish", i)
		require.Equal(t, 1, book.received(b.hosts[i].Address()), "host %d", i)
	}
	require.Zero(t, book.received(b.hosts[1].Address()), "a host does not gossip to itself")
	for range 3 {
		b.tick()
	}
	_, posts := book.stats()
	require.Equal(t, 2, posts, "each peer gets the tx once")

	// Another host carries it: the gateway takes host 0's reply.
	resps := b.next(t, nil) // nonce 7
	require.NotEmpty(t, resps[1].Signatures, "host 1 is not withholding yet: gossip comes before the grace runs out")
	fromPeer := decodeTxs(t, resps[0].Mempool)
	require.True(t, holds(fromPeer, finish))
	resps = b.next(t, nil, fromPeer...)
	require.Equal(t, sessionpb.InferenceStatus_INFERENCE_STATUS_FINISHED, b.status(t, 1))
	require.Empty(t, resps[1].Mempool, "the executor's finish left its pool")
	b.tick()
	_, posts = book.stats()
	require.Equal(t, 2, posts)

	// A non-member's tx, or an unsigned one, is still refused.
	outsider, err := signing.GenerateKey(rand.New(rand.NewSource(80)))
	require.NoError(t, err)
	url := fmt.Sprintf("%s/v1/sessions/%d/gossip", b.urls[0], b.f.Snapshot.EscrowId)
	forged := b.f.SignedBy(outsider, 1, &sessionpb.Tx{Body: &sessionpb.Tx_Timeout{Timeout: &sessionpb.TimeoutInference{InferenceId: 1}}})
	raw, _ := forged.Marshal()
	status, body := signedPost(t, url, b.f.Hosts[2], to(b.hosts[0].Address()), hostapi.GossipRequest{Tx: raw})
	require.Equal(t, http.StatusForbidden, status, string(body))
	unsigned := &sessionpb.Tx{Slot: 0, Body: &sessionpb.Tx_Timeout{Timeout: &sessionpb.TimeoutInference{InferenceId: 1}}}
	raw, _ = unsigned.Marshal()
	status, body = signedPost(t, url, b.f.Hosts[2], to(b.hosts[0].Address()), hostapi.GossipRequest{Tx: raw})
	require.Equal(t, http.StatusForbidden, status, string(body))
	require.False(t, holds(b.pooled(t, 0), forged))
}

// Up to the threshold the host trusts the gateway to include its txs late:
// nothing is looked up and nothing is pushed, however often it ticks.
func TestRegossipWaitsForTheThreshold(t *testing.T) {
	t.Parallel()
	b, book := gossipSetup(t)
	confirm, finish := b.runOnHost1(t)
	for b.gw.Replica.Nonce() < 5 { // neither tx is included
		b.next(t, nil)
		for range 2 {
			b.tick()
		}
	}
	lookups, posts := book.stats()
	require.Zero(t, lookups)
	require.Zero(t, posts)
	for _, i := range []int{0, 2} {
		pool := b.pooled(t, i)
		require.False(t, holds(pool, confirm), "host %d", i)
		require.False(t, holds(pool, finish), "host %d", i)
	}
}

// A peer that cannot be reached is tried again on later ticks, and only
// the pushes it missed are repeated.
func TestRegossipRetriesAnUnreachablePeer(t *testing.T) {
	t.Parallel()
	b, book := gossipSetup(t)
	_, finish := b.runOnHost1(t)
	down := b.hosts[2].Address()
	book.setDown(down, true)
	for b.gw.Replica.Nonce() < 6 {
		b.next(t, nil)
	}
	b.tick()
	b.tick()
	require.True(t, holds(b.pooled(t, 0), finish))
	require.False(t, holds(b.pooled(t, 2), finish))
	require.Zero(t, book.received(down))

	book.setDown(down, false)
	b.tick()
	require.True(t, holds(b.pooled(t, 2), finish))
	require.Equal(t, 2, book.received(down), "the confirm and the finish")
	require.Equal(t, 2, book.received(b.hosts[0].Address()), "host 0 got them on the first tick, and only then")
}

// A push is retried unless the peer's refusal would stand: a 4xx other
// than 404 (its chain node does not know the escrow yet), 408 and 429. No
// answer, or a 5xx, may pass too.
func TestGossipRefusalFinality(t *testing.T) {
	t.Parallel()
	for status, final := range map[int]bool{
		0:                              false,
		http.StatusBadRequest:          true,
		http.StatusForbidden:           true,
		http.StatusConflict:            true,
		http.StatusNotFound:            false,
		http.StatusRequestTimeout:      false,
		http.StatusTooManyRequests:     false,
		http.StatusServiceUnavailable:  false,
		http.StatusInternalServerError: false,
	} {
		require.Equal(t, final, finalRefusal(&hostapi.Error{URL: "http://peer", Status: status}), "status %d", status)
	}
	require.False(t, finalRefusal(errors.New("dial tcp: refused")))
}
