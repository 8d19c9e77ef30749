package host

import (
	"context"
	"net/http"
	"time"

	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
)

// peerReads reads what self-settlement needs from the group's other hosts
// through their host API, signed as this host: their stored diffs, to
// catch up, and their state signatures, to settle.
type peerReads struct {
	eng  *Engine // signs the requests, for the chain it serves on
	urls Peers   // where each group member serves
	http *http.Client
}

func newPeerReads(eng *Engine, urls Peers) *peerReads {
	return &peerReads{eng: eng, urls: urls, http: &http.Client{Timeout: 5 * time.Second}}
}

// client signs for the chain the engine serves on, which is known once the
// engine started.
func (p *peerReads) client() *hostapi.Client {
	return hostapi.NewClient(p.eng.cfg.Key, p.eng.ChainID(), p.http)
}

// url is where peer serves the sessions of snap's escrow: its registered
// URL, routed to the escrow's runtime version.
func (p *peerReads) url(ctx context.Context, peer signing.Address, snap *sessionpb.EscrowSnapshot) (string, error) {
	base, err := p.urls.PeerURL(ctx, peer)
	if err != nil {
		return "", err
	}
	return hostapi.RuntimeURL(base, snap.RuntimeVersion), nil
}

// diffs asks a group member for its stored diffs of snap's escrow from
// nonce from on; the client refuses a page that is not consecutive from
// from.
func (p *peerReads) diffs(ctx context.Context, peer signing.Address, snap *sessionpb.EscrowSnapshot, from uint64) ([][]byte, error) {
	url, err := p.url(ctx, peer, snap)
	if err != nil {
		return nil, err
	}
	stored, err := p.client().Diffs(ctx, url, peer, snap.EscrowId, from, hostapi.MaxDiffsPerDelivery)
	if err != nil {
		return nil, err
	}
	raws := make([][]byte, len(stored))
	for i, d := range stored {
		raws[i] = d.Data
	}
	return raws, nil
}

// signatures asks a group member for its state signatures of snap's escrow
// at nonce; the ones that do not decode are left out.
func (p *peerReads) signatures(ctx context.Context, peer signing.Address, snap *sessionpb.EscrowSnapshot, nonce uint64) ([]*sessionpb.StateSignature, error) {
	url, err := p.url(ctx, peer, snap)
	if err != nil {
		return nil, err
	}
	return p.client().Signatures(ctx, url, peer, snap.EscrowId, nonce)
}
