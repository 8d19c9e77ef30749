package hybrid

import (
	"context"
	"errors"
	"time"

	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/postgres"
)

// An escrow whose history is in Postgres keeps taking diffs while Postgres
// is down: they go to its tail in the local tail file. The escrow stays
// Postgres-homed, and the tail is sticky: once it has begun, every diff of
// the escrow goes to it, even after Postgres is back, until the reconnect
// loop has copied it into Postgres (drainTails). So Postgres never takes a
// nonce whose predecessor is only in the tail.

// isTailed reports whether escrow id has a tail.
func (h *Store) isTailed(id uint64) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	_, ok := h.tailed[id]
	return ok
}

func (h *Store) tailOf(id uint64) (tailInfo, bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	ti, ok := h.tailed[id]
	return ti, ok
}

// stored notes that Postgres holds escrow id up to nonce.
func (h *Store) stored(id, nonce uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if r, ok := h.where[id]; ok && r.b == Postgres && nonce > r.last {
		r.last = nonce
		h.where[id] = r
	}
}

// appendTail appends ds[i] for i in idx (in batch order) to their escrows'
// tails in one commit, and sets errs[i]. Each diff is checked as
// AppendDiff would against the escrow's chain: Postgres up to the tail's
// base, the tail after it. It returns, untouched, the diffs of escrows
// that have no tail while Postgres is up: their tail was copied into
// Postgres meanwhile, so they go there.
func (h *Store) appendTail(ctx context.Context, ds []store.Diff, idx []int, errs []error) (toPostgres []int) {
	h.tailMu.Lock()
	defer h.tailMu.Unlock()
	heads := map[uint64]tailInfo{}
	var fresh []uint64 // tails begun by this batch
	var take []*store.Diff
	var took []int
	for _, i := range idx {
		d := &ds[i]
		if err := store.CheckDiff(d); err != nil {
			errs[i] = err
			continue
		}
		ti, ok := heads[d.EscrowID]
		if !ok {
			if ti, ok = h.tailOf(d.EscrowID); !ok {
				if h.up.Load() && h.remote() != nil {
					toPostgres = append(toPostgres, i)
					continue
				}
				h.mu.RLock()
				r := h.where[d.EscrowID]
				h.mu.RUnlock()
				if r.snap == nil {
					errs[i] = h.pgDown(d.EscrowID)
					continue
				}
				ti = tailInfo{epoch: r.epoch, base: r.last, last: r.last, snap: r.snap}
				fresh = append(fresh, d.EscrowID)
			}
		}
		switch {
		case d.Nonce <= ti.base:
			// A replay of a diff only Postgres holds: it cannot be checked
			// until Postgres is back.
			errs[i] = h.pgDown(d.EscrowID)
			continue
		case d.Nonce <= ti.last:
			errs[i] = h.tailReplay(ctx, d)
			continue
		case d.Nonce > ti.last+1:
			errs[i] = &store.GapError{EscrowID: d.EscrowID, Nonce: d.Nonce, Last: ti.last}
			continue
		}
		ti.last = d.Nonce
		heads[d.EscrowID] = ti
		take, took = append(take, d), append(took, i)
	}
	for _, id := range fresh {
		if _, used := heads[id]; !used {
			continue
		}
		if err := h.tails.begin(ctx, id, heads[id]); err != nil {
			for _, i := range took {
				errs[i] = err
			}
			return toPostgres
		}
	}
	if len(take) > 0 {
		err := h.tails.append(ctx, take)
		for _, i := range took {
			errs[i] = err // nil: stored, replacing a refusal by Postgres
		}
		if err != nil {
			heads = nil
		}
	}
	h.mu.Lock()
	for id, ti := range heads {
		h.tailed[id] = ti
	}
	h.mu.Unlock()
	return toPostgres
}

// tailReplay judges a diff at a nonce the tail holds: the same bytes are a
// replay, others a fork.
func (h *Store) tailReplay(ctx context.Context, d *store.Diff) error {
	prev, err := h.tails.diff(ctx, d.EscrowID, d.Nonce)
	if err != nil || prev == nil {
		return err
	}
	if store.SameDiff(prev.Root, prev.Data, d) {
		return nil
	}
	return store.NewForkError(d.EscrowID, d.Nonce, prev.Data, d.Data)
}

// tailSession answers Session for a tailed escrow: Postgres's session, or
// while it is down the snapshot the tail keeps, with the tail's last nonce.
func (h *Store) tailSession(ctx context.Context, id uint64, ti tailInfo) (*store.Session, error) {
	if pg := h.remote(); pg != nil && h.up.Load() {
		s, err := pg.Session(ctx, id)
		if err == nil {
			s.LastNonce = max(s.LastNonce, ti.last)
			return s, nil
		}
		if !errors.Is(h.check(err), store.ErrUnavailable) {
			return nil, err
		}
	}
	var snap sessionpb.EscrowSnapshot
	if err := snap.Unmarshal(ti.snap); err != nil {
		return nil, err
	}
	return &store.Session{EscrowID: id, Epoch: ti.epoch, Snapshot: &snap, LastNonce: ti.last}, nil
}

// tailDiffs answers Diffs for a tailed escrow: nonces up to the base from
// Postgres (ErrUnavailable while it is down), the rest from the tail.
func (h *Store) tailDiffs(ctx context.Context, id, from uint64, limit int, ti tailInfo) ([]store.Diff, error) {
	out := []store.Diff{}
	if limit <= 0 {
		return out, nil
	}
	if from <= ti.base {
		pg := h.remote()
		if pg == nil || !h.up.Load() {
			return nil, h.pgDown(id)
		}
		head, err := pg.Diffs(ctx, id, from, min(limit, int(ti.base-from+1)))
		if err != nil {
			return nil, h.check(err)
		}
		out = append(out, head...)
		if len(out) == limit || len(out) < int(ti.base-from+1) {
			return out, nil
		}
		from = ti.base + 1
	}
	rest, err := h.tails.diffs(ctx, id, from, limit-len(out), false)
	if err != nil {
		return nil, err
	}
	return append(out, rest...), nil
}

// drainTails copies every tail into Postgres, then drops it. Writes go on
// meanwhile: each pass copies what the tail holds, and the last pass runs
// under tailMu, so nothing is appended between the copy and the drop.
func (h *Store) drainTails() {
	h.mu.RLock()
	ids := make([]uint64, 0, len(h.tailed))
	for id := range h.tailed {
		ids = append(ids, id)
	}
	h.mu.RUnlock()
	for _, id := range ids {
		if h.closed.Load() || !h.up.Load() {
			return
		}
		if h.quarantineErr(id) != nil {
			continue // the tail is kept for an operator
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := h.drainTail(ctx, id)
		cancel()
		if errors.Is(err, store.ErrUnavailable) {
			return
		}
	}
}

// drainPasses is how many passes copy a tail while writes to it go on; the
// pass after them holds its writes.
const drainPasses = 3

// drainTail copies escrow id's tail into Postgres in nonce order and drops
// it. A diff Postgres holds with other bytes, or a tail that does not
// continue Postgres's chain, quarantines the escrow and keeps the tail for
// an operator.
func (h *Store) drainTail(ctx context.Context, id uint64) error {
	pg := h.remote()
	if pg == nil {
		return h.pgDown(id)
	}
	ti, ok := h.tailOf(id)
	if !ok {
		return nil
	}
	next := ti.base + 1
	for pass := 1; ; pass++ {
		if err := h.copyTail(ctx, pg, id, &next); err != nil {
			return err
		}
		h.tailMu.Lock()
		ti, _ = h.tailOf(id)
		if ti.last >= next && pass < drainPasses {
			h.tailMu.Unlock()
			continue // grew meanwhile: another pass while writes go on
		}
		if ti.last >= next {
			// Writers that keep up with the copy would keep the tail
			// alive for ever: the last pass copies what is left with
			// tail writes held, which is what one pass let in.
			if err := h.copyTail(ctx, pg, id, &next); err != nil {
				h.tailMu.Unlock()
				return err
			}
		}
		err := h.tails.drop(ctx, id)
		if err == nil {
			h.mu.Lock()
			delete(h.tailed, id)
			if r, ok := h.where[id]; ok {
				r.last = max(r.last, ti.last)
				h.where[id] = r
			}
			h.mu.Unlock()
		}
		h.tailMu.Unlock()
		return err
	}
}

// copyTail copies the tail of escrow id from *next on into Postgres, and
// moves *next past what it copied.
func (h *Store) copyTail(ctx context.Context, pg *postgres.Store, id uint64, next *uint64) error {
	const batch = 256
	for {
		ds, err := h.tails.diffs(ctx, id, *next, batch, true)
		if err != nil {
			return err
		}
		if len(ds) == 0 {
			return nil
		}
		errs := store.DiffErrors(h.check(pg.AppendDiffs(ctx, ds)), len(ds))
		for k, err := range errs {
			switch {
			case err == nil:
			case errors.Is(err, store.ErrFork), errors.Is(err, store.ErrNonceGap):
				h.mu.Lock()
				h.quarantineFor(id, store.Wrap(store.ErrQuarantined, err,
					"escrow %d is quarantined: diff %d, written to the local tail file %s while Postgres %s was down, does not continue the history Postgres holds; "+
						"neither copy is used until an operator resolves it", id, ds[k].Nonce, h.tails.path, h.pgName))
				h.mu.Unlock()
				return err
			default:
				return err
			}
		}
		// A diff Postgres already held (a write whose outcome was unknown)
		// was a replay, which does not store its signatures: put them.
		for _, d := range ds {
			for _, sig := range d.Signatures {
				if err := pg.PutSignature(ctx, sig); err != nil {
					return h.check(err)
				}
			}
		}
		*next = ds[len(ds)-1].Nonce + 1
	}
}

// Tails lists the escrows whose latest diffs are in the local tail file,
// not yet copied into Postgres, with the last nonce of each.
func (h *Store) Tails() map[uint64]uint64 {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make(map[uint64]uint64, len(h.tailed))
	for id, ti := range h.tailed {
		out[id] = ti.last
	}
	return out
}
