package host

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

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
// through the signatures route) and sends MsgSettleEscrow once a quorum of
// slots has signed.
//
// The members take turns to send (turn): every member catches up and signs
// as soon as the deadline has passed, but the member of the group's first
// slot sends at once, the next one selfSettleTurn later, and so on, so a
// group does not send one settlement per member to the chain, all but one
// of them failing in their block.
type selfSettler struct {
	eng   *Engine
	chain Chain
	send  ChainSender
	read  *peerReads
	log   *slog.Logger
	done  map[uint64]bool      // escrows settled or found closed
	due   map[uint64]time.Time // when each escrow was first seen past its deadline
	turn  time.Duration        // how long each member waits for the one before it
	now   func() time.Time
	busy  atomic.Bool // one round at a time
}

// selfSettleTurn is how long a member waits for the one before it in the
// group to settle an escrow past its deadline: two rounds, time for the
// earlier member's tx to land. The fourth member and those after it all
// send selfSettleTurns turns in, 30 s after the deadline was seen, far
// within the epoch (100 blocks by default) between an escrow's deadline
// and its expiry.
const (
	selfSettleTurn  = 10 * time.Second
	selfSettleTurns = 3
)

// newSelfSettler returns nil, which settles nothing, without a sender.
func newSelfSettler(eng *Engine, c Chain, send ChainSender, read *peerReads, log *slog.Logger) *selfSettler {
	if send == nil {
		return nil
	}
	return &selfSettler{
		eng: eng, chain: c, send: send, read: read, log: log,
		done: map[uint64]bool{}, due: map[uint64]time.Time{}, turn: selfSettleTurn, now: time.Now,
	}
}

// myTurn reports whether this member may send the settlement of snap's
// escrow now: the members are ranked by their first slot in the group, and
// the one of rank r sends r turns (at most selfSettleTurns) after the
// escrow was first seen past its deadline.
func (s *selfSettler) myTurn(snap *sessionpb.EscrowSnapshot) bool {
	id := snap.EscrowId
	now := s.now()
	first, ok := s.due[id]
	if !ok {
		s.due[id], first = now, now
	}
	me := s.eng.Address().Bytes()
	before := map[string]bool{} // members whose first slot is before this one's
	for _, raw := range snap.Group {
		if bytes.Equal(raw, me) {
			break
		}
		before[string(raw)] = true
	}
	rank := min(len(before), selfSettleTurns)
	return now.Sub(first) >= time.Duration(rank)*s.turn
}

// round settles what is due now. Errors are logged; the next round retries.
func (s *selfSettler) round(ctx context.Context) {
	if s == nil || !s.busy.CompareAndSwap(false, true) {
		return
	}
	defer s.busy.Store(false)
	epoch, err := s.chain.CurrentEpoch(ctx)
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
		esc, err := s.chain.Escrow(ctx, id)
		if err != nil {
			continue
		}
		if esc.Status != devshardtypes.EscrowOpen {
			s.done[id] = true
			delete(s.due, id)
			continue
		}
		if epoch < esc.DeadlineEpoch {
			continue
		}
		st = s.catchUp(ctx, st)
		if !s.myTurn(st.Snapshot) {
			continue
		}
		if err := s.settle(ctx, st); err != nil {
			s.log.Warn("self-settlement", "escrow", id, "err", err)
			continue
		}
		s.done[id] = true
		delete(s.due, id)
	}
}

// settle gathers the group's signatures over st's root and, with a
// quorum, sends the settlement.
func (s *selfSettler) settle(ctx context.Context, st Settleable) error {
	m := st.Settlement
	sigs := session.NewSignatureSet(st.Snapshot, m.Nonce, m.StateRoot, s.chain.Authorizer())
	// Each signature is verified as it comes: a forged one for a slot is
	// dropped at once, so it cannot keep out the slot's real one that
	// another member holds.
	take := func(list []*sessionpb.StateSignature) {
		for _, ss := range list {
			if sigs.Add(ss) == nil {
				sigs.Quorum()
			}
		}
	}
	// A store that fails to read the host's own signatures does not stop
	// the settlement: the peers' stored signatures may make a quorum
	// without them, and the hosts' pay must not wait on this host's disk.
	own, ownErr := s.eng.OwnSignatures(ctx, m.EscrowId, m.Nonce)
	if ownErr != nil {
		s.log.Warn("self-settlement: own signatures unreadable; settling from the peers'", "escrow", m.EscrowId, "nonce", m.Nonce, "err", ownErr)
	}
	take(own)
	for _, a := range s.peers(st.Snapshot) {
		peer, err := s.read.signatures(ctx, a, st.Snapshot, m.Nonce)
		if err != nil {
			s.log.Info("self-settlement: a peer's signatures are missing", "escrow", m.EscrowId, "peer", s.chain.Address(a), "err", err)
			continue
		}
		take(peer)
	}
	if !sigs.Quorum() {
		group := len(st.Snapshot.Group)
		if ownErr != nil {
			return fmt.Errorf("%d of %d slots signed the root at nonce %d; settling needs %d, and this host's own signatures are unreadable: %w",
				sigs.Len(), group, m.Nonce, session.QuorumSize(group), ownErr)
		}
		return fmt.Errorf("%d of %d slots signed the root at nonce %d; settling needs %d", sigs.Len(), group, m.Nonce, session.QuorumSize(group))
	}
	if err := sigs.Attach(m); err != nil {
		return err
	}
	tx, err := s.send.SettleEscrow(ctx, m)
	if err != nil {
		return err
	}
	s.log.Info("settled an escrow the gateway left open past its deadline", "escrow", m.EscrowId, "nonce", m.Nonce, "tx", tx)
	return nil
}

// catchUpPages bounds the pages of diffs one catch-up reads from a peer.
const catchUpPages = 64

// catchUp brings the host's copy of st's escrow up to the latest nonce a
// peer holds, then signs its latest root if it has not, and returns the
// escrow as it now stands. A gateway that went away may have left the
// members at different nonces (diffs it held for some of them, deliveries
// in flight), and no root would then gather a quorum of signatures. Every
// diff carries the gateway's signature, so a peer's stored copy is as good
// as the gateway's; each member catches up in its own round, so the group
// meets at the latest nonce.
func (s *selfSettler) catchUp(ctx context.Context, st Settleable) Settleable {
	id := st.Snapshot.EscrowId
	nonce := st.Settlement.Nonce
	for _, peer := range s.peers(st.Snapshot) {
		for range catchUpPages {
			raws, err := s.read.diffs(ctx, peer, st.Snapshot, nonce+1)
			if err != nil || len(raws) == 0 {
				break
			}
			items := make([]DiffItem, len(raws))
			for i, raw := range raws {
				items[i] = DiffItem{Raw: raw}
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
