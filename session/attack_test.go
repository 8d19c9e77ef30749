package session_test

// Each test here is one known attack from DESIGN.md, played by named roles
// next to the honest run. Each fails if the check that closes it is removed.

import (
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
	m.ProtocolVersion = 2
	_, err = session.VerifySettlement(b.f.Snapshot, b.f.Resign(m, b.f.AllSlots()...), nil)
	require.ErrorIs(t, err, session.ReasonVersion)
	require.ErrorContains(t, err, "protocol version 2, the escrow was created for version 1")
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
	ss, err := session.SignState(outsider, m.EscrowId, m.Nonce, m.StateRoot, 0)
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
	own, err := session.SignState(b.f.SlotKey(0), m.EscrowId, m.Nonce, m.StateRoot, 0)
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

// Attack 13: with slots skewed toward the executor's participant, a
// threshold over all slots would be unreachable. Votes are taken over the
// slots that may vote, so one honest outsider resolves it.
func TestAttackSkewedSlotsCanStillResolve(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *sessiontest.Options) { o.Holders = []int{0, 0, 0, 1} })
	id := b.inference(t, 1, 10, 1) // id 1: executor slot 1 (participant 0)
	b.step(t, b.f.Validate(3, id, false))
	_, live := b.gw.Replica.Record(id)
	require.False(t, live, "one eligible slot voting invalid resolves and seals the inference")
	st := b.gw.Replica.State().HostStats[1]
	require.Equal(t, uint64(1), st.Invalid)
	require.Zero(t, st.Finished)
	require.Zero(t, st.Cost, "an invalidated inference is refunded")

	// A stalled inference times out on the one eligible vote.
	id = b.gw.Replica.Nonce() + 1
	b.step(t, sessiontest.Start(id, 1, 10))
	exec := b.gw.Replica.Executor(id)
	require.NotEqual(t, uint32(3), exec)
	b.step(t, b.f.Timeout(3, id))
	_, live = b.gw.Replica.Record(id)
	require.False(t, live)
	require.Equal(t, uint64(1), b.gw.Replica.State().HostStats[exec].Missed)
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
	ss, err := session.SignState(warm, m.EscrowId, m.Nonce, m.StateRoot, 0)
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

	fromB, err := session.SignState(bEscrow.SlotKey(0), 8, 3, root, 0)
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
