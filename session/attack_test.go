package session_test

// Each test here is one known attack from DESIGN.md, played by named roles
// next to the honest run. Each fails if the check that closes it is removed.

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
)

// Attack 1: a gateway colluding with a host pads the session with empty
// diffs, hoping the host is credited work per nonce.
func TestAttackEmptyDiffsEarnNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for range 100 {
		b.step(t) // empty diffs
	}
	id := b.inference(t, 10, 10, 5) // one real inference
	exec := b.gw.Replica.Executor(id)
	m := b.f.Settle(b.gw.Replica, b.f.AllSlots()...)
	plan, err := session.VerifySettlement(b.f.Snapshot, m, nil)
	require.NoError(t, err)
	for _, p := range plan.Slots {
		if p.Slot == exec {
			require.Equal(t, uint64(1), p.Finished)
			require.Equal(t, uint64(150), p.Cost)
		} else {
			require.Zero(t, p.Finished, "slot %d did no work", p.Slot)
			require.Zero(t, p.Cost, "slot %d did no work", p.Slot)
		}
	}

	// The colluders sign stats that claim more work than nonces exist.
	forged := b.f.Settle(b.gw.Replica)
	forged.HostStats[0].Finished = forged.Nonce + 1
	_, err = session.VerifySettlement(b.f.Snapshot, b.f.Resign(forged, b.f.AllSlots()...), nil)
	require.ErrorIs(t, err, session.ReasonConservation)
	require.ErrorContains(t, err, "104 inferences credited, more than the 102 nonces applied")
}

// Attack 2: a settlement that underpays the fees the snapshot demands, with
// the balance raised to match so the books still add up.
func TestAttackForgedFees(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.inference(t, 10, 10, 5)
	m := b.f.Settle(b.gw.Replica)
	m.Fees -= 500
	m.Balance += 500
	_, err := session.VerifySettlement(b.f.Snapshot, b.f.Resign(m, b.f.AllSlots()...), nil)
	require.ErrorIs(t, err, session.ReasonFees)
	require.ErrorContains(t, err, "fees 506 do not match the snapshot (creation fee 1000 + 3 × 2 active nonces = 1006)")
}

// Attack 3: the nonce bound and protocol version come from the escrow's
// snapshot. A quorum signing a state past the snapshot's max nonce, or for
// another protocol version, is refused even if live parameters would allow it.
func TestAttackSnapshotBoundsAtSettlement(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *sessiontest.Options) { o.MaxNonce = 5 })
	for range 5 {
		b.step(t)
	}
	m := b.f.Settle(b.gw.Replica)
	m.Nonce = 6
	m.ActiveNonces = 6
	m.Fees += 3
	m.Balance -= 3
	_, err := session.VerifySettlement(b.f.Snapshot, b.f.Resign(m, b.f.AllSlots()...), nil)
	require.ErrorIs(t, err, session.ReasonNonce)
	require.ErrorContains(t, err, "nonce 6 exceeds the escrow's max nonce 5")

	m = b.f.Settle(b.gw.Replica)
	m.ProtocolVersion = session.ProtocolVersion + 1
	_, err = session.VerifySettlement(b.f.Snapshot, b.f.Resign(m, b.f.AllSlots()...), nil)
	require.ErrorIs(t, err, session.ReasonVersion)
	require.ErrorContains(t, err, fmt.Sprintf("protocol version %d, the escrow was created for version %d", session.ProtocolVersion+1, session.ProtocolVersion))
}

// Known attack (stale root): hosts co-sign every root, so the gateway holds a
// quorum-signed root for every nonce. A malicious gateway that settles an
// early ACTIVE root pays the hosts only for the work up to it and takes the
// rest back as its refund. Closed by MaySettle: the creator's side may settle
// only the finalized root (phase SETTLEMENT; a session there accepts no more
// diffs, so it is the last one). After the deadline a host may settle its
// latest root at any phase, for a gateway that vanished without finalizing.
func TestAttackStaleRootSettlement(t *testing.T) {
	t.Parallel()
	b := setup(t)
	gateway := b.f.Gateway.Address()
	host := b.f.SlotKey(1).Address()
	all := b.f.AllSlots()
	// settle is what the chain runs for a MsgSettleEscrow from sender.
	settle := func(sender signing.Address, m *sessionpb.Settlement, deadlinePassed bool) (*session.Plan, error) {
		if err := session.MaySettle(b.f.Snapshot, sender, m.Phase, deadlinePassed, nil); err != nil {
			return nil, err
		}
		return session.VerifySettlement(b.f.Snapshot, m, nil)
	}
	finished := func(p *session.Plan) (n uint64) {
		for _, s := range p.Slots {
			n += s.Finished
		}
		return n
	}

	b.inference(t, 10, 20, 5)
	stale := b.f.Settle(b.gw.Replica, all...) // every host signed it
	for range 5 {
		b.inference(t, 10, 20, 5)
	}
	latest := b.f.Settle(b.gw.Replica, all...) // the hosts' latest root, still ACTIVE
	b.step(t, sessiontest.Finalize())
	finalizing := b.f.Settle(b.gw.Replica, all...)
	b.step(t, sessiontest.Finalize())
	final := b.f.Settle(b.gw.Replica, all...)

	// The stale root is valid books on its own: only the phase rule stops it.
	plan, err := session.VerifySettlement(b.f.Snapshot, stale, nil)
	require.NoError(t, err)
	require.Equal(t, uint64(1), finished(plan))

	// Malicious gateway: a stale or unfinished root, before or after the deadline.
	for _, m := range []*sessionpb.Settlement{stale, latest, finalizing} {
		for _, passed := range []bool{false, true} {
			_, err := settle(gateway, m, passed)
			require.ErrorIs(t, err, session.ReasonPhase)
			var se *session.SettlementError
			require.ErrorAs(t, err, &se)
			require.ErrorContains(t, err, "may settle only a finalized session: expected phase PHASE_SETTLEMENT, the settlement is at phase "+m.Phase.String())
		}
	}

	// Honest gateway: the final root pays for all six inferences.
	plan, err = settle(gateway, final, false)
	require.NoError(t, err)
	require.Equal(t, uint64(6), finished(plan))

	// A host, for a gateway that vanished: its latest ACTIVE root, after the
	// deadline only.
	_, err = settle(host, latest, false)
	require.ErrorIs(t, err, session.ReasonUnauthorized)
	plan, err = settle(host, latest, true)
	require.NoError(t, err)
	require.Equal(t, uint64(6), finished(plan))
}

// Attack 10: txs and signatures from keys outside the group, or unsigned.
func TestAttackNonMemberSignatures(t *testing.T) {
	t.Parallel()
	b := setup(t)
	outsider, err := signing.GenerateKey(sessiontestRand(7))
	require.NoError(t, err)
	startOne(t, b)

	// An outsider forges the executor's confirmation.
	d := b.forge(t, b.f.SignedBy(outsider, 1, confirmTx(1, 100)))
	requireRejected(t, b.gw.Replica, d, session.ReasonUnauthorized, "may not sign devshard/v1/tx/confirm")

	// An outsider's signature in a settlement, for slot 0.
	m := b.f.Settle(b.gw.Replica, 1, 2)
	ss, err := session.SignState(outsider, sessiontest.ChainID, m.EscrowId, m.Nonce, m.StateRoot, 0)
	require.NoError(t, err)
	m.Signatures = append(m.Signatures, &sessionpb.SlotSignature{Slot: 0, Sig: ss.Sig})
	_, err = session.VerifySettlement(b.f.Snapshot, m, nil)
	require.ErrorIs(t, err, session.ReasonQuorum, "it does not count")
	require.ErrorContains(t, err, "2 of 3 slots signed validly; more than 2/3 (at least 3) are needed; ignored slot 0: signer "+outsider.Address().String()+" may not sign devshard/v1/state")

	// An unsigned claim for slot 0.
	m = b.f.Settle(b.gw.Replica, 1, 2)
	m.Signatures = append(m.Signatures, &sessionpb.SlotSignature{Slot: 0})
	_, err = session.VerifySettlement(b.f.Snapshot, m, nil)
	require.ErrorIs(t, err, session.ReasonQuorum)
	require.ErrorContains(t, err, "ignored slot 0: unsigned")

	// A state signature from an outsider, as gossip would carry it.
	require.ErrorIs(t, session.VerifyStateSignature(b.f.Snapshot, ss, nil), session.ReasonUnauthorized)
	own, err := session.SignState(b.f.SlotKey(0), sessiontest.ChainID, m.EscrowId, m.Nonce, m.StateRoot, 0)
	require.NoError(t, err)
	require.NoError(t, session.VerifyStateSignature(b.f.Snapshot, own, nil))
}

// Attack 11: one slot's signature listed many times must count once.
func TestAttackDuplicateSignaturesCountOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.step(t)
	m := b.f.Settle(b.gw.Replica, 0, 0, 1)
	_, err := session.VerifySettlement(b.f.Snapshot, m, nil)
	require.ErrorIs(t, err, session.ReasonQuorum)
	require.ErrorContains(t, err, "2 of 3 slots signed")
	// Listing a slot more often than the group has slots is refused outright.
	m = b.f.Settle(b.gw.Replica, 0, 0, 0, 1, 1)
	_, err = session.VerifySettlement(b.f.Snapshot, m, nil)
	require.ErrorIs(t, err, session.ReasonMalformed)

	// An address holding two slots counts once per slot it holds.
	b = setup(t, func(o *sessiontest.Options) { o.Holders = []int{0, 0, 1, 2} })
	b.step(t)
	m = b.f.Settle(b.gw.Replica, 0, 1, 2)
	_, err = session.VerifySettlement(b.f.Snapshot, m, nil)
	require.NoError(t, err, "3 of 4 distinct slots is more than 2/3")
	m = b.f.Settle(b.gw.Replica, 0, 0, 2, 2)
	_, err = session.VerifySettlement(b.f.Snapshot, m, nil)
	require.ErrorIs(t, err, session.ReasonQuorum)
}

// Attack 12: an executor validating its own inference, here through another
// slot held by the same participant.
func TestAttackExecutorValidatesItself(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *sessiontest.Options) { o.Holders = []int{0, 0, 1} })
	id := b.inference(t, 1, 1, 1) // id 1: executor slot 1, held by participant 0
	require.Equal(t, uint32(1), b.gw.Replica.Executor(id))
	for _, slot := range []uint32{0, 1} {
		d := b.forge(t, b.f.Validate(slot, id, true))
		requireRejected(t, b.gw.Replica, d, session.ReasonSelfVote, "is held by the executor of inference 1")
	}
	b.step(t, b.f.Validate(2, id, true)) // the other participant may
}

// executedBy steps empty diffs until the next inference's executor slot is
// held by participant, then runs one inference there and returns its id.
func (b *bundle) executedBy(t *testing.T, participant int) uint64 {
	t.Helper()
	for b.f.Holders[b.gw.Replica.Executor(b.gw.Replica.Nonce()+1)] != participant {
		b.step(t)
	}
	return b.inference(t, 1, 10, 1)
}

// startedBy is executedBy for an inference that is started and left open.
func (b *bundle) startedBy(t *testing.T, participant int) uint64 {
	t.Helper()
	for b.f.Holders[b.gw.Replica.Executor(b.gw.Replica.Nonce()+1)] != participant {
		b.step(t)
	}
	id := b.gw.Replica.Nonce() + 1
	b.step(t, sessiontest.Start(id, 1, 10))
	return id
}

// voteUntilSealed casts vote(slot) for each slot, one diff each, until the
// record leaves the live set.
func (b *bundle) voteUntilSealed(t *testing.T, id uint64, slots []uint32, vote func(slot uint32) *sessionpb.Tx) {
	t.Helper()
	for _, slot := range slots {
		if _, live := b.gw.Replica.Record(id); !live {
			return
		}
		b.step(t, vote(slot))
	}
}

// Attack 13: with slots skewed toward the executor's participant, a
// threshold over all slots would be unreachable. Votes are taken over the
// slots that may vote, so the other participants resolve it: here the one
// outsider of {A, A, A, B} invalidates and times out B's work with its three
// slots, and in {A, A, B} the lone B, holding a third of the group, still
// decides on A's. TestAttackThresholdsByGroupShape checks every shape of
// the table in docs/protocol.md. Fails with the threshold taken over all
// slots (2 × votes > n): A's 3 slots reach it in {A, A, A, B}, B's one in
// {A, A, B} does not.
func TestAttackSkewedSlotsCanStillResolve(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *sessiontest.Options) { o.Holders = []int{0, 0, 0, 1} })
	id := b.executedBy(t, 1) // executor slot 3 (participant B)
	b.voteUntilSealed(t, id, []uint32{0, 1, 2}, func(slot uint32) *sessionpb.Tx { return b.f.Validate(slot, id, false) })
	_, live := b.gw.Replica.Record(id)
	require.False(t, live, "two of the three eligible slots voting invalid resolve and seal the inference")
	st := b.gw.Replica.State().HostStats[3]
	require.Equal(t, uint64(1), st.Invalid)
	require.Zero(t, st.Finished)
	require.Zero(t, st.Cost, "an invalidated inference is refunded")

	// A stalled inference of B times out on A's votes.
	id = b.startedBy(t, 1)
	b.voteUntilSealed(t, id, []uint32{0, 1, 2}, func(slot uint32) *sessionpb.Tx { return b.f.Timeout(slot, id) })
	_, live = b.gw.Replica.Record(id)
	require.False(t, live)
	require.Equal(t, uint64(1), b.gw.Replica.State().HostStats[3].Missed)

	// {A, A, B}: B alone is the only eligible slot on A's work and holds a
	// third of the group, as much as can block settlement: it decides.
	b = setup(t, func(o *sessiontest.Options) { o.Holders = []int{0, 0, 1} })
	id = b.executedBy(t, 0)
	exec := b.gw.Replica.Executor(id)
	b.step(t, b.f.Validate(2, id, false))
	require.Equal(t, uint64(1), b.gw.Replica.State().HostStats[exec].Invalid)
	id = b.startedBy(t, 0)
	exec = b.gw.Replica.Executor(id)
	b.step(t, b.f.Timeout(2, id))
	require.Equal(t, uint64(1), b.gw.Replica.State().HostStats[exec].Missed)
}

// groupShapes is the table of docs/protocol.md ("Votes and thresholds"):
// in group (a letter per slot, one letter per participant), can the
// participants in voters, voting with every slot they hold, invalidate and
// time out an inference that a slot of exec executes?
var groupShapes = []struct {
	group  string
	exec   byte
	voters string
	force  bool
}{
	{"AB", 'A', "B", true},
	{"ABC", 'A', "B", false},
	{"ABC", 'A', "BC", true},
	{"AAB", 'A', "B", true},
	{"AAB", 'B', "A", true},
	{"AAAB", 'A', "B", false},
	{"AAAB", 'B', "A", true},
	{"AABB", 'A', "B", true},
	{"AABC", 'A', "B", false},
	{"AABC", 'A', "BC", true},
	{"AABC", 'B', "A", true},
	{"AABC", 'B', "C", false},
	{"ABCD", 'A', "B", false},
	{"ABCD", 'A', "BC", true},
	{"AAAAB", 'A', "B", false},
	{"AAAAB", 'B', "A", true},
	{"AAABC", 'A', "B", false},
	{"AAABC", 'A', "BC", true},
	{"AAABC", 'B', "A", true},
	{"AABCD", 'A', "B", false},
	{"AABCD", 'A', "BC", true},
	{"AABCD", 'B', "A", false},
	{"AABCD", 'B', "AC", true},
	{"AABCD", 'B', "CD", false},
}

// Attacks 13 and the minority veto, for every group shape of the table:
// a decision against the executor needs a strict majority of the eligible
// slots and slots holding at least a third of the group, no more and no
// less. Fails with either half of the rule removed: without the third,
// {A, A, A, B} lets B decide alone; without the majority, {A, B, C} lets B.
func TestAttackThresholdsByGroupShape(t *testing.T) {
	t.Parallel()
	for _, row := range groupShapes {
		t.Run(fmt.Sprintf("%s/exec_%c/by_%s", row.group, row.exec, row.voters), func(t *testing.T) {
			t.Parallel()
			holders := make([]int, len(row.group))
			var voters []uint32
			for slot, c := range []byte(row.group) {
				holders[slot] = int(c - 'A')
				if strings.IndexByte(row.voters, c) >= 0 {
					voters = append(voters, uint32(slot))
				}
			}
			b := setup(t, func(o *sessiontest.Options) { o.Holders = holders })
			exec := int(row.exec - 'A')

			id := b.executedBy(t, exec)
			slot := b.gw.Replica.Executor(id)
			b.voteUntilSealed(t, id, voters, func(v uint32) *sessionpb.Tx { return b.f.Validate(v, id, false) })
			invalid := b.gw.Replica.State().HostStats[slot].Invalid
			require.Equal(t, row.force, invalid == 1, "invalidated: %v", invalid == 1)

			id = b.startedBy(t, exec)
			slot = b.gw.Replica.Executor(id)
			b.voteUntilSealed(t, id, voters, func(v uint32) *sessionpb.Tx { return b.f.Timeout(v, id) })
			missed := b.gw.Replica.State().HostStats[slot].Missed
			require.Equal(t, row.force, missed == 1, "timed out: %v", missed == 1)
		})
	}
}

// Item 7 (the minority veto): with slots {A, A, A, B}, B is the only slot
// that may vote on A's work. Had one eligible vote been enough (the first
// fix of attack 13), B alone would invalidate or time out every inference
// of A. B holds a quarter of the group, too little to block settlement, so
// it may not punish alone: its challenge cannot reach the threshold and
// keeps A's work, and its timeout vote leaves the inference open, released
// without blame at settlement. Fails with the group-third half of the
// threshold removed (B's vote invalidates and times out A).
func TestAttackMinorityHolderCannotVeto(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *sessiontest.Options) { o.Holders = []int{0, 0, 0, 1} })
	id := b.executedBy(t, 0)
	exec := b.gw.Replica.Executor(id)
	b.step(t, b.f.Validate(3, id, false))
	_, live := b.gw.Replica.Record(id)
	require.False(t, live, "a challenge that can never reach the threshold resolves at once")
	st := b.gw.Replica.State().HostStats[exec]
	require.Zero(t, st.Invalid)
	require.Equal(t, uint64(1), st.Finished)
	require.Equal(t, uint64(1), st.Validated, "the executor's work stands")

	id = b.startedBy(t, 0)
	exec = b.gw.Replica.Executor(id)
	b.step(t, b.f.Timeout(3, id))
	r, live := b.gw.Replica.Record(id)
	require.True(t, live)
	require.Equal(t, sessionpb.InferenceStatus_INFERENCE_STATUS_PENDING, r.Status)
	b.step(t, sessiontest.Finalize())
	b.step(t, sessiontest.Finalize())
	require.Zero(t, b.gw.Replica.State().HostStats[exec].Missed, "released at settlement without blame")
}

// Item 7 at settlement: entering SETTLEMENT resolves open challenges. If
// the votes cast were compared with each other there (invalid > valid), a
// gateway that finalizes right after one slot's challenge would let that
// one vote invalidate. The same threshold as during the session applies.
// Fails with the old settlement rule: 1 invalid, 0 valid invalidates.
func TestAttackLoneChallengeAtSettlement(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *sessiontest.Options) { o.Holders = []int{0, 1, 2, 3} })
	id := b.executedBy(t, 0)
	exec := b.gw.Replica.Executor(id)
	b.step(t, b.f.Validate(exec+1, id, false))
	r, _ := b.gw.Replica.Record(id)
	require.Equal(t, sessionpb.InferenceStatus_INFERENCE_STATUS_CHALLENGED, r.Status)
	b.step(t, sessiontest.Finalize())
	b.step(t, sessiontest.Finalize())
	st := b.gw.Replica.State().HostStats[exec]
	require.Zero(t, st.Invalid)
	require.Equal(t, uint64(1), st.Validated)
}

// Item 6 (validation not bound to sampling): any slot could vouch for a
// finished inference, and one valid vote resolved and sealed it. A Sybil of
// the executor holding another slot vouches at once; the honest challenge
// that follows is refused as "not live". Only slots the deterministic draw
// picked may vote before a challenge. Fails with the sampled-slot check
// removed: the Sybil's vote resolves the record and the diff's root differs.
func TestAttackUnsampledSybilVouches(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *sessiontest.Options) {
		o.Holders = []int{0, 1, 2, 3}
		o.ValidationRateBps = 5000
	})
	// Find an inference whose draw left the Sybil (the slot after the
	// executor's) out and picked an honest slot.
	var id uint64
	var exec, sybil uint32
	var sampled []uint32
	for range 64 {
		id = b.inference(t, 1, 10, 1)
		exec = b.gw.Replica.Executor(id)
		sybil = (exec + 1) % 4
		r, _ := b.gw.Replica.Record(id)
		sampled = b.gw.Replica.SampledSlots(r)
		if len(sampled) > 0 && !slices.Contains(sampled, sybil) {
			break
		}
		sampled = nil
	}
	require.NotEmpty(t, sampled, "no inference in 64 sampled an honest slot and left the Sybil out")

	d := b.forge(t, b.f.Validate(sybil, id, true))
	requireRejected(t, b.gw.Replica, d, session.ReasonNotSampled,
		fmt.Sprintf("slot %d was not sampled to validate inference %d", sybil, id))

	// The honest sampled slot's challenge still lands; once challenged,
	// every eligible slot votes, the Sybil included, and the majority wins.
	honest := sampled[0]
	b.step(t, b.f.Validate(honest, id, false))
	b.step(t, b.f.Validate(sybil, id, true))
	r, live := b.gw.Replica.Record(id)
	require.True(t, live)
	require.Equal(t, sessionpb.InferenceStatus_INFERENCE_STATUS_CHALLENGED, r.Status)
	var third uint32
	for s := range uint32(4) {
		if s != exec && s != sybil && s != honest {
			third = s
		}
	}
	b.step(t, b.f.Validate(third, id, false))
	require.Equal(t, uint64(1), b.gw.Replica.State().HostStats[exec].Invalid)
}

// Item 6 (one vote decides): with two slots sampled, one valid vote sealed
// the record before the other sampled slot could challenge. A FINISHED
// record becomes VALIDATED only once every sampled slot voted valid. Fails
// with the old short path (the first valid vote validates and seals, and
// the second sampled slot's challenge is refused: inference not live).
func TestAttackOneValidVoteNoLongerSeals(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *sessiontest.Options) { o.Holders = []int{0, 1, 2, 3} })
	id := b.inference(t, 1, 10, 1)
	exec := b.gw.Replica.Executor(id)
	r, _ := b.gw.Replica.Record(id)
	sampled := b.gw.Replica.SampledSlots(r)
	require.Len(t, sampled, 3, "every eligible slot is sampled at 10000 bps")

	b.step(t, b.f.Validate(sampled[0], id, true)) // the executor's Sybil vouches
	r, live := b.gw.Replica.Record(id)
	require.True(t, live, "two sampled slots have not voted yet")
	require.Equal(t, sessionpb.InferenceStatus_INFERENCE_STATUS_FINISHED, r.Status)

	b.step(t, b.f.Validate(sampled[1], id, false))
	b.step(t, b.f.Validate(sampled[2], id, false))
	st := b.gw.Replica.State().HostStats[exec]
	require.Equal(t, uint64(1), st.Invalid, "two of three eligible slots invalidate")
	require.Zero(t, st.Validated)

	// The honest run: every sampled slot agreeing validates at once.
	id = b.inference(t, 1, 10, 1)
	exec = b.gw.Replica.Executor(id)
	r, _ = b.gw.Replica.Record(id)
	for _, slot := range b.gw.Replica.SampledSlots(r) {
		b.step(t, b.f.Validate(slot, id, true))
	}
	_, live = b.gw.Replica.Record(id)
	require.False(t, live)
	require.Equal(t, uint64(1), b.gw.Replica.State().HostStats[exec].Validated)
}

// Invariant 5 across networks: a signature is for one chain. The same keys
// and escrow id on another chain (a testnet, a fork, a restarted chain that
// reuses escrow ids) produce byte-identical diffs, txs and roots, so without
// the chain id in the signed bytes a diff, a host tx or a settlement signed
// there would verify here. Fails with the chain id left out of signBytes:
// every signature below verifies.
func TestAttackSignatureForAnotherChain(t *testing.T) {
	t.Parallel()
	b := setup(t)
	o := sessiontest.DefaultOptions()
	o.ChainID = "devshard-fork"
	other := sessiontest.New(1, o) // same seed: the same keys and escrow id
	require.Equal(t, b.f.Snapshot.Group, other.Snapshot.Group)
	require.Equal(t, b.f.Snapshot.EscrowId, other.Snapshot.EscrowId)

	// The gateway's diff, signed on the other chain, with the right root.
	d, err := other.Sequencer().Build(sessiontest.Start(1, 10, 100))
	require.NoError(t, err)
	requireRejected(t, b.gw.Replica, d, session.ReasonSignature, "user signature: signature by")

	// A host's tx, in a diff and as gossip.
	startOne(t, b)
	requireRejected(t, b.gw.Replica, b.forge(t, other.Confirm(1, 1, 100)), session.ReasonSignature, "slot 1: signature by")
	require.ErrorIs(t, session.VerifyHostTx(b.f.Snapshot, other.Confirm(1, 1, 100), nil), session.ReasonSignature)
	require.NoError(t, session.VerifyHostTx(b.f.Snapshot, b.f.Confirm(1, 1, 100), nil))

	// State signatures, alone and in a settlement.
	m := b.f.Settle(b.gw.Replica)
	ss, err := session.SignState(other.SlotKey(0), other.Snapshot.ChainId, m.EscrowId, m.Nonce, m.StateRoot, 0)
	require.NoError(t, err)
	require.ErrorIs(t, session.VerifyStateSignature(b.f.Snapshot, ss, nil), session.ReasonSignature)
	// In a settlement a bad signature is ignored, not fatal: with none
	// valid, no quorum.
	_, err = session.VerifySettlement(b.f.Snapshot, other.Resign(m, other.AllSlots()...), nil)
	require.ErrorIs(t, err, session.ReasonQuorum)
	require.ErrorContains(t, err, "signature does not verify")
	_, err = session.VerifySettlement(b.f.Snapshot, b.f.Resign(m, b.f.AllSlots()...), nil)
	require.NoError(t, err)
}

// Attack 10 for gossip: a host tx is accepted only from the slot's holder.
func TestVerifyHostTxForGossip(t *testing.T) {
	t.Parallel()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	outsider, err := signing.GenerateKey(sessiontestRand(8))
	require.NoError(t, err)
	require.NoError(t, session.VerifyHostTx(f.Snapshot, f.Confirm(1, 1, 5), nil))
	err = session.VerifyHostTx(f.Snapshot, f.SignedBy(outsider, 1, confirmTx(1, 5)), nil)
	require.ErrorIs(t, err, session.ReasonUnauthorized)
	unsigned := confirmTx(1, 5)
	unsigned.Slot = 1
	require.ErrorIs(t, session.VerifyHostTx(f.Snapshot, unsigned, nil), session.ReasonSignature)
	require.ErrorIs(t, session.VerifyHostTx(f.Snapshot, sessiontest.Start(1, 1, 1), nil), session.ReasonMalformed)
	bad := f.Confirm(1, 1, 5)
	bad.Slot = 9
	require.ErrorIs(t, session.VerifyHostTx(f.Snapshot, bad, nil), session.ReasonMalformed)
	require.Equal(t, session.TxKey(f.Confirm(1, 1, 5)), session.TxKey(f.SignedBy(outsider, 1, confirmTx(1, 5))), "the key ignores who signed")
}

// A host that signed a root and then revokes its warm key's grant (or any
// one slot whose signature no longer verifies) must not be able to block a
// settlement that a quorum of other slots signed. Invalid signatures are
// ignored and reported in the plan; only the valid ones count.
//
// Checked against the old checkQuorum, which rejected the whole settlement
// on the first invalid signature: this test then failed with
// ReasonUnauthorized for slot 0.
func TestAttackRevokedGrantBlocksSettlement(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *sessiontest.Options) { o.Holders = []int{0, 1, 2, 3} })
	b.inference(t, 10, 20, 5)
	b.step(t, sessiontest.Finalize())
	b.step(t, sessiontest.Finalize())
	warm, err := signing.GenerateKey(sessiontestRand(11))
	require.NoError(t, err)
	holder := b.f.SlotKey(0).Address()
	granted := warmKeys{warm.Address(): holder}

	// Slot 0 signed through its warm key while the grant stood; slots 1-3
	// signed with their own keys: a quorum of 3 of 4 without slot 0.
	m := b.f.Settle(b.gw.Replica, 1, 2, 3)
	ss, err := session.SignState(warm, b.f.Snapshot.ChainId, m.EscrowId, m.Nonce, m.StateRoot, 0)
	require.NoError(t, err)
	m.Signatures = append([]*sessionpb.SlotSignature{{Slot: 0, Sig: ss.Sig}}, m.Signatures...)
	plan, err := session.VerifySettlement(b.f.Snapshot, m, granted)
	require.NoError(t, err)
	require.Empty(t, plan.Ignored, "with the grant standing, every signature counts")

	// The host revokes the grant: its signature is ignored, not fatal.
	plan, err = session.VerifySettlement(b.f.Snapshot, m, nil)
	require.NoError(t, err)
	require.Len(t, plan.Ignored, 1)
	require.Equal(t, uint32(0), plan.Ignored[0].Slot)
	require.ErrorIs(t, plan.Ignored[0], session.ReasonUnauthorized)
	require.Equal(t, b.f.Snapshot.Amount, plan.Refund+sumTotals(plan), "the plan still adds up")

	// Without the quorum the settlement still fails, on the quorum, and
	// names what it ignored.
	m.Signatures = m.Signatures[:3]
	_, err = session.VerifySettlement(b.f.Snapshot, m, nil)
	require.ErrorIs(t, err, session.ReasonQuorum)
	require.ErrorContains(t, err, "2 of 4 slots signed validly; more than 2/3 (at least 3) are needed; ignored slot 0: signer")

	// The cost stays bounded: no more signatures than slots.
	m = b.f.Settle(b.gw.Replica, 0, 1, 2, 3, 3)
	_, err = session.VerifySettlement(b.f.Snapshot, m, nil)
	require.ErrorIs(t, err, session.ReasonMalformed)
	require.ErrorContains(t, err, "5 signatures for a group of 4 slots; at most one per slot")
}

func sumTotals(p *session.Plan) (n uint64) {
	for _, s := range p.Slots {
		n += s.Total()
	}
	return n
}

// A state signature names its escrow, and is checked against the escrow the
// caller holds. A host holding the same slot in two escrows signs both; a
// peer (or a gateway) that hands its signature from escrow B to whoever
// gathers signatures for escrow A must not have it counted for A: the
// gathered quorum would be refused on chain, and the settlement with it.
//
// Checked by deleting the escrow id comparison in VerifyStateSignature:
// the first assertion then failed (the signature over escrow B's bytes
// verified, since the check used the escrow id the signature claimed).
func TestAttackStateSignatureFromAnotherEscrow(t *testing.T) {
	t.Parallel()
	a := sessiontest.New(1, sessiontest.DefaultOptions())
	o := sessiontest.DefaultOptions()
	o.EscrowID = 8
	bEscrow := sessiontest.New(1, o) // same keys, same slots, escrow 8
	require.Equal(t, a.Snapshot.Group, bEscrow.Snapshot.Group)
	root := sessiontest.Hash("root")

	fromB, err := session.SignState(bEscrow.SlotKey(0), bEscrow.Snapshot.ChainId, 8, 3, root, 0)
	require.NoError(t, err)
	require.NoError(t, session.VerifyStateSignature(bEscrow.Snapshot, fromB, nil), "valid for the escrow it names")
	err = session.VerifyStateSignature(a.Snapshot, fromB, nil)
	require.ErrorIs(t, err, session.ReasonEscrow)
	require.ErrorContains(t, err, "state signature is for escrow 8, expected 7")

	// Relabelled as escrow 7 it no longer verifies: the bytes name escrow 8.
	relabelled := *fromB
	relabelled.EscrowId = 7
	require.ErrorIs(t, session.VerifyStateSignature(a.Snapshot, &relabelled, nil), session.ReasonSignature)
}
