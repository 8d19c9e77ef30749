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
// gathers the group's state signatures over the host's latest root (its
// own, plus each peer's through the signatures route) and sends
// MsgSettleEscrow once more than 2/3 of the slots have signed.
type selfSettler struct {
	eng    *host.Engine
	c      *chainclient.Client
	send   *claimer // the account's key and tx client
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
	return &selfSettler{eng: eng, c: c, send: send, signer: signer, http: &http.Client{Timeout: 5 * time.Second}, log: log, done: map[uint64]bool{}}
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
	seen := map[string]bool{string(s.eng.Address().Bytes()): true}
	for _, raw := range st.Snapshot.Group {
		if seen[string(raw)] {
			continue
		}
		seen[string(raw)] = true
		a, err := signing.AddressFromBytes(raw)
		if err != nil {
			return err
		}
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

// peerSignatures asks a group member for its state signatures at nonce.
func (s *selfSettler) peerSignatures(ctx context.Context, peer signing.Address, escrow, nonce uint64) ([]*sessionpb.StateSignature, error) {
	p, err := s.c.Participant(ctx, peer)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/v1/sessions/%d/signatures?nonce=%d", strings.TrimRight(p.Url, "/"), escrow, nonce), nil)
	if err != nil {
		return nil, err
	}
	if err := httpauth.Sign(req, s.signer, time.Now()); err != nil {
		return nil, err
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s answered %d", p.Url, resp.StatusCode)
	}
	var out struct {
		Signatures [][]byte `json:"signatures"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, err
	}
	list := make([]*sessionpb.StateSignature, 0, len(out.Signatures))
	for _, raw := range out.Signatures {
		var ss sessionpb.StateSignature
		if err := ss.Unmarshal(raw); err == nil {
			list = append(list, &ss)
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
