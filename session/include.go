package session

import (
	"fmt"
	"slices"

	"github.com/devshard/devshard/session/sessionpb"
)

// MayInclude reports whether a host tx could be carried by the next diff:
// the session still takes host txs, the inference it names is in a status
// the tx applies to, and a vote's slot has not voted on it yet. It checks no
// signature. Mempools (the host's,
// the gateway's) use it to drop txs that can no longer apply.
func (s *Session) MayInclude(tx *sessionpb.Tx) bool {
	return s.Includable(tx) == nil
}

// Includable is MayInclude with the reason: nil if the next diff could
// carry tx, else an error wrapping ReasonPhase, ReasonStatus,
// ReasonDuplicate or ReasonMalformed that says what the session holds. A
// host asks it of a peer's gossiped tx before pooling it.
func (s *Session) Includable(tx *sessionpb.Tx) error {
	return includable(tx, s.phase, s, func(id uint64) *sessionpb.InferenceRecord { return s.live[id] })
}

// MayInclude is Session.MayInclude asked of the state this diff leads to,
// before it is committed: a host deciding whether to sign the new state
// asks it of its own pooled txs.
func (p *Pending) MayInclude(tx *sessionpb.Tx) bool {
	st := p.st
	return includable(tx, st.phase, st.s, func(id uint64) *sessionpb.InferenceRecord {
		if st.removed[id] {
			return nil
		}
		return st.peek(id)
	}) == nil
}

// CheckHostTx says why the next diff could not carry host tx on its own,
// or nil if it could: apply's checks of the phase, the slot, the record's
// status, the executor's slot, the voter's eligibility and the body, all
// but the signature, which the caller checked when it took the tx. Unlike
// MayInclude it refuses a FinishInference whose ConfirmStart is not in
// yet. A host withholds its state signature over txs that pass it and
// that the gateway keeps leaving out, so a tx no diff could carry never
// holds up the group. The error is the *DiffError the next diff would get.
func (s *Session) CheckHostTx(tx *sessionpb.Tx) error {
	st := &staged{s: s, d: &sessionpb.Diff{EscrowId: s.snap.EscrowId, Nonce: s.nonce + 1}, phase: s.phase, stats: s.stats}
	return checkAlone(st, tx, func(id uint64) (*sessionpb.InferenceRecord, bool) {
		r, ok := s.live[id]
		return r, ok
	})
}

// CheckHostTx is Session.CheckHostTx asked of the state this diff leads
// to, before it is committed.
func (p *Pending) CheckHostTx(tx *sessionpb.Tx) error {
	st := *p.st // the checks only read; a shallow copy keeps p as it was
	st.d = &sessionpb.Diff{EscrowId: p.st.d.EscrowId, Nonce: p.st.d.Nonce + 1}
	return checkAlone(&st, tx, func(id uint64) (*sessionpb.InferenceRecord, bool) {
		if st.removed[id] {
			return nil, false
		}
		r := st.peek(id)
		return r, r != nil
	})
}

// checkAlone runs the checks of tx as the only tx of st's diff, reading
// records through lookup, which never copies them.
func checkAlone(st *staged, tx *sessionpb.Tx, lookup func(id uint64) (*sessionpb.InferenceRecord, bool)) error {
	if !hasBody(tx) {
		return &DiffError{Nonce: st.d.Nonce, Tx: 0, Reason: ReasonMalformed, Detail: "tx has no body"}
	}
	if _, err := hostTxKind(tx); err != nil {
		return &DiffError{Nonce: st.d.Nonce, Tx: 0, Reason: ReasonMalformed, Detail: err.Error()}
	}
	_, err := st.checkHostTx(0, tx, lookup)
	return err
}

// includable is the rule behind MayInclude and Includable, over a phase, the
// session (its snapshot and group, for the sampling draw) and a read-only lookup
// of live records (nil when the record is not live).
func includable(tx *sessionpb.Tx, phase sessionpb.Phase, s *Session, lookup func(id uint64) *sessionpb.InferenceRecord) error {
	groupLen := len(s.group)
	if phase == sessionpb.Phase_PHASE_SETTLEMENT {
		return fmt.Errorf("%w: the session is in phase %s and takes no host txs", ReasonPhase, phase)
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
		return fmt.Errorf("%w: a tx of type %T is not a host's", ReasonMalformed, tx.Body)
	}
	if int(tx.Slot) >= groupLen {
		return fmt.Errorf("%w: slot %d is outside the group of %d slots", ReasonMalformed, tx.Slot, groupLen)
	}
	r := lookup(id)
	if r == nil {
		return fmt.Errorf("%w: inference %d is not live in this session (never started, or sealed)", ReasonStatus, id)
	}
	switch tx.Body.(type) {
	case *sessionpb.Tx_Validation:
		if hasBit(r.ValidVotes, tx.Slot) || hasBit(r.InvalidVotes, tx.Slot) {
			return fmt.Errorf("%w: slot %d has already voted on inference %d", ReasonDuplicate, tx.Slot, id)
		}
		if r.Status == sessionpb.InferenceStatus_INFERENCE_STATUS_FINISHED && !slices.Contains(sampledSlots(s.snap, s.group, r), tx.Slot) {
			return fmt.Errorf("%w: slot %d was not sampled to validate inference %d", ReasonNotSampled, tx.Slot, id)
		}
	case *sessionpb.Tx_Timeout:
		if hasBit(r.TimeoutVotes, tx.Slot) {
			return fmt.Errorf("%w: slot %d has already voted to time out inference %d", ReasonDuplicate, tx.Slot, id)
		}
	}
	for _, st := range want {
		if r.Status == st {
			return nil
		}
	}
	return fmt.Errorf("%w: inference %d is %s; a %s applies only to one that is %v", ReasonStatus, id, r.Status, txName(tx), want)
}

func txName(tx *sessionpb.Tx) string {
	switch tx.Body.(type) {
	case *sessionpb.Tx_Confirm:
		return "ConfirmStart"
	case *sessionpb.Tx_Finish:
		return "FinishInference"
	case *sessionpb.Tx_Validation:
		return "Validation"
	default:
		return "TimeoutInference"
	}
}
