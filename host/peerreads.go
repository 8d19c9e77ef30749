package host

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/devshard/devshard/httpauth"
	"github.com/devshard/devshard/session"
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

// get reads path from a group member's host API into out.
func (p *peerReads) get(ctx context.Context, peer signing.Address, path string, out any) error {
	url, err := p.urls.PeerURL(ctx, peer)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+path, nil)
	if err != nil {
		return err
	}
	if err := httpauth.Sign(req, nil, p.eng.cfg.Key, httpauth.Audience{ChainID: p.eng.ChainID(), Host: peer}, time.Now()); err != nil {
		return err
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %d", url, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// diffs asks a group member for its stored diffs from nonce from on.
func (p *peerReads) diffs(ctx context.Context, peer signing.Address, escrow, from uint64) ([][]byte, error) {
	var out struct {
		Diffs []struct {
			Nonce uint64 `json:"nonce"`
			Data  []byte `json:"data"`
		} `json:"diffs"`
	}
	if err := p.get(ctx, peer, fmt.Sprintf("/v1/sessions/%d/diffs?from=%d&limit=%d", escrow, from, MaxDiffsPerDelivery), &out); err != nil {
		return nil, err
	}
	raws := make([][]byte, 0, len(out.Diffs))
	for i, d := range out.Diffs {
		if d.Nonce != from+uint64(i) {
			return nil, fmt.Errorf("peer's diffs from %d are not consecutive at %d", from, d.Nonce)
		}
		raws = append(raws, d.Data)
	}
	return raws, nil
}

// signatures asks a group member for its state signatures at nonce.
func (p *peerReads) signatures(ctx context.Context, peer signing.Address, escrow, nonce uint64) ([]*sessionpb.StateSignature, error) {
	var out struct {
		Signatures [][]byte `json:"signatures"`
	}
	if err := p.get(ctx, peer, fmt.Sprintf("/v1/sessions/%d/signatures?nonce=%d", escrow, nonce), &out); err != nil {
		return nil, err
	}
	list := make([]*sessionpb.StateSignature, 0, len(out.Signatures))
	for _, raw := range out.Signatures {
		if ss, err := session.DecodeStateSignature(raw); err == nil {
			list = append(list, ss)
		}
	}
	return list, nil
}
