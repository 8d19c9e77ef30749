package host

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
)

// Re-gossip is the sending side of POST /v1/sessions/{escrow}/gossip
// (Engine.Gossip). A host whose own signed tx the gateway keeps leaving out
// pushes it to the other members of the escrow's group, so that any of them
// can offer it in its next diff reply and the gateway cannot bury a host's
// work by ignoring that one host.

// Peers finds the hosts of the other participants of a group.
type Peers interface {
	// PeerURL returns the base URL of the host API that participant addr
	// serves, as registered on chain, without a trailing slash; a push
	// about an escrow goes to its runtime version's route below it
	// (hostapi.RuntimeURL). An error
	// means the participant cannot be reached now; the push is tried again
	// on a later tick. Implementations should cache: it is asked once per
	// peer on every tick that has something new to push.
	PeerURL(ctx context.Context, addr signing.Address) (string, error)
}

// gossipTimeout bounds one URL lookup and one push to a peer, so a dead
// peer costs a tick's background push this long at most.
const gossipTimeout = 2 * time.Second

// gossipHTTP is shared by every push, so pushes to a peer reuse its
// connections.
var gossipHTTP = &http.Client{Timeout: gossipTimeout}

// regossipAfter is how many nonces an own tx waits for inclusion before the
// host pushes it to its peers: half the escrow's seal grace, and at least 2.
// The host starts withholding its signatures once a tx has waited more than
// the whole grace (mempool.overdue); pushing halfway there gives the peers'
// replies time to carry the tx before that, while a gateway that merely
// includes txs a diff or two late costs no traffic.
func regossipAfter(sealGrace uint64) uint64 { return max(sealGrace/2, 2) }

// regossipWait is how long an own tx waits for inclusion, by the host's
// clock, before it is pushed however few nonces have passed: half the
// escrow's execution timeout. Peers vote an inference out once it has been
// open that long by their clocks, and hold back while they hold the
// executor's proof (voteTimeouts), so a gateway that slows its nonces
// cannot keep the proof from them until they have voted.
func regossipWait(executionTimeoutSeconds uint64) time.Duration {
	return max(time.Duration(executionTimeoutSeconds)*time.Second/2, time.Second)
}

// gossipLog remembers which own txs went to which peer, so a tx reaches
// each peer at most once. A push that failed for a reason that may pass (no
// answer, 5xx, an unknown escrow) is forgotten and retried on a later tick.
// It is safe for concurrent use; its zero value is ready.
type gossipLog struct {
	mu sync.Mutex
	// sent is, per escrow, true for a delivered (or finally refused) push
	// and false for one in flight.
	sent map[uint64]map[peerTx]bool
}

type peerTx struct {
	tx   string // session.TxKey
	peer signing.Address
}

// pushBatch is the txs of one escrow due to one peer.
type pushBatch struct {
	escrow  uint64
	runtime string // the escrow's runtime version: where the peer serves it
	peer    signing.Address
	txs     []*sessionpb.Tx
	keys    []string
}

// regossip pushes every own tx that has waited past regossipAfter nonces,
// or regossipWait by the clock, to each peer that has not had it yet. It
// collects under each entry's lock and pushes in the background, holding
// no lock during HTTP.
func (e *Engine) regossip(ctx context.Context) {
	if e.cfg.Peers == nil {
		return
	}
	for _, en := range e.entries() {
		for _, b := range e.dueBatches(en) {
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				e.push(ctx, b)
			}()
		}
	}
}

// dueBatches lists what en's peers are owed and marks it in flight. It also
// forgets pushes of txs that have left the pool.
func (e *Engine) dueBatches(en *entry) []pushBatch {
	en.mu.Lock()
	if !en.loaded {
		en.mu.Unlock()
		return nil
	}
	escrow, runtime, nonce, after := en.snap.EscrowId, en.snap.RuntimeVersion, en.s.Nonce(), regossipAfter(en.snap.SealGraceNonces)
	now, wait := e.cfg.Now(), regossipWait(en.snap.ExecutionTimeoutSeconds)
	pooled := map[string]bool{}
	var due []*sessionpb.Tx
	var keys []string
	for _, k := range en.pool.order {
		p, ok := en.pool.byKey[k]
		if !ok || !p.own || pooled[k] {
			continue
		}
		pooled[k] = true
		if nonce-p.since > after || now.Sub(p.at) >= wait {
			due, keys = append(due, p.tx), append(keys, k)
		}
	}
	peers := e.peersOf(en.snap)
	en.mu.Unlock()

	g := &e.gossiped
	g.mu.Lock()
	defer g.mu.Unlock()
	sent := g.sent[escrow]
	for k := range sent {
		if !pooled[k.tx] {
			delete(sent, k)
		}
	}
	if len(due) == 0 || len(peers) == 0 {
		if sent != nil && len(sent) == 0 {
			delete(g.sent, escrow)
		}
		return nil
	}
	if sent == nil {
		if g.sent == nil {
			g.sent = map[uint64]map[peerTx]bool{}
		}
		sent = map[peerTx]bool{}
		g.sent[escrow] = sent
	}
	var out []pushBatch
	for _, peer := range peers {
		b := pushBatch{escrow: escrow, runtime: runtime, peer: peer}
		for i, k := range keys {
			pk := peerTx{k, peer}
			if _, seen := sent[pk]; seen {
				continue
			}
			sent[pk] = false
			b.txs, b.keys = append(b.txs, due[i]), append(b.keys, k)
		}
		if len(b.txs) > 0 {
			out = append(out, b)
		}
	}
	return out
}

// peersOf lists the group's participants other than this host, once each,
// in slot order.
func (e *Engine) peersOf(snap *sessionpb.EscrowSnapshot) []signing.Address {
	var out []signing.Address
	seen := map[signing.Address]bool{e.addr: true}
	for _, raw := range snap.Group {
		a, err := signing.AddressFromBytes(raw)
		if err != nil || seen[a] {
			continue
		}
		seen[a] = true
		out = append(out, a)
	}
	return out
}

// push delivers b's txs to its peer in order. The first failure that may
// pass ends the batch: the rest are retried on a later tick with it.
func (e *Engine) push(ctx context.Context, b pushBatch) {
	lookup, cancel := context.WithTimeout(ctx, gossipTimeout)
	base, err := e.cfg.Peers.PeerURL(lookup, b.peer)
	cancel()
	if err != nil {
		e.log.Debug("gossip: peer not reachable; retrying later", "escrow", b.escrow, "peer", b.peer, "err", err)
		e.gossiped.settle(b.escrow, b.peer, b.keys, false)
		return
	}
	url := hostapi.RuntimeURL(base, b.runtime)
	for i, tx := range b.txs {
		err := e.postGossip(ctx, url, b.peer, b.escrow, tx)
		switch {
		case err == nil:
			e.log.Info("re-gossiped own tx the gateway has not included", "escrow", b.escrow, "tx", txKind(tx), "inference", txID(tx), "slot", tx.Slot, "peer", b.peer)
		case finalRefusal(err):
			// The same bytes would be refused again: do not retry.
			e.log.Warn("gossip refused by peer", "escrow", b.escrow, "tx", txKind(tx), "inference", txID(tx), "peer", b.peer, "err", err)
		default:
			e.log.Debug("gossip failed; retrying later", "escrow", b.escrow, "inference", txID(tx), "peer", b.peer, "err", err)
			e.gossiped.settle(b.escrow, b.peer, b.keys[i:], false)
			return
		}
		e.gossiped.settle(b.escrow, b.peer, b.keys[i:i+1], true)
	}
}

func txKind(tx *sessionpb.Tx) string {
	if kind := session.HostTxKind(tx); kind != "" {
		return kind
	}
	return "other"
}

// settle records the outcome of pushes in flight: delivered ones are kept,
// failed ones forgotten. Pushes of txs that left the pool meanwhile are
// already forgotten and stay so.
func (g *gossipLog) settle(escrow uint64, peer signing.Address, keys []string, delivered bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	sent := g.sent[escrow]
	for _, k := range keys {
		pk := peerTx{k, peer}
		if _, ok := sent[pk]; !ok {
			continue
		}
		if delivered {
			sent[pk] = true
		} else {
			delete(sent, pk)
		}
	}
}

// finalRefusal reports whether err is a peer's refusal that would stand
// on a retry: a 4xx but 404 (the peer's chain node does not know the
// escrow yet), 408 and 429, which may pass.
func finalRefusal(err error) bool {
	var he *hostapi.Error
	if !errors.As(err, &he) || he.Status/100 != 4 {
		return false
	}
	switch he.Status {
	case http.StatusNotFound, http.StatusRequestTimeout, http.StatusTooManyRequests:
		return false
	}
	return true
}

// postGossip posts one tx to peer's gossip route, signed by this host for
// that peer.
func (e *Engine) postGossip(ctx context.Context, baseURL string, peer signing.Address, escrow uint64, tx *sessionpb.Tx) error {
	raw, err := tx.Marshal()
	if err != nil {
		return err
	}
	return hostapi.NewClient(e.cfg.Key, e.cfg.ChainID, gossipHTTP).Gossip(ctx, baseURL, peer, escrow, raw)
}
