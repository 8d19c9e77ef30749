package session

import (
	"bytes"
	"fmt"
	"math/bits"
	"slices"

	"github.com/devshard/devshard/session/sessionpb"
)

// Result is what a successful Apply produced.
type Result struct {
	Root [32]byte
	// Sealed are the records this diff sealed, in fold order: the input for
	// the host's sealed-inference index.
	Sealed []*sessionpb.InferenceRecord
}

// Apply applies diff d, all or nothing. It requires nonce == latest+1,
// checks the gateway's signature and every tx (signer, slot, status and
// amount) while building the next state aside, seals what became sealable,
// and commits only if the computed root equals the signed one. On error
// the session is unchanged.
func (s *Session) Apply(d *sessionpb.Diff) (*Result, error) {
	p, err := s.Prepare(d)
	if err != nil {
		return nil, err
	}
	if err := p.Commit(); err != nil {
		return nil, err
	}
	return p.Result(), nil
}

// Pending is a diff that passed every check but is not yet part of the
// session. Callers that persist diffs use it to write first and publish
// after: Prepare, store the diff, then Commit; on a storage error they drop
// the Pending and the session is as it was, so memory never runs ahead of
// disk.
type Pending struct {
	st        *staged
	update    *pendingRoot
	root      [32]byte
	baseNonce uint64
	done      bool
}

// Prepare checks diff d exactly as Apply does and returns the would-be
// result without changing the session.
func (s *Session) Prepare(d *sessionpb.Diff) (*Pending, error) {
	return s.prepare(d, nil)
}

// prepare checks diff d on the state prev leads to (the session's, if prev
// is nil) and returns the would-be result, changing neither.
func (s *Session) prepare(d *sessionpb.Diff, prev *Pending) (*Pending, error) {
	if d == nil {
		return nil, &DiffError{Tx: -1, Reason: ReasonMalformed, Detail: "missing diff"}
	}
	st, err := s.stage(d, prev)
	if err != nil {
		return nil, err
	}
	st.seal()
	update, root := st.root()
	if !bytes.Equal(root[:], d.PostStateRoot) {
		return nil, st.fail(-1, ReasonRoot, "post-state root mismatch (signed %s, computed %s)", short(d.PostStateRoot), short(root[:]))
	}
	return &Pending{st: st, update: update, root: root, baseNonce: st.baseNonce()}, nil
}

// Result is what committing the diff produces (or produced).
func (p *Pending) Result() *Result { return &Result{Root: p.root, Sealed: p.st.sealedOut} }

// Commit makes the prepared diff part of the session. It fails if the
// session moved since Prepare, if the Pending was already committed, or if
// it was staged in a Run on a diff not committed yet.
func (p *Pending) Commit() error {
	if err := p.committable(); err != nil {
		return err
	}
	p.st.commit(p.update, p.root)
	p.done = true
	return nil
}

// committable says why p cannot be committed now, if it cannot.
func (p *Pending) committable() error {
	s := p.st.s
	switch {
	case p.done:
		return fmt.Errorf("diff %d was already committed", p.st.d.Nonce)
	case p.st.prev != nil && !p.st.prev.done:
		return fmt.Errorf("diff %d is staged on diff %d, which is not committed", p.st.d.Nonce, p.st.prev.st.d.Nonce)
	case s.nonce != p.baseNonce:
		return &DiffError{Nonce: p.st.d.Nonce, Tx: -1, Reason: ReasonNonce, Detail: fmt.Sprintf("session moved to nonce %d after this diff was prepared on nonce %d", s.nonce, p.baseNonce)}
	}
	return nil
}

// Next computes the root diff d would produce without applying it or
// checking its root and user signature. The gateway uses it to fill
// PostStateRoot before signing.
func (s *Session) Next(d *sessionpb.Diff) ([32]byte, error) {
	st, err := s.stageUnsigned(d)
	if err != nil {
		return [32]byte{}, err
	}
	st.seal()
	_, root := st.root()
	return root, nil
}

// Sequence is the sequencer's Prepare: it checks diff d's header and txs
// as Apply does, fills in d.PostStateRoot, and returns the Pending to
// commit once the caller has signed and stored d. It skips the check of the
// user signature, which the caller is about to make itself, so the gateway
// verifies each host tx once instead of twice.
func (s *Session) Sequence(d *sessionpb.Diff) (*Pending, error) {
	st, err := s.stageUnsigned(d)
	if err != nil {
		return nil, err
	}
	st.seal()
	update, root := st.root()
	d.PostStateRoot = root[:]
	return &Pending{st: st, update: update, root: root, baseNonce: s.nonce}, nil
}

// staged is the next state, built beside the session. Records are copied on
// first touch, so the session's own records stay as they were until commit.
type staged struct {
	s *Session
	d *sessionpb.Diff
	// prev is the staged diff of a Run this one builds on; nil when it
	// builds on the session's committed state.
	prev *Pending

	phase        sessionpb.Phase
	activeNonces uint64
	balance      uint64
	reserved     uint64
	fees         uint64
	stats        []sessionpb.HostStats
	statDirty    []bool
	touched      map[uint64]*sessionpb.InferenceRecord // copies of changed or new records
	removed      map[uint64]bool                       // sealed by this diff
	terminal     []uint64                              // made VALIDATED/INVALIDATED/TIMED_OUT by this diff
	sealQueue    []uint64
	sealedCount  uint64
	sealedDigest [32]byte
	sealedOut    []*sessionpb.InferenceRecord
}

func (st *staged) fail(tx int, r Reason, format string, args ...any) error {
	return &DiffError{Nonce: st.d.Nonce, Tx: tx, Reason: r, Detail: fmt.Sprintf(format, args...)}
}

func (s *Session) stage(d *sessionpb.Diff, prev *Pending) (*staged, error) {
	if err := s.checkDiffHeader(d, prev); err != nil {
		return nil, err
	}
	if len(d.PostStateRoot) != hashSize {
		return nil, &DiffError{Nonce: d.Nonce, Tx: -1, Reason: ReasonMalformed, Detail: fmt.Sprintf("post-state root must be %d bytes, got %d", hashSize, len(d.PostStateRoot))}
	}
	if r, detail := checkSig(d.UserSig, DiffSignBytes(s.snap.ChainId, d), s.creator, KindDiff, s.auth, nil); r != "" {
		return nil, &DiffError{Nonce: d.Nonce, Tx: -1, Reason: r, Detail: "user signature: " + detail}
	}
	return s.applyTxs(d, prev)
}

func (s *Session) stageUnsigned(d *sessionpb.Diff) (*staged, error) {
	if d == nil {
		return nil, &DiffError{Tx: -1, Reason: ReasonMalformed, Detail: "missing diff"}
	}
	if err := s.checkDiffHeader(d, nil); err != nil {
		return nil, err
	}
	return s.applyTxs(d, nil)
}

// checkDiffHeader checks d's header against the state prev leads to (the
// session's, if prev is nil).
func (s *Session) checkDiffHeader(d *sessionpb.Diff, prev *Pending) error {
	fail := func(r Reason, format string, args ...any) error {
		return &DiffError{Nonce: d.Nonce, Tx: -1, Reason: r, Detail: fmt.Sprintf(format, args...)}
	}
	nonce, phase := s.nonce, s.phase
	if prev != nil {
		nonce, phase = prev.st.d.Nonce, prev.st.phase
	}
	switch {
	case d.EscrowId != s.snap.EscrowId:
		return fail(ReasonEscrow, "diff is for escrow %d, this session is escrow %d", d.EscrowId, s.snap.EscrowId)
	case d.Nonce != nonce+1:
		return fail(ReasonNonce, "nonce must be %d (latest+1), got %d", nonce+1, d.Nonce)
	case d.Nonce > s.snap.MaxNonce:
		return fail(ReasonNonce, "nonce %d exceeds the escrow's max nonce %d", d.Nonce, s.snap.MaxNonce)
	case phase == sessionpb.Phase_PHASE_SETTLEMENT:
		return fail(ReasonPhase, "session is in SETTLEMENT; it accepts no more diffs")
	case len(d.Txs) > MaxTxsPerDiff:
		return fail(ReasonMalformed, "%d txs exceed the limit of %d per diff", len(d.Txs), MaxTxsPerDiff)
	}
	// Bodies are checked before anything encodes them for a signature.
	for i, tx := range d.Txs {
		if !hasBody(tx) {
			return &DiffError{Nonce: d.Nonce, Tx: i, Reason: ReasonMalformed, Detail: "tx has no body"}
		}
	}
	return nil
}

// hasBody reports whether tx carries exactly one non-nil body.
func hasBody(tx *sessionpb.Tx) bool {
	if tx == nil {
		return false
	}
	switch b := tx.Body.(type) {
	case *sessionpb.Tx_Start:
		return b.Start != nil
	case *sessionpb.Tx_Confirm:
		return b.Confirm != nil
	case *sessionpb.Tx_Finish:
		return b.Finish != nil
	case *sessionpb.Tx_Validation:
		return b.Validation != nil
	case *sessionpb.Tx_Timeout:
		return b.Timeout != nil
	case *sessionpb.Tx_Finalize:
		return b.Finalize != nil
	}
	return false
}

// applyTxs stages d's txs on the state prev leads to (the session's, if
// prev is nil).
func (s *Session) applyTxs(d *sessionpb.Diff, prev *Pending) (*staged, error) {
	st := &staged{
		s:            s,
		d:            d,
		prev:         prev,
		phase:        s.phase,
		activeNonces: s.activeNonces,
		balance:      s.balance,
		reserved:     s.reserved,
		fees:         s.fees,
		stats:        s.stats,
		sealQueue:    s.sealQueue,
		sealedCount:  s.sealedCount,
		sealedDigest: s.sealedDigest,
	}
	if prev != nil {
		b := prev.st
		st.phase, st.activeNonces = b.phase, b.activeNonces
		st.balance, st.reserved, st.fees = b.balance, b.reserved, b.fees
		st.stats, st.sealQueue = b.stats, b.sealQueue
		st.sealedCount, st.sealedDigest = b.sealedCount, b.sealedDigest
	}
	// What the staged diff changes is its own: the base stays as it was.
	st.stats = slices.Clone(st.stats)
	st.sealQueue = slices.Clone(st.sealQueue)
	st.statDirty = make([]bool, len(st.stats))
	st.touched = make(map[uint64]*sessionpb.InferenceRecord, 4)
	st.removed = make(map[uint64]bool, 2)
	// fee_per_nonce is charged for every nonce applied while ACTIVE.
	if st.phase == sessionpb.Phase_PHASE_ACTIVE {
		fee := s.snap.FeePerNonce
		if st.balance < fee {
			return nil, st.fail(-1, ReasonFunds, "escrow balance %d cannot pay the fee per nonce %d", st.balance, fee)
		}
		st.balance -= fee
		st.fees += fee // cannot overflow: fees+balance <= amount
		st.activeNonces++
	}
	for i, tx := range d.Txs {
		if err := st.applyTx(i, tx); err != nil {
			return nil, err
		}
	}
	return st, nil
}

// record returns the staged copy of live record id, copying it on first use.
func (st *staged) record(id uint64) (*sessionpb.InferenceRecord, bool) {
	if st.removed[id] {
		return nil, false
	}
	if r, ok := st.touched[id]; ok {
		return r, true
	}
	r, ok := st.baseRecord(id)
	if !ok {
		return nil, false
	}
	c := cloneRecord(r)
	st.touched[id] = c
	return c, true
}

func (st *staged) stat(slot uint32) *sessionpb.HostStats {
	st.statDirty[slot] = true
	return &st.stats[slot]
}

func (st *staged) applyTx(i int, tx *sessionpb.Tx) error {
	switch b := tx.Body.(type) {
	case *sessionpb.Tx_Start:
		return st.start(i, tx, b.Start)
	case *sessionpb.Tx_Finalize:
		return st.finalize(i, tx)
	case *sessionpb.Tx_Confirm, *sessionpb.Tx_Finish, *sessionpb.Tx_Validation, *sessionpb.Tx_Timeout:
		return st.hostTx(i, tx)
	default:
		return st.fail(i, ReasonMalformed, "tx has no body")
	}
}

// gatewayTx checks the envelope of a tx that the diff signature covers.
func (st *staged) gatewayTx(i int, tx *sessionpb.Tx, name string) error {
	if tx.Sig != nil || tx.Slot != 0 {
		return st.fail(i, ReasonMalformed, "%s is a gateway tx: it carries no slot and no signature of its own", name)
	}
	return nil
}

func (st *staged) start(i int, tx *sessionpb.Tx, m *sessionpb.StartInference) error {
	if err := st.gatewayTx(i, tx, "StartInference"); err != nil {
		return err
	}
	if st.phase != sessionpb.Phase_PHASE_ACTIVE {
		return st.fail(i, ReasonPhase, "StartInference needs phase ACTIVE, session is %s", st.phase)
	}
	if m.InferenceId != st.d.Nonce {
		return st.fail(i, ReasonMalformed, "StartInference id must equal the diff nonce %d, got %d", st.d.Nonce, m.InferenceId)
	}
	if _, exists := st.record(m.InferenceId); exists {
		return st.fail(i, ReasonDuplicate, "inference %d already started in this diff", m.InferenceId)
	}
	if m.MaxTokens == 0 {
		return st.fail(i, ReasonMalformed, "StartInference max tokens must be positive")
	}
	if len(m.PromptHash) != hashSize {
		return st.fail(i, ReasonMalformed, "prompt hash must be %d bytes, got %d", hashSize, len(m.PromptHash))
	}
	if len(m.Model) > maxModelLen {
		return st.fail(i, ReasonMalformed, "model name longer than %d bytes", maxModelLen)
	}
	cost, err := Reservation(m.InputTokens, m.MaxTokens, st.s.snap.TokenPrice)
	if err != nil {
		return st.fail(i, ReasonOverflow, "reservation (%d + %d tokens) × price %d overflows", m.InputTokens, m.MaxTokens, st.s.snap.TokenPrice)
	}
	if cost > st.balance {
		return st.fail(i, ReasonFunds, "reservation %d exceeds the escrow balance %d", cost, st.balance)
	}
	st.balance -= cost
	st.reserved += cost
	n := bitmapLen(len(st.s.group))
	st.touched[m.InferenceId] = &sessionpb.InferenceRecord{
		Id:           m.InferenceId,
		Status:       sessionpb.InferenceStatus_INFERENCE_STATUS_PENDING,
		ExecutorSlot: st.s.Executor(m.InferenceId),
		InputTokens:  m.InputTokens,
		MaxTokens:    m.MaxTokens,
		Reserved:     cost,
		PromptHash:   slices.Clone(m.PromptHash),
		ValidVotes:   make([]byte, n),
		InvalidVotes: make([]byte, n),
		TimeoutVotes: make([]byte, n),
	}
	return nil
}

func (st *staged) finalize(i int, tx *sessionpb.Tx) error {
	if err := st.gatewayTx(i, tx, "FinalizeRound"); err != nil {
		return err
	}
	switch st.phase {
	case sessionpb.Phase_PHASE_ACTIVE:
		st.phase = sessionpb.Phase_PHASE_FINALIZING
	case sessionpb.Phase_PHASE_FINALIZING:
		st.phase = sessionpb.Phase_PHASE_SETTLEMENT
	default:
		return st.fail(i, ReasonPhase, "FinalizeRound in phase %s", st.phase)
	}
	return nil
}

// hostTx authenticates a host tx, then applies it.
func (st *staged) hostTx(i int, tx *sessionpb.Tx) error {
	change, err := st.checkHostTx(i, tx, st.record)
	if err != nil {
		return err
	}
	msg, _ := TxSignBytes(st.s.snap.ChainId, st.d.EscrowId, tx)
	kind, _ := hostTxKind(tx)
	if reason, detail := checkSig(tx.Sig, msg, st.s.group[tx.Slot], kind, st.s.auth, st.s.memo); reason != "" {
		return st.fail(i, reason, "slot %d: %s", tx.Slot, detail)
	}
	change()
	return nil
}

// checkHostTx makes apply's structural and status checks of host tx i,
// against the record lookup returns, and returns the change to make once
// the signature holds. They come before the signature: they are cheap and
// do not depend on who signed.
func (st *staged) checkHostTx(i int, tx *sessionpb.Tx, lookup func(id uint64) (*sessionpb.InferenceRecord, bool)) (func(), error) {
	if st.phase == sessionpb.Phase_PHASE_SETTLEMENT {
		return nil, st.fail(i, ReasonPhase, "host txs are not accepted in SETTLEMENT")
	}
	if int(tx.Slot) >= len(st.s.group) {
		return nil, st.fail(i, ReasonMalformed, "slot %d is outside the group of %d", tx.Slot, len(st.s.group))
	}
	id := txInferenceID(tx)
	r, ok := lookup(id)
	if !ok {
		return nil, st.fail(i, ReasonStatus, "inference %d is not live (never started, or already sealed)", id)
	}
	switch b := tx.Body.(type) {
	case *sessionpb.Tx_Confirm:
		return st.confirm(i, tx, r, b.Confirm)
	case *sessionpb.Tx_Finish:
		return st.finish(i, tx, r, b.Finish)
	case *sessionpb.Tx_Validation:
		return st.validate(i, tx, r, b.Validation)
	case *sessionpb.Tx_Timeout:
		return st.timeout(i, tx, r)
	}
	return nil, st.fail(i, ReasonMalformed, "a host tx is a ConfirmStart, FinishInference, Validation or TimeoutInference")
}

// HostTxKind names a host tx's kind, as logs and metrics label it:
// confirm, finish, validation or timeout. Any other tx (the gateway's
// start and finalize) is "".
func HostTxKind(tx *sessionpb.Tx) string {
	switch tx.Body.(type) {
	case *sessionpb.Tx_Confirm:
		return "confirm"
	case *sessionpb.Tx_Finish:
		return "finish"
	case *sessionpb.Tx_Validation:
		return "validation"
	case *sessionpb.Tx_Timeout:
		return "timeout"
	}
	return ""
}

func txInferenceID(tx *sessionpb.Tx) uint64 {
	switch b := tx.Body.(type) {
	case *sessionpb.Tx_Confirm:
		return b.Confirm.GetInferenceId()
	case *sessionpb.Tx_Finish:
		return b.Finish.GetInferenceId()
	case *sessionpb.Tx_Validation:
		return b.Validation.GetInferenceId()
	case *sessionpb.Tx_Timeout:
		return b.Timeout.GetInferenceId()
	}
	return 0
}

func (st *staged) confirm(i int, tx *sessionpb.Tx, r *sessionpb.InferenceRecord, m *sessionpb.ConfirmStart) (func(), error) {
	if tx.Slot != r.ExecutorSlot {
		return nil, st.fail(i, ReasonUnauthorized, "ConfirmStart for inference %d must come from executor slot %d, got slot %d", r.Id, r.ExecutorSlot, tx.Slot)
	}
	if r.Status != sessionpb.InferenceStatus_INFERENCE_STATUS_PENDING {
		return nil, st.fail(i, ReasonStatus, "ConfirmStart needs inference %d PENDING, it is %s", r.Id, r.Status)
	}
	if m.ConfirmedAt <= 0 {
		return nil, st.fail(i, ReasonMalformed, "confirmed_at must be a positive unix time, got %d", m.ConfirmedAt)
	}
	return func() {
		r.Status = sessionpb.InferenceStatus_INFERENCE_STATUS_STARTED
		r.ConfirmedAt = m.ConfirmedAt
		hs := st.stat(tx.Slot)
		hs.LastConfirmedAt = max(hs.LastConfirmedAt, m.ConfirmedAt)
	}, nil
}

func (st *staged) finish(i int, tx *sessionpb.Tx, r *sessionpb.InferenceRecord, m *sessionpb.FinishInference) (func(), error) {
	if tx.Slot != r.ExecutorSlot {
		return nil, st.fail(i, ReasonUnauthorized, "FinishInference for inference %d must come from executor slot %d, got slot %d", r.Id, r.ExecutorSlot, tx.Slot)
	}
	if r.Status != sessionpb.InferenceStatus_INFERENCE_STATUS_STARTED {
		return nil, st.fail(i, ReasonStatus, "FinishInference needs inference %d STARTED, it is %s", r.Id, r.Status)
	}
	if len(m.ResponseHash) != hashSize {
		return nil, st.fail(i, ReasonMalformed, "response hash must be %d bytes, got %d", hashSize, len(m.ResponseHash))
	}
	used, _ := add(m.InputTokens, m.OutputTokens) // the recorded count wraps like it always has; the charge does not
	cost := Charge(m.InputTokens, m.OutputTokens, st.s.snap.TokenPrice, r.Reserved)
	hs := &st.stats[tx.Slot]
	if _, ok := add(hs.Cost, cost); !ok {
		return nil, st.fail(i, ReasonOverflow, "slot %d cost overflows", tx.Slot)
	}
	return func() {
		st.reserved -= r.Reserved
		st.balance += r.Reserved - cost
		hs := st.stat(tx.Slot)
		hs.Cost += cost
		hs.Finished++
		r.Status = sessionpb.InferenceStatus_INFERENCE_STATUS_FINISHED
		r.Cost = cost
		r.TokensUsed = used
		r.ResponseHash = slices.Clone(m.ResponseHash)
		r.FinishedNonce = st.d.Nonce
		// The live-records root before this diff: fixed before the
		// executor's signed Finish could be carried, known to apply from
		// state alone, and (unlike the state root) free of the escrow id.
		seed := st.baseTree().node(treeDepth, 0)
		r.SampleSeed = seed[:]
		insertSorted(&st.sealQueue, r.Id)
	}, nil
}

// voter checks that slot may vote on r and has not yet voted in votes.
func (st *staged) voter(i int, slot uint32, r *sessionpb.InferenceRecord, kind string, votes ...[]byte) error {
	if !st.s.MayVote(r.ExecutorSlot, slot) {
		return st.fail(i, ReasonSelfVote, "slot %d is held by the executor of inference %d; it may not cast a %s vote on it", slot, r.Id, kind)
	}
	for _, v := range votes {
		if hasBit(v, slot) {
			return st.fail(i, ReasonDuplicate, "slot %d already voted on inference %d", slot, r.Id)
		}
	}
	return nil
}

func (st *staged) validate(i int, tx *sessionpb.Tx, r *sessionpb.InferenceRecord, m *sessionpb.Validation) (func(), error) {
	if r.Status != sessionpb.InferenceStatus_INFERENCE_STATUS_FINISHED && r.Status != sessionpb.InferenceStatus_INFERENCE_STATUS_CHALLENGED {
		return nil, st.fail(i, ReasonStatus, "Validation needs inference %d FINISHED or CHALLENGED, it is %s", r.Id, r.Status)
	}
	if len(m.ResponseHash) != 0 && len(m.ResponseHash) != hashSize {
		return nil, st.fail(i, ReasonMalformed, "validator response hash must be empty or %d bytes, got %d", hashSize, len(m.ResponseHash))
	}
	if err := st.voter(i, tx.Slot, r, "validation", r.ValidVotes, r.InvalidVotes); err != nil {
		return nil, err
	}
	// Until a challenge, only the slots the draw picked may vote: otherwise
	// any slot, a Sybil of the executor among them, could vouch for it.
	var sampled []uint32
	if r.Status == sessionpb.InferenceStatus_INFERENCE_STATUS_FINISHED {
		sampled = sampledSlots(st.s.snap, st.s.group, r)
		if !slices.Contains(sampled, tx.Slot) {
			return nil, st.fail(i, ReasonNotSampled, "slot %d was not sampled to validate inference %d (sampled slots: %s); until a sampled slot challenges it, only sampled slots may vote", tx.Slot, r.Id, slotList(sampled))
		}
	}
	return func() {
		st.stat(tx.Slot).ValidationsDone++
		if m.Valid {
			setBit(r.ValidVotes, tx.Slot)
		} else {
			setBit(r.InvalidVotes, tx.Slot)
		}
		if r.Status == sessionpb.InferenceStatus_INFERENCE_STATUS_FINISHED {
			if m.Valid {
				// Every sampled slot must agree; one that has not voted
				// leaves the record to seal as FINISHED after its grace.
				if allVoted(r.ValidVotes, sampled) {
					st.resolveValidated(r)
				}
				return
			}
			// A sampled slot disagreeing opens a challenge that every
			// eligible slot may vote on.
			r.Status = sessionpb.InferenceStatus_INFERENCE_STATUS_CHALLENGED
			removeSorted(&st.sealQueue, r.Id)
		}
		st.tally(r)
	}, nil
}

// tally resolves a challenged inference once its votes decide it
// (challengeOutcome).
func (st *staged) tally(r *sessionpb.InferenceRecord) {
	switch challengeOutcome(st.s.group, r) {
	case sessionpb.InferenceStatus_INFERENCE_STATUS_INVALIDATED:
		st.resolveInvalidated(r)
	case sessionpb.InferenceStatus_INFERENCE_STATUS_VALIDATED:
		st.resolveValidated(r)
	}
}

func (st *staged) resolveValidated(r *sessionpb.InferenceRecord) {
	r.Status = sessionpb.InferenceStatus_INFERENCE_STATUS_VALIDATED
	st.stat(r.ExecutorSlot).Validated++
	st.terminal = append(st.terminal, r.Id)
}

// resolveInvalidated refunds the charged cost to the escrow and counts the
// inference against its executor instead of as finished work.
func (st *staged) resolveInvalidated(r *sessionpb.InferenceRecord) {
	r.Status = sessionpb.InferenceStatus_INFERENCE_STATUS_INVALIDATED
	hs := st.stat(r.ExecutorSlot)
	hs.Cost -= r.Cost
	hs.Finished--
	hs.Invalid++
	st.balance += r.Cost
	st.terminal = append(st.terminal, r.Id)
}

func (st *staged) timeout(i int, tx *sessionpb.Tx, r *sessionpb.InferenceRecord) (func(), error) {
	if !open(r.Status) {
		return nil, st.fail(i, ReasonStatus, "TimeoutInference needs inference %d PENDING or STARTED, it is %s", r.Id, r.Status)
	}
	if err := st.voter(i, tx.Slot, r, "timeout", r.TimeoutVotes); err != nil {
		return nil, err
	}
	return func() {
		setBit(r.TimeoutVotes, tx.Slot)
		if timedOut(st.s.group, r) {
			r.Status = sessionpb.InferenceStatus_INFERENCE_STATUS_TIMED_OUT
			st.release(r)
			st.stat(r.ExecutorSlot).Missed++
			st.terminal = append(st.terminal, r.Id)
		}
	}, nil
}

// release returns an open record's reservation to the balance.
func (st *staged) release(r *sessionpb.InferenceRecord) {
	st.reserved -= r.Reserved
	st.balance += r.Reserved
}

func hasBit(b []byte, i uint32) bool { return b[i/8]&(1<<(i%8)) != 0 }
func setBit(b []byte, i uint32)      { b[i/8] |= 1 << (i % 8) }

func popcount(b []byte) int {
	n := 0
	for _, x := range b {
		n += bits.OnesCount8(x)
	}
	return n
}

func insertSorted(q *[]uint64, id uint64) {
	at, found := slices.BinarySearch(*q, id)
	if !found {
		*q = slices.Insert(*q, at, id)
	}
}

func removeSorted(q *[]uint64, id uint64) {
	if at, found := slices.BinarySearch(*q, id); found {
		*q = slices.Delete(*q, at, at+1)
	}
}
