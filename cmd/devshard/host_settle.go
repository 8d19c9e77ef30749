package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/host"
	"github.com/devshard/devshard/httpauth"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// selfSettler settles, from the host's own account, every escrow the host
// serves that is still open once its settlement deadline has passed: the
// gateway went away or stalls, and the hosts are owed their work. It
// catches up from its peers' stored diffs (catchUp), gathers the group's
// state signatures over the host's latest root (its own, plus each peer's
// through the signatures route) and sends MsgSettleEscrow once more than
// 2/3 of the slots have signed.
type selfSettler struct {
	eng    *host.Engine
	c      *chainclient.Client
	urls   host.Peers // where each group member serves
	send   *claimer   // the account's key and tx client
	signer signing.Signer
	http   *http.Client
	log    *slog.Logger
	done   map[uint64]bool // escrows settled or found closed
	busy   atomic.Bool     // one round at a time
}

func newSelfSettler(eng *host.Engine, c *chainclient.Client, send *claimer, signer signing.Signer, log *slog.Logger) *selfSettler {
	if send == nil {
		return nil // no key that can send txs for the account: the claimer said why
	}
	return &selfSettler{eng: eng, c: c, urls: newChainPeers(c), send: send, signer: signer, http: &http.Client{Timeout: 5 * time.Second}, log: log, done: map[uint64]bool{}}
}

// round settles what is due now. Errors are logged; the next round retries.
func (s *selfSettler) round(ctx context.Context) {
	if s == nil || !s.busy.CompareAndSwap(false, true) {
		return
	}
	defer s.busy.Store(false)
	epoch, err := s.c.CurrentEpoch(ctx)
	if err != nil {
		return
	}
	for _, st := range s.eng.Settleables() {
		id := st.Snapshot.EscrowId
		// The deadline is at least an epoch after the escrow's own (the
		// settlement window), so current-epoch escrows cost no query.
		if s.done[id] || st.Snapshot.Epoch >= epoch {
			continue
		}
		esc, err := s.c.Escrow(ctx, id)
		if err != nil {
			continue
		}
		if esc.Status != devshardtypes.EscrowOpen {
			s.done[id] = true
			continue
		}
		if epoch < esc.DeadlineEpoch {
			continue
		}
		st = s.catchUp(ctx, st)
		if err := s.settle(ctx, st); err != nil {
			s.log.Warn("self-settlement", "escrow", id, "err", err)
			continue
		}
		s.done[id] = true
	}
}

func (s *selfSettler) settle(ctx context.Context, st host.Settleable) error {
	m := st.Settlement
	sigs := map[uint32]*sessionpb.Signature{}
	take := func(list []*sessionpb.StateSignature) {
		for _, ss := range list {
			if ss.Nonce == m.Nonce && bytes.Equal(ss.StateRoot, m.StateRoot) && session.VerifyStateSignature(st.Snapshot, ss, s.c.Authorizer()) == nil {
				sigs[ss.Slot] = ss.Sig
			}
		}
	}
	own, err := s.eng.OwnSignatures(ctx, m.EscrowId, m.Nonce)
	if err != nil {
		return err
	}
	take(own)
	for _, a := range s.peers(st.Snapshot) {
		peer, err := s.peerSignatures(ctx, a, m.EscrowId, m.Nonce)
		if err != nil {
			s.log.Info("self-settlement: a peer's signatures are missing", "escrow", m.EscrowId, "peer", s.c.Address(a), "err", err)
			continue
		}
		take(peer)
	}
	if 3*len(sigs) <= 2*len(st.Snapshot.Group) {
		return fmt.Errorf("%d of %d slots signed the root at nonce %d; more than 2/3 are needed", len(sigs), len(st.Snapshot.Group), m.Nonce)
	}
	slots := make([]uint32, 0, len(sigs))
	for slot := range sigs {
		slots = append(slots, slot)
	}
	sort.Slice(slots, func(i, j int) bool { return slots[i] < slots[j] })
	for _, slot := range slots {
		m.Signatures = append(m.Signatures, &sessionpb.SlotSignature{Slot: slot, Sig: sigs[slot]})
	}
	res, err := s.send.tx.Send(ctx, s.send.key, &devshardtypes.MsgSettleEscrow{Sender: sdk.AccAddress(s.eng.Address().Bytes()).String(), Settlement: m})
	if err != nil {
		return err
	}
	s.log.Info("settled an escrow the gateway left open past its deadline", "escrow", m.EscrowId, "nonce", m.Nonce, "tx", res.TxHash)
	return nil
}

// catchUpPages bounds the pages of diffs one catch-up reads from a peer.
const catchUpPages = 64

// catchUp brings the host's copy of st's escrow up to the latest nonce a
// peer holds, then signs its latest root if it has not, and returns the
// escrow as it now stands. A gateway that went away may have left the
// members at different nonces (diffs it held for some of them, deliveries
// in flight), and no root would then gather the signatures of more than
// 2/3 of the slots. Every diff carries the gateway's signature, so a
// peer's stored copy is as good as the gateway's; each member catches up
// in its own round, so the group meets at the latest nonce.
func (s *selfSettler) catchUp(ctx context.Context, st host.Settleable) host.Settleable {
	id := st.Snapshot.EscrowId
	nonce := st.Settlement.Nonce
	for _, peer := range s.peers(st.Snapshot) {
		for range catchUpPages {
			raws, err := s.peerDiffs(ctx, peer, id, nonce+1)
			if err != nil || len(raws) == 0 {
				break
			}
			items := make([]host.DiffItem, len(raws))
			for i, raw := range raws {
				items[i] = host.DiffItem{Raw: raw}
			}
			reply, err := s.eng.ApplyDiffs(ctx, id, items)
			if err != nil {
				s.log.Warn("self-settlement: a peer's diffs do not apply", "escrow", id, "peer", peer, "from", nonce+1, "err", err)
				break
			}
			nonce = reply.Nonce
		}
	}
	if err := s.eng.SignLatest(ctx, id); err != nil {
		s.log.Warn("self-settlement: latest root not signed", "escrow", id, "err", err)
	}
	for _, now := range s.eng.Settleables() {
		if now.Snapshot.EscrowId == id {
			return now
		}
	}
	return st
}

// peers are the group's other participants.
func (s *selfSettler) peers(snap *sessionpb.EscrowSnapshot) []signing.Address {
	seen := map[string]bool{string(s.eng.Address().Bytes()): true}
	var out []signing.Address
	for _, raw := range snap.Group {
		if seen[string(raw)] {
			continue
		}
		seen[string(raw)] = true
		if a, err := signing.AddressFromBytes(raw); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// peerGet reads path from a group member's host API, signed as this host,
// into out.
func (s *selfSettler) peerGet(ctx context.Context, peer signing.Address, path string, out any) error {
	url, err := s.urls.PeerURL(ctx, peer)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+path, nil)
	if err != nil {
		return err
	}
	if err := httpauth.Sign(req, nil, s.signer, httpauth.Audience{ChainID: s.eng.ChainID(), Host: peer}, time.Now()); err != nil {
		return err
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %d", url, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// peerDiffs asks a group member for its stored diffs from nonce from on.
func (s *selfSettler) peerDiffs(ctx context.Context, peer signing.Address, escrow, from uint64) ([][]byte, error) {
	var out struct {
		Diffs []struct {
			Nonce uint64 `json:"nonce"`
			Data  []byte `json:"data"`
		} `json:"diffs"`
	}
	if err := s.peerGet(ctx, peer, fmt.Sprintf("/v1/sessions/%d/diffs?from=%d&limit=%d", escrow, from, host.MaxDiffsPerDelivery), &out); err != nil {
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

// peerSignatures asks a group member for its state signatures at nonce.
func (s *selfSettler) peerSignatures(ctx context.Context, peer signing.Address, escrow, nonce uint64) ([]*sessionpb.StateSignature, error) {
	var out struct {
		Signatures [][]byte `json:"signatures"`
	}
	if err := s.peerGet(ctx, peer, fmt.Sprintf("/v1/sessions/%d/signatures?nonce=%d", escrow, nonce), &out); err != nil {
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

// chainPeers answers the host's gossip question, where a group member
// serves, from the chain's participant registry, cached for a while.
type chainPeers struct {
	c   *chainclient.Client
	ttl time.Duration

	mu    sync.Mutex
	cache map[signing.Address]peerEntry
}

type peerEntry struct {
	url string
	at  time.Time
}

func newChainPeers(c *chainclient.Client) *chainPeers {
	return &chainPeers{c: c, ttl: 30 * time.Second, cache: map[signing.Address]peerEntry{}}
}

// PeerURL implements host.Peers.
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
