package devnet

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/chain/node"
	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
)

// rogue is a scripted gateway: a funded account of its own that opens an
// escrow on the real chain and sends the real hosts whatever diffs its
// script says, signed with its key. It keeps a replica of the session it
// tells the majority, and the state signatures hosts return.
type rogue struct {
	t     *testing.T
	e     *e2e
	key   *signing.PrivKey
	chain *chainclient.Client
	snap  *sessionpb.EscrowSnapshot
}

// rogueAccount is the genesis account the rogue gateway plays with.
var rogueAccount = node.Account{Name: "rogue", Coins: coins(GatewayFunds)}

// newRogue opens an escrow of amount from the rogue's account.
func newRogue(t *testing.T, e *e2e, amount uint64) *rogue {
	t.Helper()
	acct := e.nw.Chain.Accounts[len(e.nw.Hosts)+1]
	require.Equal(t, rogueAccount.Name, acct.Name)
	key, err := signing.PrivKeyFromBytes(acct.Key.Key)
	require.NoError(t, err)
	c, err := chainclient.Dial(chainclient.Config{GRPC: e.nw.Chain.Nodes[0].GRPC, ChainID: e.nw.Chain.ChainID, Key: key})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	snap, err := c.CreateEscrow(e.ctx, amount)
	require.NoError(t, err)
	return &rogue{t: t, e: e, key: key, chain: c, snap: snap}
}

// replica starts a fresh replica of the rogue's session: a forking
// gateway keeps one per branch.
func (r *rogue) replica() *session.Session {
	s, err := session.New(r.snap, nil)
	require.NoError(r.t, err)
	return s
}

// request is an inference request and its StartInference.
func (r *rogue) request(s *session.Session, text string) (*sessionpb.Tx, executor.Request) {
	req := executor.Request{Model: executor.BuiltinModel, MaxTokens: 8, Messages: []executor.Message{{Role: "user", Content: text}}}
	hash := req.PromptHash()
	start := &sessionpb.Tx{Body: &sessionpb.Tx_Start{Start: &sessionpb.StartInference{InferenceId: s.Nonce() + 1,
		InputTokens: uint64(executor.PromptTokens(req.Messages)), MaxTokens: uint64(req.MaxTokens), PromptHash: hash[:], Model: req.Model}}}
	return start, req
}

// next builds, signs and applies the next diff of s.
func (r *rogue) next(s *session.Session, txs ...*sessionpb.Tx) *sessionpb.Diff {
	r.t.Helper()
	d := &sessionpb.Diff{EscrowId: r.snap.EscrowId, Nonce: s.Nonce() + 1, Txs: txs}
	p, err := s.Sequence(d)
	require.NoError(r.t, err)
	require.NoError(r.t, session.SignDiff(r.key, r.snap.ChainId, d))
	require.NoError(r.t, p.Commit())
	return d
}

// hosts are the devnet hosts in the rogue's group, with the slots each holds.
func (r *rogue) hosts() map[*Host][]uint32 {
	out := map[*Host][]uint32{}
	for slot, a := range r.snap.Group {
		for _, h := range r.e.nw.Hosts {
			if bytes.Equal(h.Account, a) {
				out[h] = append(out[h], uint32(slot))
			}
		}
	}
	return out
}

// deliver posts d with its payloads to h, signed as the gateway, and
// returns the status and, on success, the host's reply.
func (r *rogue) deliver(h *Host, d *sessionpb.Diff, reqs map[uint64]executor.Request) (int, *hostapi.DiffResponse, string) {
	r.t.Helper()
	raw, err := d.Marshal()
	require.NoError(r.t, err)
	body, err := json.Marshal(hostapi.DiffRequest{Diff: raw, Requests: reqs})
	require.NoError(r.t, err)
	status, text := r.call(h, http.MethodPost, fmt.Sprintf("/v1/sessions/%d/diffs", r.snap.EscrowId), body)
	if status != http.StatusOK {
		return status, nil, text
	}
	var reply hostapi.DiffResponse
	require.NoError(r.t, json.Unmarshal([]byte(text), &reply))
	return status, &reply, text
}

// call makes a request to h signed with the rogue's key.
func (r *rogue) call(h *Host, method, path string, body []byte) (int, string) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(r.e.ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, h.URL+path, bytes.NewReader(body))
	require.NoError(r.t, err)
	req.Header.Set("Content-Type", "application/json")
	signRequestAs(r.t, r.e, r.key, h, req, body)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(r.t, err)
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(raw))
}

// signedSlots decodes a reply's state signatures into the slots they sign for.
func signedSlots(t *testing.T, reply *hostapi.DiffResponse) []*sessionpb.StateSignature {
	var out []*sessionpb.StateSignature
	for _, raw := range reply.Signatures {
		var ss sessionpb.StateSignature
		require.NoError(t, ss.Unmarshal(raw))
		out = append(out, &ss)
	}
	return out
}

// settleWith sends the creator's settlement of s, carrying sigs.
func (r *rogue) settleWith(s *session.Session, sigs []*sessionpb.SlotSignature) error {
	m := s.Settlement()
	m.Signatures = sigs
	_, err := r.chain.SettleEscrow(r.e.ctx, m)
	return err
}

// finalizeTx is the gateway's FinalizeRound.
func finalizeTx() *sessionpb.Tx {
	return &sessionpb.Tx{Body: &sessionpb.Tx_Finalize{Finalize: &sessionpb.FinalizeRound{}}}
}

// quorum reports whether slots make more than 2/3 of the group.
func quorum(n, slots int) bool { return 3*slots > 2*n }
