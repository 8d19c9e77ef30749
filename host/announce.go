package host

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
)

// Announcing is the fast lane of gossip. An executor that has signed its
// ConfirmStart and FinishInference hands them to the gateway in its stream,
// and the gateway carries them in its next diff. Every other member must
// check their signatures before it takes that diff, on the next request's
// path. So the executor also announces them to its peers at once: each peer
// checks them into its memo while the gateway is still answering the app,
// and the diff that carries them then costs it a hash per tx.
//
// Announced txs are only checked, not pooled: the executor's own stream
// carries them, and re-gossip covers a gateway that leaves them out.

// announceClient keeps connections to the peers open: an executor
// announces after every inference.
var announceClient = &http.Client{Timeout: gossipTimeout, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}

// announce pushes txs, just signed by this host for escrow snap, to every
// other member of its group, in the background.
func (e *Engine) announce(snap *sessionpb.EscrowSnapshot, txs ...*sessionpb.Tx) {
	if e.cfg.Peers == nil {
		return
	}
	raws := make([][]byte, 0, len(txs))
	for _, tx := range txs {
		raw, err := tx.Marshal()
		if err != nil {
			return
		}
		raws = append(raws, raw)
	}
	body, err := json.Marshal(GossipRequest{Announced: raws})
	if err != nil {
		return
	}
	for _, peer := range e.peersOf(snap) {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), gossipTimeout)
			defer cancel()
			url, err := e.cfg.Peers.PeerURL(ctx, peer)
			if err == nil {
				err = postAnnounce(ctx, url, snap.EscrowId, body)
			}
			if err != nil {
				// Only a check moved earlier is lost: the diff checks the txs.
				e.log.Debug("announce failed", "escrow", snap.EscrowId, "peer", peer, "err", err)
			}
		}()
	}
}

func postAnnounce(ctx context.Context, baseURL string, escrow uint64, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("%s/v1/sessions/%d/gossip", baseURL, escrow), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := announceClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("peer answered %d: %s", resp.StatusCode, bytes.TrimSpace(msg))
	}
	return nil
}

// Announced checks txs a peer announced into the engine's memo, outside the
// session's lock, so that the diff carrying them checks a hash per tx. A tx
// that does not verify is refused; none is pooled.
func (e *Engine) Announced(ctx context.Context, escrowID uint64, raws [][]byte) error {
	en, err := e.session(ctx, escrowID)
	if err != nil {
		return err
	}
	snap := en.snap // fixed once loaded
	en.mu.Unlock()
	for i, raw := range raws {
		var tx sessionpb.Tx
		if err := tx.Unmarshal(raw); err != nil {
			return fmt.Errorf("%w: announced tx %d does not decode: %v", ErrBadInput, i, err)
		}
		if err := session.VerifyHostTxWith(snap, &tx, e.cfg.Auth, e.memo); err != nil {
			return fmt.Errorf("%w: announced tx %d: %v", ErrForbidden, i, err)
		}
	}
	return nil
}
