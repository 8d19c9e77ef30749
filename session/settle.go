package session

import (
	"bytes"
	"fmt"

	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
)

// Payout is what one slot earns from a settlement.
type Payout struct {
	Slot     uint32
	Address  signing.Address
	Cost     uint64 // charged for the slot's finished inferences
	FeeShare uint64
	// Finished is the work credited to the slot: the attested finished count,
	// never the nonce. Empty diffs credit nothing.
	Finished uint64
	Stats    *sessionpb.HostStats
}

// Total is Cost + FeeShare.
func (p Payout) Total() uint64 { return p.Cost + p.FeeShare }

// Plan is an exact payout plan for one settlement:
// Amount == Σ slot totals + Refund, always.
type Plan struct {
	EscrowID uint64
	Creator  signing.Address
	Amount   uint64
	Fees     uint64
	Refund   uint64 // back to the creator: unreserved balance plus open reservations
	Slots    []Payout
	// Ignored are the signatures that did not count toward the quorum (a
	// revoked warm key, a bad signature), in the order carried. They are
	// reported, not fatal: one host cannot block a quorum of others.
	Ignored []IgnoredSignature
}

// IgnoredSignature is a settlement signature that did not count, and why.
type IgnoredSignature struct {
	Slot   uint32
	Reason Reason
	Detail string
}

func (s IgnoredSignature) Error() string { return fmt.Sprintf("slot %d: %s", s.Slot, s.Detail) }

func (s IgnoredSignature) Unwrap() error { return s.Reason }

// AddressPayout is a plan's payout summed over the slots one address holds.
type AddressPayout struct {
	Address  signing.Address
	Slots    []uint32
	Cost     uint64
	FeeShare uint64
	Finished uint64
}

// ByAddress sums the plan per address, in order of each address's first slot.
func (p *Plan) ByAddress() []AddressPayout {
	var out []AddressPayout
	index := make(map[signing.Address]int)
	for _, sp := range p.Slots {
		i, ok := index[sp.Address]
		if !ok {
			i = len(out)
			index[sp.Address] = i
			out = append(out, AddressPayout{Address: sp.Address})
		}
		a := &out[i]
		a.Slots = append(a.Slots, sp.Slot)
		a.Cost += sp.Cost
		a.FeeShare += sp.FeeShare
		a.Finished += sp.Finished
	}
	return out
}

// ExpectedFees recomputes the fees a session owes from the escrow snapshot:
// creation_fee + fee_per_nonce × active_nonces.
func ExpectedFees(snap *sessionpb.EscrowSnapshot, activeNonces uint64) (uint64, bool) {
	perNonce, ok := mul(snap.FeePerNonce, activeNonces)
	if !ok {
		return 0, false
	}
	return add(snap.CreationFee, perNonce)
}

// MaySettle reports whether sender may submit a settlement at phase for the
// escrow. phase is the settlement's own; VerifySettlement binds it to the
// signed root, so a caller runs both.
//
//   - The creator's side (the creator, or a warm key it granted) may settle at
//     any time, but only a finalized session: phase SETTLEMENT. Hosts sign
//     every root along the way, so otherwise the creator could settle an
//     earlier, cheaper root and not pay for the work done after it. This
//     holds even if the creator also holds a slot.
//   - Any group member (or a warm key it granted) may settle once the
//     settlement deadline has passed, at any phase, so a gateway cannot hold
//     hosts' pay hostage: one that vanished never finalized, and a host's
//     latest root (typically ACTIVE) is the newest the hosts signed.
func MaySettle(snap *sessionpb.EscrowSnapshot, sender signing.Address, phase sessionpb.Phase, deadlinePassed bool, auth Authorizer) error {
	creator, _ := signing.AddressFromBytes(snap.Creator)
	if bytes.Equal(sender[:], snap.Creator) || (auth != nil && auth.MayActFor(creator, sender, KindDiff)) {
		if phase != sessionpb.Phase_PHASE_SETTLEMENT {
			return &SettlementError{EscrowID: snap.EscrowId, Reason: ReasonPhase, Detail: fmt.Sprintf(
				"the creator's side (%s) may settle only a finalized session: expected phase %s, the settlement is at phase %s; finalize the session (FinalizeRound twice) and settle its final root",
				sender, sessionpb.Phase_PHASE_SETTLEMENT, phase)}
		}
		return nil
	}
	member := false
	for _, a := range snap.Group {
		holder, _ := signing.AddressFromBytes(a)
		if holder == sender || (auth != nil && auth.MayActFor(holder, sender, KindState)) {
			member = true
			break
		}
	}
	switch {
	case !member:
		return &SettlementError{EscrowID: snap.EscrowId, Reason: ReasonUnauthorized, Detail: fmt.Sprintf("%s is neither the creator nor a group member", sender)}
	case !deadlinePassed:
		return &SettlementError{EscrowID: snap.EscrowId, Reason: ReasonUnauthorized, Detail: fmt.Sprintf("group member %s may settle only after the settlement deadline; until then only the creator may", sender)}
	}
	return nil
}

// VerifySettlement checks a settlement against the escrow's snapshot and
// returns the exact payout plan. It enforces every settlement rule: the
// books (VerifyBooks), then the quorum: distinct slots holding more than 2/3
// of the group signed the root. A slot counts once however often it
// appears; an address holding two slots counts for each slot it signed
// with. A settlement carries at most one signature per slot, so the cost is
// bounded by the group. Signatures are checked in order until the quorum is
// reached; an invalid one before that is ignored and reported in
// Plan.Ignored (a host that revokes its warm key after signing cannot block
// the others), and only a missing quorum rejects.
//
// A host signs once for all its slots (the signed bytes name no slot), so
// the same signature may appear for several slots: it is verified once.
func VerifySettlement(snap *sessionpb.EscrowSnapshot, m *sessionpb.Settlement, auth Authorizer) (*Plan, error) {
	return VerifySettlementWith(snap, m, auth, nil)
}

// VerifySettlementWith is VerifySettlement through memo: a signature that
// verified before (when the chain admitted the settlement's tx to its
// mempool, say) costs a hash instead of a curve check. The outcome is the
// same with or without the memo.
func VerifySettlementWith(snap *sessionpb.EscrowSnapshot, m *sessionpb.Settlement, auth Authorizer, memo *signing.Memo) (*Plan, error) {
	plan, err := VerifyBooks(snap, m)
	if err != nil {
		return nil, err
	}
	if plan.Ignored, err = checkQuorum(snap, m, auth, memo); err != nil {
		return nil, err
	}
	return plan, nil
}

// VerifyBooks checks every settlement rule but the signatures and returns
// the payout plan:
//   - the escrow id, and the protocol version and max nonce of the snapshot
//     (never live parameters);
//   - the per-slot stats cover exactly the group;
//   - fees equal creation_fee + fee_per_nonce × active_nonces;
//   - the books add up: balance + reserved + fees + Σ cost == amount, with
//     every sum overflow-checked, so Σ cost + fees <= amount;
//   - credited work (finished + invalid + missed) fits under the nonce;
//   - the root recomputed from the parts equals state_root.
//
// The chain pays a settlement that waited out its challenge window through
// it alone: the quorum was verified when the settlement was accepted, and a
// grant revoked since must not undo that.
func VerifyBooks(snap *sessionpb.EscrowSnapshot, m *sessionpb.Settlement) (*Plan, error) {
	if err := ValidateSnapshot(snap); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, &SettlementError{EscrowID: snap.EscrowId, Reason: ReasonMalformed, Detail: "missing settlement"}
	}
	fail := func(r Reason, format string, args ...any) (*Plan, error) {
		return nil, &SettlementError{EscrowID: snap.EscrowId, Reason: r, Detail: fmt.Sprintf(format, args...)}
	}
	n := len(snap.Group)
	switch {
	case m.EscrowId != snap.EscrowId:
		return fail(ReasonEscrow, "message names escrow %d", m.EscrowId)
	case m.ProtocolVersion != snap.ProtocolVersion:
		return fail(ReasonVersion, "protocol version %d, the escrow was created for version %d", m.ProtocolVersion, snap.ProtocolVersion)
	case m.Nonce > snap.MaxNonce:
		return fail(ReasonNonce, "nonce %d exceeds the escrow's max nonce %d", m.Nonce, snap.MaxNonce)
	case m.ActiveNonces > m.Nonce:
		return fail(ReasonNonce, "active nonces %d exceed the nonce %d", m.ActiveNonces, m.Nonce)
	case m.Phase < sessionpb.Phase_PHASE_ACTIVE || m.Phase > sessionpb.Phase_PHASE_SETTLEMENT:
		return fail(ReasonMalformed, "unknown phase %d", m.Phase)
	case len(m.HostStats) != n:
		return fail(ReasonMalformed, "%d host stats for a group of %d slots", len(m.HostStats), n)
	case len(m.RecordsRoot) != hashSize || len(m.StateRoot) != hashSize:
		return fail(ReasonMalformed, "records root and state root must be %d bytes", hashSize)
	case m.Sealed == nil || len(m.Sealed.Digest) != hashSize:
		return fail(ReasonMalformed, "sealed accumulator missing or malformed")
	}
	fees, ok := ExpectedFees(snap, m.ActiveNonces)
	if !ok {
		return fail(ReasonOverflow, "fees for %d active nonces overflow", m.ActiveNonces)
	}
	if m.Fees != fees {
		return fail(ReasonFees, "fees %d do not match the snapshot (creation fee %d + %d × %d active nonces = %d)", m.Fees, snap.CreationFee, snap.FeePerNonce, m.ActiveNonces, fees)
	}
	spent := m.Fees
	held := m.Balance
	var work uint64
	for i, hs := range m.HostStats {
		if hs == nil {
			return fail(ReasonMalformed, "host stats %d missing", i)
		}
		if spent, ok = add(spent, hs.Cost); !ok {
			return fail(ReasonOverflow, "costs overflow at slot %d", i)
		}
		for _, w := range []uint64{hs.Finished, hs.Invalid, hs.Missed} {
			if work, ok = add(work, w); !ok {
				return fail(ReasonOverflow, "work counts overflow at slot %d", i)
			}
		}
	}
	if spent > snap.Amount {
		return fail(ReasonConservation, "costs plus fees %d exceed the escrow amount %d", spent, snap.Amount)
	}
	if held, ok = add(held, m.Reserved); ok {
		held, ok = add(held, spent)
	}
	if !ok || held != snap.Amount {
		return fail(ReasonConservation, "balance %d + reserved %d + fees and costs %d do not add up to the escrow amount %d", m.Balance, m.Reserved, spent, snap.Amount)
	}
	if work > m.Nonce {
		return fail(ReasonConservation, "%d inferences credited, more than the %d nonces applied", work, m.Nonce)
	}
	// Validation counts follow from the work counts: an inference is
	// validated only once finished, and a slot votes at most once on each
	// inference of another slot that finished (whether it stayed finished or
	// was invalidated). The sums fit: work did not overflow and is at most
	// the nonce.
	var judged uint64 // finished + invalid over the group
	for _, hs := range m.HostStats {
		judged += hs.Finished + hs.Invalid
	}
	for i, hs := range m.HostStats {
		if hs.Validated > hs.Finished {
			return fail(ReasonConservation, "slot %d: %d inferences validated, more than the %d it finished", i, hs.Validated, hs.Finished)
		}
		if others := judged - hs.Finished - hs.Invalid; hs.ValidationsDone > others {
			return fail(ReasonConservation, "slot %d: %d validations done, more than the %d finished inferences of other slots", i, hs.ValidationsDone, others)
		}
	}
	root := SettlementRoot(m)
	if !bytes.Equal(root[:], m.StateRoot) {
		return fail(ReasonRoot, "state root mismatch (signed %s, recomputed from the parts %s)", short(m.StateRoot), short(root[:]))
	}
	return planFor(snap, m), nil
}

// SettlementRoot recomputes the state root from a settlement's parts. The
// settlement must be well-formed (VerifySettlement checks that first).
func SettlementRoot(m *sessionpb.Settlement) [32]byte {
	leaves := make([][32]byte, len(m.HostStats))
	for i, hs := range m.HostStats {
		leaves[i] = statsLeaf(uint32(i), hs)
	}
	p := rootParts{
		escrowID:        m.EscrowId,
		protocolVersion: m.ProtocolVersion,
		nonce:           m.Nonce,
		phase:           m.Phase,
		activeNonces:    m.ActiveNonces,
		balance:         m.Balance,
		reserved:        m.Reserved,
		fees:            m.Fees,
		stats:           statsDigest(leaves),
		sealedCount:     m.Sealed.Count,
	}
	copy(p.records[:], m.RecordsRoot)
	copy(p.sealedDigest[:], m.Sealed.Digest)
	return p.root()
}

// checkQuorum counts valid signatures by distinct slot and returns the ones
// it ignored. A nil entry or a slot outside the group is the submitter's
// malformed message, not a host's fault, and rejects.
func checkQuorum(snap *sessionpb.EscrowSnapshot, m *sessionpb.Settlement, auth Authorizer, memo *signing.Memo) ([]IgnoredSignature, error) {
	n := len(snap.Group)
	if len(m.Signatures) > n {
		return nil, &SettlementError{EscrowID: snap.EscrowId, Reason: ReasonMalformed, Detail: fmt.Sprintf(
			"%d signatures for a group of %d slots; at most one per slot", len(m.Signatures), n)}
	}
	if memo == nil {
		// Repeats of one host's signature (one per slot it holds) are
		// checked once.
		memo = signing.NewMemo(n)
	}
	msg := StateSignBytes(snap.ChainId, m.EscrowId, m.Nonce, m.StateRoot)
	signed := make([]bool, n)
	count := 0
	var ignored []IgnoredSignature
	for i, ss := range m.Signatures {
		if HasQuorum(count, n) {
			// Quorum reached: later signatures cannot change the outcome.
			break
		}
		if ss == nil || int(ss.Slot) >= n {
			return nil, &SettlementError{EscrowID: snap.EscrowId, Reason: ReasonMalformed, Detail: fmt.Sprintf("signature %d names no slot of the group of %d", i, n)}
		}
		if signed[ss.Slot] {
			continue // a slot counts once, however often it is listed
		}
		holder, _ := signing.AddressFromBytes(snap.Group[ss.Slot])
		if reason, detail := checkSig(ss.Sig, msg, holder, KindState, auth, memo); reason != "" {
			ignored = append(ignored, IgnoredSignature{Slot: ss.Slot, Reason: reason, Detail: detail})
			continue
		}
		signed[ss.Slot] = true
		count++
	}
	if !HasQuorum(count, n) {
		detail := fmt.Sprintf("%d of %d slots signed validly; more than 2/3 (at least %d) are needed", count, n, QuorumSize(n))
		for _, ig := range ignored {
			detail += "; ignored " + ig.Error()
		}
		return nil, &SettlementError{EscrowID: snap.EscrowId, Reason: ReasonQuorum, Detail: detail}
	}
	return ignored, nil
}

// PaysAtOnce reports whether a verified settlement is paid when the chain
// accepts it. Only a finalized root (phase SETTLEMENT) is certainly the
// session's last: no diff applies after it. Any other root, which only a
// group member may settle and only after the deadline (MaySettle), may be
// an early one that a member who is also the gateway picked to pay for less
// work, so it waits out a challenge window in which a root of a higher
// nonce replaces it (MaySupersede).
func PaysAtOnce(m *sessionpb.Settlement) bool {
	return m.Phase == sessionpb.Phase_PHASE_SETTLEMENT
}

// MaySupersede reports whether next may replace the settlement pending in
// its challenge window (nil: none is). Hosts sign every root, and a root of
// a higher nonce includes all the work of a lower one, so only a higher
// nonce replaces; an equal or lower one would let the pending settlement's
// rival pay for less.
func MaySupersede(snap *sessionpb.EscrowSnapshot, pending, next *sessionpb.Settlement) error {
	if pending == nil || next.Nonce > pending.Nonce {
		return nil
	}
	return &SettlementError{EscrowID: snap.EscrowId, Reason: ReasonStale, Detail: fmt.Sprintf(
		"a settlement at nonce %d is pending in its challenge window; only a settlement of a higher nonce replaces it, this one is at nonce %d",
		pending.Nonce, next.Nonce)}
}

// planFor splits the settled books. Fees are shared equally by slot, since
// every slot keeps and co-signs the books; the remainder goes one unit each
// to the lowest slots. Costs go to the slot that earned them.
func planFor(snap *sessionpb.EscrowSnapshot, m *sessionpb.Settlement) *Plan {
	n := uint64(len(snap.Group))
	p := &Plan{EscrowID: snap.EscrowId, Amount: snap.Amount, Fees: m.Fees}
	p.Creator, _ = signing.AddressFromBytes(snap.Creator)
	share, rem := m.Fees/n, m.Fees%n
	paid := uint64(0)
	for i, hs := range m.HostStats {
		addr, _ := signing.AddressFromBytes(snap.Group[i])
		fs := share
		if uint64(i) < rem {
			fs++
		}
		c := *hs
		p.Slots = append(p.Slots, Payout{Slot: uint32(i), Address: addr, Cost: hs.Cost, FeeShare: fs, Finished: hs.Finished, Stats: &c})
		paid += hs.Cost + fs
	}
	p.Refund = snap.Amount - paid
	return p
}
