package session

import (
	"slices"

	"github.com/devshard/devshard/session/sessionpb"
)

// MayInclude reports whether a host tx could be carried by the next diff:
// the session still takes host txs, the inference it names is in a status
// the tx applies to, and a vote's slot has not voted on it yet (nor, on an
// unchallenged inference, was left out by the sampling). It checks no
// signature. Mempools (the host's,
// the gateway's) use it to drop txs that can no longer apply.
func (s *Session) MayInclude(tx *sessionpb.Tx) bool {
	return mayInclude(tx, s.phase, s, func(id uint64) *sessionpb.InferenceRecord { return s.live[id] })
}

// MayInclude is Session.MayInclude asked of the state this diff leads to,
// before it is committed: a host deciding whether to sign the new state
// asks it of its own pooled txs.
func (p *Pending) MayInclude(tx *sessionpb.Tx) bool {
	st := p.st
	return mayInclude(tx, st.phase, st.s, func(id uint64) *sessionpb.InferenceRecord {
		if st.removed[id] {
			return nil
		}
		return st.peek(id)
	})
}

// mayInclude is the rule behind both, over a phase, the session's snapshot
// and group, and a read-only lookup of live records (nil when the record is
// not live).
func mayInclude(tx *sessionpb.Tx, phase sessionpb.Phase, s *Session, lookup func(id uint64) *sessionpb.InferenceRecord) bool {
	if phase == sessionpb.Phase_PHASE_SETTLEMENT {
		return false
	}
	var id uint64
	var want []sessionpb.InferenceStatus
	switch b := tx.Body.(type) {
	case *sessionpb.Tx_Confirm:
		id, want = b.Confirm.InferenceId, []sessionpb.InferenceStatus{sessionpb.InferenceStatus_INFERENCE_STATUS_PENDING}
	case *sessionpb.Tx_Finish:
		id, want = b.Finish.InferenceId, []sessionpb.InferenceStatus{sessionpb.InferenceStatus_INFERENCE_STATUS_PENDING, sessionpb.InferenceStatus_INFERENCE_STATUS_STARTED}
	case *sessionpb.Tx_Validation:
		id, want = b.Validation.InferenceId, []sessionpb.InferenceStatus{sessionpb.InferenceStatus_INFERENCE_STATUS_FINISHED, sessionpb.InferenceStatus_INFERENCE_STATUS_CHALLENGED}
	case *sessionpb.Tx_Timeout:
		id, want = b.Timeout.InferenceId, []sessionpb.InferenceStatus{sessionpb.InferenceStatus_INFERENCE_STATUS_PENDING, sessionpb.InferenceStatus_INFERENCE_STATUS_STARTED}
	default:
		return false
	}
	r := lookup(id)
	if r == nil || int(tx.Slot) >= len(s.group) {
		return false
	}
	switch tx.Body.(type) {
	case *sessionpb.Tx_Validation:
		if hasBit(r.ValidVotes, tx.Slot) || hasBit(r.InvalidVotes, tx.Slot) {
			return false
		}
		if r.Status == sessionpb.InferenceStatus_INFERENCE_STATUS_FINISHED && !slices.Contains(sampledSlots(s.snap, s.group, r), tx.Slot) {
			return false
		}
	case *sessionpb.Tx_Timeout:
		if hasBit(r.TimeoutVotes, tx.Slot) {
			return false
		}
	}
	for _, st := range want {
		if r.Status == st {
			return true
		}
	}
	return false
}
