package host

import (
	"bytes"
	"cmp"
	"context"
	"slices"
	"sync"

	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/store"
)

// replicaStore is the proxy host's store (proxy.go): the replicas of the
// primary's sessions it follows, in memory only. The primary's storage is
// the record; a proxy that restarts reads the sessions from the primary
// again. It keeps a session's diffs from its latest snapshot on, which is
// what a recovery after an eviction replays, and no state signatures: a
// proxy's signatures over the primary's states would never be handed out.
type replicaStore struct {
	mu       sync.Mutex
	closed   bool
	sessions map[uint64]*replica
}

type replica struct {
	snap   *sessionpb.EscrowSnapshot
	first  uint64 // nonce of diffs[0]
	diffs  []store.Diff
	last   uint64
	shot   *store.Snapshot
	sealed map[uint64]store.Sealed
}

func newReplicaStore() *replicaStore { return &replicaStore{sessions: map[uint64]*replica{}} }

var _ store.Store = (*replicaStore)(nil)

func (s *replicaStore) get(id uint64) (*replica, error) {
	if s.closed {
		return nil, store.ErrClosed
	}
	r, ok := s.sessions[id]
	if !ok {
		return nil, store.Errorf(store.ErrNotFound, "the proxy follows no session of escrow %d", id)
	}
	return r, nil
}

// forget drops escrow id's replica.
func (s *replicaStore) forget(id uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sessions, id)
}

func (s *replicaStore) CreateSession(_ context.Context, snap *sessionpb.EscrowSnapshot) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return store.ErrClosed
	}
	if r, ok := s.sessions[snap.EscrowId]; ok {
		if a, b := mustMarshal(snap), mustMarshal(r.snap); !bytes.Equal(a, b) {
			return store.Errorf(store.ErrConflict, "escrow %d is followed already with another snapshot", snap.EscrowId)
		}
		return nil
	}
	s.sessions[snap.EscrowId] = &replica{snap: snap, first: 1, sealed: map[uint64]store.Sealed{}}
	return nil
}

func mustMarshal(snap *sessionpb.EscrowSnapshot) []byte {
	b, _ := snap.Marshal()
	return b
}

func (s *replicaStore) Session(_ context.Context, id uint64) (*store.Session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.get(id)
	if err != nil {
		return nil, err
	}
	return &store.Session{EscrowID: id, Epoch: r.snap.Epoch, Snapshot: r.snap, LastNonce: r.last}, nil
}

func (s *replicaStore) ListSessions(context.Context) ([]*store.Session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*store.Session, 0, len(s.sessions))
	for id, r := range s.sessions {
		out = append(out, &store.Session{EscrowID: id, Epoch: r.snap.Epoch, Snapshot: r.snap, LastNonce: r.last})
	}
	slices.SortFunc(out, func(a, b *store.Session) int { return cmp.Compare(a.EscrowID, b.EscrowID) })
	return out, nil
}

func (s *replicaStore) AppendDiff(ctx context.Context, d store.Diff) error {
	return s.AppendDiffs(ctx, []store.Diff{d})
}

// AppendDiffs keeps the diffs in order; a replay of a kept diff is a no-op
// and other bytes at a kept nonce a fork, as on disk.
func (s *replicaStore) AppendDiffs(_ context.Context, ds []store.Diff) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range ds {
		r, err := s.get(d.EscrowID)
		if err != nil {
			return err
		}
		switch {
		case d.Nonce <= r.last && d.Nonce >= r.first:
			if kept := r.diffs[d.Nonce-r.first]; !bytes.Equal(kept.Data, d.Data) {
				return store.NewForkError(d.EscrowID, d.Nonce, kept.Data, d.Data)
			}
			continue
		case d.Nonce != r.last+1:
			return &store.GapError{EscrowID: d.EscrowID, Nonce: d.Nonce, Last: r.last}
		}
		for _, row := range d.Sealed {
			r.sealed[row.InferenceID] = row
		}
		d.Sealed, d.Signatures = nil, nil
		r.diffs = append(r.diffs, d)
		r.last = d.Nonce
	}
	return nil
}

func (s *replicaStore) Diffs(_ context.Context, id, from uint64, limit int) ([]store.Diff, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.get(id)
	if err != nil {
		return nil, err
	}
	from = max(from, r.first)
	out := []store.Diff{}
	for n := from; n <= r.last && len(out) < limit; n++ {
		out = append(out, r.diffs[n-r.first])
	}
	return out, nil
}

func (s *replicaStore) LastNonce(_ context.Context, id uint64) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.get(id)
	if err != nil {
		return 0, err
	}
	return r.last, nil
}

func (s *replicaStore) PutSignature(context.Context, store.Signature) error { return nil }

func (s *replicaStore) Signatures(context.Context, uint64, uint64) ([]store.Signature, error) {
	return []store.Signature{}, nil
}

// PutSnapshot keeps the snapshot and drops the diffs before it: a
// recovery replays only what follows it.
func (s *replicaStore) PutSnapshot(_ context.Context, snap store.Snapshot) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.get(snap.EscrowID)
	if err != nil {
		return err
	}
	if r.shot != nil && r.shot.Nonce >= snap.Nonce {
		return nil
	}
	r.shot = &snap
	if snap.Nonce > r.first && snap.Nonce <= r.last {
		r.diffs = slices.Clone(r.diffs[snap.Nonce-r.first:])
		r.first = snap.Nonce
	}
	return nil
}

func (s *replicaStore) Snapshot(_ context.Context, id uint64) (store.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.get(id)
	if err != nil {
		return store.Snapshot{}, err
	}
	if r.shot == nil {
		return store.Snapshot{}, store.Errorf(store.ErrNotFound, "no snapshot of escrow %d", id)
	}
	return *r.shot, nil
}

func (s *replicaStore) IndexSealed(_ context.Context, rows []store.Sealed) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, row := range rows {
		r, err := s.get(row.EscrowID)
		if err != nil {
			return err
		}
		r.sealed[row.InferenceID] = row
	}
	return nil
}

func (s *replicaStore) Sealed(_ context.Context, id uint64) ([]store.Sealed, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.get(id)
	if err != nil {
		return nil, err
	}
	out := make([]store.Sealed, 0, len(r.sealed))
	for _, row := range r.sealed {
		out = append(out, row)
	}
	slices.SortFunc(out, func(a, b store.Sealed) int { return cmp.Compare(a.InferenceID, b.InferenceID) })
	return out, nil
}

func (s *replicaStore) SealedCount(_ context.Context, id uint64) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.get(id)
	if err != nil {
		return 0, err
	}
	return uint64(len(r.sealed)), nil
}

func (s *replicaStore) ClearIndex(_ context.Context, id uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.get(id)
	if err != nil {
		return err
	}
	r.sealed = map[uint64]store.Sealed{}
	return nil
}

// The proxy keeps no epochs: it forgets a session once the primary has
// moved it to settlement.
func (s *replicaStore) PrepareEpoch(context.Context, uint64) error { return nil }
func (s *replicaStore) Epochs(context.Context) ([]uint64, error)   { return nil, nil }
func (s *replicaStore) Prune(context.Context, uint64) error        { return nil }
func (s *replicaStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}
