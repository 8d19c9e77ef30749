package store

import (
	"fmt"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
)

// NewDiff is the stored form of d: its marshalled bytes, its root, and the
// index rows for sealed, the records that applying d sealed
// (session.Result.Sealed). A host that received d as bytes can build the
// Diff itself with those bytes, so replays compare what was received.
func NewDiff(d *sessionpb.Diff, sealed []*sessionpb.InferenceRecord) (Diff, error) {
	data, err := d.Marshal()
	if err != nil {
		return Diff{}, fmt.Errorf("marshal diff %d of escrow %d: %w", d.Nonce, d.EscrowId, err)
	}
	rows, err := SealedRows(d.EscrowId, d.Nonce, sealed)
	if err != nil {
		return Diff{}, err
	}
	return Diff{EscrowID: d.EscrowId, Nonce: d.Nonce, Root: d.PostStateRoot, Data: data, Sealed: rows}, nil
}

// SealedRows are the index rows for records sealed by diff nonce.
func SealedRows(escrowID, nonce uint64, recs []*sessionpb.InferenceRecord) ([]Sealed, error) {
	if len(recs) == 0 {
		return nil, nil
	}
	rows := make([]Sealed, len(recs))
	for i, r := range recs {
		b, err := r.Marshal()
		if err != nil {
			return nil, fmt.Errorf("marshal sealed record %d of escrow %d: %w", r.Id, escrowID, err)
		}
		rows[i] = Sealed{EscrowID: escrowID, InferenceID: r.Id, Nonce: nonce, Record: b}
	}
	return rows, nil
}

// NewSignature is the stored form of a host state signature.
func NewSignature(ss *sessionpb.StateSignature) (Signature, error) {
	b, err := ss.Marshal()
	if err != nil {
		return Signature{}, fmt.Errorf("marshal state signature of escrow %d at nonce %d: %w", ss.EscrowId, ss.Nonce, err)
	}
	return Signature{EscrowID: ss.EscrowId, Nonce: ss.Nonce, Slot: ss.Slot, Data: b}, nil
}

// DefaultSnapshotEvery is K: a snapshot every 500 nonces bounds the replay
// at recovery to 500 diffs.
const DefaultSnapshotEvery = 500

// SnapshotPolicy decides when a host snapshots a session.
type SnapshotPolicy struct {
	// Every is K, the snapshot interval in nonces; 0 means
	// DefaultSnapshotEvery.
	Every uint64
}

// ShouldSnapshot reports whether the state reached after applying nonce, in
// phase, should be snapshotted: every K nonces, and once the session enters
// SETTLEMENT, so a settled session recovers without any replay.
func (p SnapshotPolicy) ShouldSnapshot(nonce uint64, phase sessionpb.Phase) bool {
	k := p.Every
	if k == 0 {
		k = DefaultSnapshotEvery
	}
	return nonce > 0 && (nonce%k == 0 || phase == sessionpb.Phase_PHASE_SETTLEMENT)
}

// ShouldSnapshot applies the default policy.
func ShouldSnapshot(nonce uint64, phase sessionpb.Phase) bool {
	return SnapshotPolicy{}.ShouldSnapshot(nonce, phase)
}

// TakeSnapshot is the stored form of s's current state.
func TakeSnapshot(s *session.Session) (Snapshot, error) {
	st := s.State()
	b, err := st.Marshal()
	if err != nil {
		return Snapshot{}, fmt.Errorf("marshal state of escrow %d at nonce %d: %w", st.EscrowId, st.Nonce, err)
	}
	root := s.Root()
	return Snapshot{EscrowID: st.EscrowId, Nonce: st.Nonce, Root: root[:], State: b}, nil
}
