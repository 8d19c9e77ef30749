package session

import (
	"slices"

	"github.com/devshard/devshard/session/sessionpb"
)

// seal folds every record that this diff made sealable into the sealed
// accumulator. It runs inside apply, from state alone, so every replica
// seals the same records at the same nonce:
//
//   - entering SETTLEMENT seals everything still live (open reservations are
//     released, open challenges resolved by the votes cast, under the same
//     threshold as during the session);
//   - otherwise VALIDATED, INVALIDATED and TIMED_OUT records seal at once
//     (the short path), in ascending id order;
//   - then FINISHED records seal from the oldest while they are past the
//     snapshot's grace nonces and, by the state clock, its grace seconds.
//     With no clock defined nothing waits out its grace.
//
// The work is proportional to what this diff seals, never to how much was
// sealed before.
func (st *staged) seal() {
	if st.phase == sessionpb.Phase_PHASE_SETTLEMENT && st.basePhase() != sessionpb.Phase_PHASE_SETTLEMENT {
		st.sealAll()
		return
	}
	slices.Sort(st.terminal)
	for _, id := range slices.Compact(st.terminal) {
		st.fold(id)
	}
	snap := st.s.snap
	now := clock(st.stats)
	for len(st.sealQueue) > 0 {
		r := st.peek(st.sealQueue[0])
		if r.Id > st.d.Nonce || st.d.Nonce-r.Id < snap.SealGraceNonces {
			break
		}
		if now <= 0 || r.ConfirmedAt > now || uint64(now-r.ConfirmedAt) < snap.SealGraceSeconds {
			break
		}
		st.fold(r.Id)
	}
}

// sealAll closes the books when the session enters SETTLEMENT.
func (st *staged) sealAll() {
	ids := st.baseLiveIDs()
	for id := range st.touched {
		if _, base := st.baseRecord(id); !base {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		if st.removed[id] {
			continue
		}
		r, _ := st.record(id)
		switch r.Status {
		case sessionpb.InferenceStatus_INFERENCE_STATUS_PENDING, sessionpb.InferenceStatus_INFERENCE_STATUS_STARTED:
			// Never finished: the creator gets the reservation back and
			// nobody is charged or blamed; blame needs timeout votes.
			st.release(r)
		case sessionpb.InferenceStatus_INFERENCE_STATUS_CHALLENGED:
			// The votes are final: the same threshold as during the
			// session, and a challenge that did not reach it keeps the
			// executor's work, so finalizing early cannot let a minority
			// of votes decide.
			if challengeOutcome(st.s.group, r) == sessionpb.InferenceStatus_INFERENCE_STATUS_INVALIDATED {
				st.resolveInvalidated(r)
			} else {
				st.resolveValidated(r)
			}
		}
		st.fold(id)
	}
}

// peek returns the staged or live record without copying it.
func (st *staged) peek(id uint64) *sessionpb.InferenceRecord {
	if r, ok := st.touched[id]; ok {
		return r
	}
	r, _ := st.baseRecord(id)
	return r
}

func (st *staged) fold(id uint64) {
	if st.removed[id] {
		return
	}
	r := st.peek(id)
	st.sealedDigest = foldSealed(st.sealedDigest, recordLeaf(r))
	st.sealedCount++
	st.removed[id] = true
	st.sealedOut = append(st.sealedOut, r)
	removeSorted(&st.sealQueue, id)
}

// pendingRoot is the root of the staged state and the cache updates that
// produce it, applied only on commit.
type pendingRoot struct {
	tree       *treeUpdate
	statLeaves [][32]byte
}

func (st *staged) root() (*pendingRoot, [32]byte) {
	s := st.s
	p := &pendingRoot{statLeaves: slices.Clone(st.baseStatLeaves())}
	for i, dirty := range st.statDirty {
		if dirty {
			p.statLeaves[i] = statsLeaf(uint32(i), &st.stats[i])
		}
	}
	leaves := make(map[uint64][32]byte, len(st.touched)+len(st.removed))
	for id, r := range st.touched {
		if !st.removed[id] {
			leaves[id] = recordLeaf(r)
		}
	}
	for id := range st.removed {
		leaves[id] = [32]byte{}
	}
	p.tree = planTree(st.baseTree(), leaves)
	parts := rootParts{
		escrowID:        s.snap.EscrowId,
		protocolVersion: s.snap.ProtocolVersion,
		nonce:           st.d.Nonce,
		phase:           st.phase,
		activeNonces:    st.activeNonces,
		balance:         st.balance,
		reserved:        st.reserved,
		fees:            st.fees,
		stats:           statsDigest(p.statLeaves),
		records:         p.tree.root(),
		sealedCount:     st.sealedCount,
		sealedDigest:    st.sealedDigest,
	}
	return p, parts.root()
}

func (st *staged) commit(p *pendingRoot, root [32]byte) {
	s := st.s
	s.nonce = st.d.Nonce
	s.phase = st.phase
	s.activeNonces = st.activeNonces
	s.balance, s.reserved, s.fees = st.balance, st.reserved, st.fees
	s.stats = st.stats
	s.statLeaves = p.statLeaves
	for id, r := range st.touched {
		if !st.removed[id] {
			s.live[id] = r
		}
	}
	for id := range st.removed {
		delete(s.live, id)
	}
	s.sealQueue = st.sealQueue
	s.tree.apply(p.tree)
	s.sealedCount, s.sealedDigest = st.sealedCount, st.sealedDigest
	s.root = root
}
