package gateway

import (
	"context"
	"fmt"
	"time"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
)

// escrow is one escrow's session as the gateway runs it, in parts that
// each own their state and their lock:
//
//   - seq orders and signs the diffs, stores them and keeps the pooled txs
//     to carry (sequencer.mu);
//   - out delivers the diffs to the members and keeps what each member
//     took and whether it is down (courier.mu, and each outbox's mu);
//   - sigs collects the members' state signatures over the latest root
//     (signatures.mu);
//   - in takes and verifies the txs the members answer (intake.mu);
//   - settle finalizes the session and settles it on chain (settler.run,
//     held through a settlement, and settler.mu, for its status).
//
// Locks are taken in this order: settler.run, sequencer.mu, then one of
// the others. No function that is called with a lock held releases it.
type escrow struct {
	snap   *sessionpb.EscrowSnapshot
	seq    *sequencer
	out    *courier
	sigs   *signatures
	in     *intake
	settle *settler
}

func (e *escrow) id() uint64 { return e.snap.EscrowId }

// newEscrow resolves the group's hosts and assembles the parts of snap's
// session, at status, over an empty replica.
func (g *Gateway) newEscrow(ctx context.Context, snap *sessionpb.EscrowSnapshot, status EscrowStatus) (*escrow, error) {
	replica, err := session.New(snap, g.auth)
	if err != nil {
		return nil, err
	}
	replica.UseMemo(g.memo)
	members, err := resolveMembers(ctx, g.chain, snap)
	if err != nil {
		return nil, err
	}
	e := &escrow{snap: snap}
	e.sigs = newSignatures(snap, g.auth, 0, nil, g.log)
	e.in = newIntake(snap, members, g.auth, g.memo, g.metrics)
	e.out = newCourier(courierConfig{snap: snap, peers: g.peers, state: g.state, log: g.log, ctx: g.loopCx,
		hostTimeout: g.cfg.HostTimeout, hold: g.cfg.HoldFor}, members, e.sigs, e.in)
	e.seq = &sequencer{snap: snap, key: g.key, state: g.state, out: e.out, sigs: e.sigs, in: e.in, log: g.log, metrics: g.metrics,
		low: func() { g.retire(e) }, replica: replica, pending: map[string]*pooled{}}
	e.settle = &settler{snap: snap, seq: e.seq, out: e.out, sigs: e.sigs, state: g.state, chain: g.chain, log: g.log, metrics: g.metrics,
		status: status}
	return e, nil
}

// restore rebuilds an escrow from its stored diffs.
func (g *Gateway) restore(ctx context.Context, stored StoredEscrow) (*escrow, error) {
	e, err := g.newEscrow(ctx, stored.Snapshot, stored.Status)
	if err != nil {
		return nil, err
	}
	replica := e.seq.replica // not shared yet: no lock
	for from := uint64(1); ; {
		diffs, err := g.state.Diffs(ctx, e.id(), from, 512)
		if err != nil {
			return nil, err
		}
		for _, sd := range diffs {
			var d sessionpb.Diff
			if err := d.Unmarshal(sd.Data); err != nil {
				return nil, fmt.Errorf("stored diff %d: %w", sd.Nonce, err)
			}
			if _, err := replica.Apply(&d); err != nil {
				return nil, fmt.Errorf("replaying stored diff %d: %w", sd.Nonce, err)
			}
			from = sd.Nonce + 1
		}
		if len(diffs) < 512 {
			break
		}
	}
	// Optimistic: hosts that are behind answer 409 and are replayed.
	e.out.assumeAcked(replica.Nonce())
	root := replica.Root()
	e.sigs.expect(replica.Nonce(), root[:])
	e.seq.tailUnknown = stored.Status != StatusSettled
	return e, nil
}

// flush carries the members' pooled txs in a diff if the session has been
// quiet for idle: finishes of the last requests, validations and timeout
// votes. The mempools are read without holding up the sequencer.
func (e *escrow) flush(ctx context.Context, idle time.Duration) {
	if !e.seq.isQuiet(idle) {
		return
	}
	e.out.collect(ctx)
	e.seq.flush(ctx, idle)
}

// view is an operator's view of the escrow; current says whether it
// takes new requests.
func (e *escrow) view(current bool) EscrowView {
	status := e.settle.current()
	q := e.seq
	q.mu.Lock()
	defer q.mu.Unlock()
	root := q.replica.Root()
	return EscrowView{ID: e.id(), Epoch: e.snap.Epoch, Runtime: e.snap.RuntimeVersion, Status: status, Phase: q.replica.Phase().String(), Nonce: q.replica.Nonce(),
		Root: fmt.Sprintf("%x", root), Balance: q.replica.Balance(), NextExecutor: e.out.members[q.executorMember(q.replica.Nonce()+1)].url,
		Current: current}
}
