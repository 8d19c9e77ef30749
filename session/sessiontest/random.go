package sessiontest

import (
	"math/rand"

	"github.com/devshard/devshard/session/sessionpb"
)

// RandomStep builds and applies one random but valid diff: maybe a new
// inference, plus confirmations, finishes, validations and timeout votes on
// live records, each by a slot allowed to send it (validations of
// unchallenged inferences by sampled slots only). Near the end of a script,
// callers finalize with Finalize diffs.
func (q *Sequencer) RandomStep(rng *rand.Rand) (*sessionpb.Diff, error) {
	s := q.Replica
	st := s.State()
	var txs []*sessionpb.Tx
	next := s.Nonce() + 1
	if st.Phase == sessionpb.Phase_PHASE_ACTIVE && rng.Intn(3) > 0 {
		in, out := uint64(rng.Intn(50)), uint64(1+rng.Intn(100))
		if (in+out)*q.F.Snapshot.TokenPrice+q.F.Snapshot.FeePerNonce <= st.Balance {
			txs = append(txs, Start(next, in, out))
		}
	}
	group := q.F.Snapshot.Group
	voted := map[[2]uint64]bool{}
	for _, r := range st.Live {
		if rng.Intn(2) == 0 {
			continue
		}
		exec := r.ExecutorSlot
		switch r.Status {
		case sessionpb.InferenceStatus_INFERENCE_STATUS_PENDING:
			if rng.Intn(6) == 0 {
				txs = append(txs, q.timeoutVote(rng, r, voted)...)
				continue
			}
			txs = append(txs, q.F.Confirm(exec, r.Id, Timestamp(r.Id)+int64(rng.Intn(5))))
		case sessionpb.InferenceStatus_INFERENCE_STATUS_STARTED:
			if rng.Intn(8) == 0 {
				txs = append(txs, q.timeoutVote(rng, r, voted)...)
				continue
			}
			txs = append(txs, q.F.Finish(exec, r.Id, r.InputTokens, uint64(rng.Intn(int(r.MaxTokens)+20))))
		case sessionpb.InferenceStatus_INFERENCE_STATUS_FINISHED, sessionpb.InferenceStatus_INFERENCE_STATUS_CHALLENGED:
			if rng.Intn(3) != 0 {
				continue
			}
			// Until a challenge only the sampled slots may vote.
			slot := uint32(rng.Intn(len(group)))
			if r.Status == sessionpb.InferenceStatus_INFERENCE_STATUS_FINISHED {
				sampled := s.SampledSlots(r)
				if len(sampled) == 0 {
					continue
				}
				slot = sampled[rng.Intn(len(sampled))]
			}
			if string(group[slot]) == string(group[exec]) || voted[[2]uint64{r.Id, uint64(slot)}] ||
				hasVote(r.ValidVotes, slot) || hasVote(r.InvalidVotes, slot) {
				continue
			}
			voted[[2]uint64{r.Id, uint64(slot)}] = true
			txs = append(txs, q.F.Validate(slot, r.Id, rng.Intn(4) != 0))
		}
	}
	return q.Next(txs...)
}

// timeoutVote returns one vote on r from a random eligible slot, if any.
func (q *Sequencer) timeoutVote(rng *rand.Rand, r *sessionpb.InferenceRecord, voted map[[2]uint64]bool) []*sessionpb.Tx {
	group := q.F.Snapshot.Group
	slot := uint32(rng.Intn(len(group)))
	if string(group[slot]) == string(group[r.ExecutorSlot]) || hasVote(r.TimeoutVotes, slot) || voted[[2]uint64{r.Id, uint64(slot) | 1<<32}] {
		return nil
	}
	voted[[2]uint64{r.Id, uint64(slot) | 1<<32}] = true
	return []*sessionpb.Tx{q.F.Timeout(slot, r.Id)}
}

func hasVote(bitmap []byte, slot uint32) bool { return bitmap[slot/8]&(1<<(slot%8)) != 0 }
