package session

import (
	"fmt"
	"strings"

	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
)

// MayVote reports whether slot may vote (validate, or vote a timeout) on
// an inference that slot exec executes: a participant never votes on its
// own work, through any of its slots (attack 12). A slot outside the group
// may not vote. Apply refuses a vote that breaks the rule; a host asks it
// before it re-runs a peer's work or votes a timeout.
func (s *Session) MayVote(exec, slot uint32) bool {
	n := uint32(len(s.group))
	return exec < n && slot < n && eligible(s.group, exec, slot)
}

// eligible is MayVote over a group, for slots known to be in it.
func eligible(group []signing.Address, exec, slot uint32) bool { return group[slot] != group[exec] }

// eligibleCount is the number of slots that may vote on an inference that
// slot exec executes.
func eligibleCount(group []signing.Address, exec uint32) int {
	n := 0
	for slot := range uint32(len(group)) {
		if eligible(group, exec, slot) {
			n++
		}
	}
	return n
}

// againstExecutor reports whether votes from that many distinct slots decide
// against the executor (INVALIDATED, TIMED_OUT), in a group of n slots of
// which e may vote. It needs both
//
//   - a strict majority of the e eligible slots. Taken over the slots that
//     may vote, never over the whole group, so a group skewed toward the
//     executor's participant can still reach it (attack 13);
//   - slots holding at least a third of the whole group (3 × votes >= n).
//     Settlement needs signatures from more than 2/3 of the slots, so any
//     holders of n/3 slots can already refuse it: the power to punish is
//     never larger than the power to block. Without it a minority holder
//     would decide alone wherever few slots are eligible: with slots
//     {A, A, A, B}, B is the only eligible slot on A's work and would
//     invalidate or time out every inference of A by itself.
//
// docs/protocol.md ("Votes and thresholds") tabulates what each group shape
// can and cannot force.
func againstExecutor(votes, e, n int) bool { return 2*votes > e && 3*votes >= n }

// challengeOutcome is what the votes on challenged record r decide:
// INVALIDATED once the invalid votes reach againstExecutor; VALIDATED once
// they can no longer reach it, even if every eligible slot yet to vote voted
// invalid (so a tie, or a threshold out of reach, keeps the executor's
// work); otherwise still CHALLENGED.
func challengeOutcome(group []signing.Address, r *sessionpb.InferenceRecord) sessionpb.InferenceStatus {
	e, n := eligibleCount(group, r.ExecutorSlot), len(group)
	switch {
	case againstExecutor(popcount(r.InvalidVotes), e, n):
		return sessionpb.InferenceStatus_INFERENCE_STATUS_INVALIDATED
	case !againstExecutor(e-popcount(r.ValidVotes), e, n):
		return sessionpb.InferenceStatus_INFERENCE_STATUS_VALIDATED
	}
	return sessionpb.InferenceStatus_INFERENCE_STATUS_CHALLENGED
}

// timedOut reports whether r's timeout votes decide against its executor.
func timedOut(group []signing.Address, r *sessionpb.InferenceRecord) bool {
	return againstExecutor(popcount(r.TimeoutVotes), eligibleCount(group, r.ExecutorSlot), len(group))
}

// allVoted reports whether every slot in slots has its bit set in votes.
func allVoted(votes []byte, slots []uint32) bool {
	for _, slot := range slots {
		if !hasBit(votes, slot) {
			return false
		}
	}
	return true
}

// slotList renders slots for an error message.
func slotList(slots []uint32) string {
	if len(slots) == 0 {
		return "none"
	}
	parts := make([]string, len(slots))
	for i, s := range slots {
		parts[i] = fmt.Sprint(s)
	}
	return strings.Join(parts, ", ")
}
