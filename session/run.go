package session

import (
	"fmt"

	"github.com/devshard/devshard/session/sessionpb"
)

// Run is a run of consecutive diffs staged on top of one another: each is
// checked as Apply would check it on the state the diffs before it lead
// to, while the session itself stays where it was. Commit then makes them
// part of the session together; dropping the Run discards them together.
// A host that stores a delivered run in one durable write stages it, writes
// it, and commits only once the write succeeded, so its memory is never
// ahead of its disk (DESIGN invariant 4). Not safe for concurrent use, and
// the session must not move while the run is staged.
type Run struct {
	s       *Session
	pending []*Pending
}

// NewRun starts an empty run on the session's current state.
func (s *Session) NewRun() *Run { return &Run{s: s} }

// Prepare checks diff d exactly as Apply would on the state the run's
// diffs lead to, and adds it to the run. A refused diff is not added: the
// run still holds the diffs before it, and can be committed without it.
func (r *Run) Prepare(d *sessionpb.Diff) (*Pending, error) {
	var prev *Pending
	if n := len(r.pending); n > 0 {
		prev = r.pending[n-1]
	}
	p, err := r.s.prepare(d, prev)
	if err != nil {
		return nil, err
	}
	r.pending = append(r.pending, p)
	return p, nil
}

// Commit makes every diff of the run part of the session, in order. It
// checks first and changes nothing when it fails: when the session moved
// since the run began, or any of the run's diffs was committed already.
func (r *Run) Commit() error {
	if len(r.pending) == 0 {
		return nil
	}
	if err := r.pending[0].committable(); err != nil {
		return err
	}
	for _, p := range r.pending[1:] {
		if p.done {
			return fmt.Errorf("diff %d of the run was already committed", p.st.d.Nonce)
		}
	}
	for _, p := range r.pending {
		p.st.commit(p.update, p.root)
		p.done = true
	}
	return nil
}

// What a staged diff builds on: the session's committed state, or the
// staged diff before it in a run. A base's fields are read, never written.

// baseNonce is the nonce of the state st builds on.
func (st *staged) baseNonce() uint64 {
	if st.prev != nil {
		return st.prev.st.d.Nonce
	}
	return st.s.nonce
}

// basePhase is the phase of the state st builds on.
func (st *staged) basePhase() sessionpb.Phase {
	if st.prev != nil {
		return st.prev.st.phase
	}
	return st.s.phase
}

// baseRecord is live record id as the state st builds on holds it, not
// copied: the latest staged diff that touched or sealed it, else the
// session's.
func (st *staged) baseRecord(id uint64) (*sessionpb.InferenceRecord, bool) {
	for p := st.prev; p != nil; p = p.st.prev {
		if p.st.removed[id] {
			return nil, false
		}
		if r, ok := p.st.touched[id]; ok {
			return r, true
		}
	}
	r, ok := st.s.live[id]
	return r, ok
}

// baseLiveIDs lists the ids live in the state st builds on, in no order.
func (st *staged) baseLiveIDs() []uint64 {
	if st.prev == nil {
		ids := make([]uint64, 0, len(st.s.live)+len(st.touched))
		for id := range st.s.live {
			ids = append(ids, id)
		}
		return ids
	}
	var layers []*staged
	for p := st.prev; p != nil; p = p.st.prev {
		layers = append(layers, p.st)
	}
	live := make(map[uint64]bool, len(st.s.live))
	for id := range st.s.live {
		live[id] = true
	}
	for i := len(layers) - 1; i >= 0; i-- {
		for id := range layers[i].touched {
			live[id] = true
		}
		for id := range layers[i].removed {
			delete(live, id)
		}
	}
	ids := make([]uint64, 0, len(live)+len(st.touched))
	for id := range live {
		ids = append(ids, id)
	}
	return ids
}

// baseTree reads the live-record tree of the state st builds on.
func (st *staged) baseTree() nodes {
	if st.prev != nil {
		return st.prev.update.tree
	}
	return st.s.tree
}

// baseStatLeaves are the host-stats leaves of the state st builds on.
func (st *staged) baseStatLeaves() [][32]byte {
	if st.prev != nil {
		return st.prev.update.statLeaves
	}
	return st.s.statLeaves
}
