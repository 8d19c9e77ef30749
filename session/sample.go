package session

import (
	"encoding/binary"

	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
)

// Sampled reports whether slot is picked to validate inference id, drawn
// from seed at the snapshot's validation rate (basis points). Every replica
// draws the same. It says nothing of eligibility: SampledSlots applies both.
func Sampled(snap *sessionpb.EscrowSnapshot, seed []byte, id uint64, slot uint32) bool {
	e := encoder{b: make([]byte, 0, 80)}
	e.domain("devshard/v1/sample")
	e.bytes(seed)
	e.u64(id)
	e.u32(slot)
	h := e.sum()
	return binary.BigEndian.Uint64(h[:8])%10000 < uint64(snap.ValidationRateBps)
}

// SampledSlots are the slots that must validate finished inference r, in
// slot order: the eligible slots (not held by the executor's address) that
// the draw from r's sample seed picked. Only they may vote on r while it is
// FINISHED, and it is VALIDATED only once all of them voted valid. The seed
// is the live-records root before the diff that carried the
// FinishInference, so apply can check it from state alone, and the
// executor, which signs its FinishInference before any diff carries it,
// cannot choose its validators. It is empty for a record that has not
// finished.
func (s *Session) SampledSlots(r *sessionpb.InferenceRecord) []uint32 {
	return sampledSlots(s.snap, s.group, r)
}

func sampledSlots(snap *sessionpb.EscrowSnapshot, group []signing.Address, r *sessionpb.InferenceRecord) []uint32 {
	if len(r.SampleSeed) == 0 {
		return nil
	}
	var out []uint32
	for slot := range uint32(len(group)) {
		if eligible(group, r.ExecutorSlot, slot) && Sampled(snap, r.SampleSeed, r.Id, slot) {
			out = append(out, slot)
		}
	}
	return out
}
