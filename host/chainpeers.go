package host

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/devshard/devshard/signing"
)

// chainPeers answers where a group member serves (Peers) from the chain's
// participant registry, cached for a while: gossip and self-settlement ask
// it per push and per read, and a member re-registers its URL rarely.
type chainPeers struct {
	c   Chain
	ttl time.Duration

	mu    sync.Mutex
	cache map[signing.Address]peerEntry
}

type peerEntry struct {
	url string
	at  time.Time
}

func newChainPeers(c Chain) *chainPeers {
	return &chainPeers{c: c, ttl: 30 * time.Second, cache: map[signing.Address]peerEntry{}}
}

// PeerURL implements Peers.
func (p *chainPeers) PeerURL(ctx context.Context, addr signing.Address) (string, error) {
	p.mu.Lock()
	e, ok := p.cache[addr]
	p.mu.Unlock()
	if ok && time.Since(e.at) < p.ttl {
		return e.url, nil
	}
	part, err := p.c.Participant(ctx, addr)
	if err != nil {
		return "", err
	}
	url := strings.TrimRight(part.Url, "/")
	p.mu.Lock()
	p.cache[addr] = peerEntry{url: url, at: time.Now()}
	p.mu.Unlock()
	return url, nil
}
