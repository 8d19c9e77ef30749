package session

import (
	"fmt"
	"slices"

	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
)

// ProtocolVersion is the session protocol this package implements. An
// escrow snapshot names the version its session runs.
const ProtocolVersion = 2

// Limits that keep one diff's work bounded.
const (
	MaxGroupSize  = 256
	MaxTxsPerDiff = 1024
	MaxChainIDLen = 50        // CometBFT's limit on a chain id
	MaxNonceLimit = 1<<32 - 1 // inference ids index a depth-32 tree
	hashSize      = 32
	maxModelLen   = 256
)

// Session is one replica's view of an escrow's session. Apply moves it
// forward one diff at a time; State and Restore save and load it.
type Session struct {
	snap    *sessionpb.EscrowSnapshot
	group   []signing.Address
	creator signing.Address
	auth    Authorizer
	memo    *signing.Memo // host tx signatures already checked; nil checks every one

	nonce        uint64
	phase        sessionpb.Phase
	activeNonces uint64
	balance      uint64
	reserved     uint64
	fees         uint64
	stats        []sessionpb.HostStats
	statLeaves   [][32]byte
	live         map[uint64]*sessionpb.InferenceRecord
	sealQueue    []uint64 // ids of FINISHED records, ascending: candidates for sealing
	tree         *recordTree
	sealedCount  uint64
	sealedDigest [32]byte
	root         [32]byte
}

// ValidateSnapshot checks that an escrow snapshot can run a session.
func ValidateSnapshot(snap *sessionpb.EscrowSnapshot) error {
	bad := func(format string, args ...any) error {
		return &StateError{Reason: ReasonMalformed, Detail: "escrow snapshot: " + fmt.Sprintf(format, args...)}
	}
	if snap == nil {
		return bad("missing")
	}
	if len(snap.Creator) != signing.AddressSize {
		return bad("creator must be a %d-byte address, got %d bytes", signing.AddressSize, len(snap.Creator))
	}
	if n := len(snap.Group); n == 0 || n > MaxGroupSize {
		return bad("group must have 1 to %d slots, got %d", MaxGroupSize, n)
	}
	for i, a := range snap.Group {
		if len(a) != signing.AddressSize {
			return bad("slot %d address must be %d bytes, got %d", i, signing.AddressSize, len(a))
		}
	}
	if n := len(snap.ChainId); n == 0 || n > MaxChainIDLen {
		return bad("chain id must be 1 to %d bytes, got %d; every signature names it", MaxChainIDLen, n)
	}
	if snap.ProtocolVersion != ProtocolVersion {
		return bad("protocol version %d is not supported (this build runs version %d)", snap.ProtocolVersion, ProtocolVersion)
	}
	if snap.TokenPrice == 0 {
		return bad("token price must be positive")
	}
	if snap.CreationFee > snap.Amount {
		return bad("creation fee %d exceeds the amount %d", snap.CreationFee, snap.Amount)
	}
	if snap.MaxNonce == 0 || snap.MaxNonce > MaxNonceLimit {
		return bad("max nonce must be 1 to %d, got %d", uint64(MaxNonceLimit), snap.MaxNonce)
	}
	if snap.ValidationRateBps > 10000 {
		return bad("validation rate must be at most 10000 bps, got %d", snap.ValidationRateBps)
	}
	return nil
}

// UseMemo makes the session check host tx signatures through memo, so
// that txs the caller checked on arrival (VerifyHostTxWith, the same memo)
// or signed itself (Memo.Remember) cost a hash in a diff instead of a
// verification. The outcome of every check is the same with or without it.
func (s *Session) UseMemo(memo *signing.Memo) { s.memo = memo }

// New starts a session at nonce 0 from the escrow snapshot. The creation fee
// is charged here, at session start.
func New(snap *sessionpb.EscrowSnapshot, auth Authorizer) (*Session, error) {
	if err := ValidateSnapshot(snap); err != nil {
		return nil, err
	}
	s := newEmpty(snap, auth)
	s.phase = sessionpb.Phase_PHASE_ACTIVE
	s.fees = snap.CreationFee
	s.balance = snap.Amount - snap.CreationFee
	s.refreshDerived()
	return s, nil
}

func newEmpty(snap *sessionpb.EscrowSnapshot, auth Authorizer) *Session {
	s := &Session{
		snap:  cloneSnapshot(snap),
		auth:  auth,
		stats: make([]sessionpb.HostStats, len(snap.Group)),
		live:  make(map[uint64]*sessionpb.InferenceRecord),
		tree:  newRecordTree(),
	}
	s.creator, _ = signing.AddressFromBytes(snap.Creator)
	s.group = make([]signing.Address, len(snap.Group))
	for i, a := range snap.Group {
		s.group[i], _ = signing.AddressFromBytes(a)
	}
	return s
}

// refreshDerived rebuilds every cache (stat leaves, tree, seal queue, root)
// from the primary fields. Used at start and after Restore.
func (s *Session) refreshDerived() {
	s.statLeaves = make([][32]byte, len(s.stats))
	for i := range s.stats {
		s.statLeaves[i] = statsLeaf(uint32(i), &s.stats[i])
	}
	leaves := make(map[uint64][32]byte, len(s.live))
	s.sealQueue = s.sealQueue[:0]
	for id, r := range s.live {
		leaves[id] = recordLeaf(r)
		if r.Status == sessionpb.InferenceStatus_INFERENCE_STATUS_FINISHED {
			s.sealQueue = append(s.sealQueue, id)
		}
	}
	slices.Sort(s.sealQueue)
	s.tree = newRecordTree()
	s.tree.apply(planTree(s.tree, leaves))
	s.root = s.parts(statsDigest(s.statLeaves), s.tree.root()).root()
}

func (s *Session) parts(stats, records [32]byte) *rootParts {
	return &rootParts{
		escrowID:        s.snap.EscrowId,
		protocolVersion: s.snap.ProtocolVersion,
		nonce:           s.nonce,
		phase:           s.phase,
		activeNonces:    s.activeNonces,
		balance:         s.balance,
		reserved:        s.reserved,
		fees:            s.fees,
		stats:           stats,
		records:         records,
		sealedCount:     s.sealedCount,
		sealedDigest:    s.sealedDigest,
	}
}

// Root is the state root after the latest applied diff.
func (s *Session) Root() [32]byte { return s.root }

// Nonce is the latest applied nonce (0 before any diff).
func (s *Session) Nonce() uint64 { return s.nonce }

// Phase is the session's phase.
func (s *Session) Phase() sessionpb.Phase { return s.phase }

// Balance is what the gateway can still reserve.
func (s *Session) Balance() uint64 { return s.balance }

// Snapshot returns a copy of the escrow snapshot the session runs on.
func (s *Session) Snapshot() *sessionpb.EscrowSnapshot { return cloneSnapshot(s.snap) }

// Executor is the slot that executes inference id.
func (s *Session) Executor(id uint64) uint32 { return uint32(id % uint64(len(s.group))) }

// Record returns a copy of live record id, if it is live.
func (s *Session) Record(id uint64) (*sessionpb.InferenceRecord, bool) {
	r, ok := s.live[id]
	if !ok {
		return nil, false
	}
	return cloneRecord(r), true
}

// LiveCount is the number of records not yet sealed.
func (s *Session) LiveCount() int { return len(s.live) }

// SealedCount is the number of records sealed so far: one row each in a
// host's sealed-inference index.
func (s *Session) SealedCount() uint64 { return s.sealedCount }

// Clock is the state clock: the lower median of the slots' latest
// confirmed_at values, over slots that reported one. It is 0 (undefined)
// until some executor confirmed an inference. A single executor lying about
// time cannot move it while others report honestly.
func (s *Session) Clock() int64 { return clock(s.stats) }

func clock(stats []sessionpb.HostStats) int64 {
	var buf [MaxGroupSize]int64
	ts := buf[:0]
	for i := range stats {
		if t := stats[i].LastConfirmedAt; t > 0 {
			ts = append(ts, t)
		}
	}
	if len(ts) == 0 {
		return 0
	}
	slices.Sort(ts)
	return ts[(len(ts)-1)/2]
}

// State returns a deep copy of the session state, ready to store.
func (s *Session) State() *sessionpb.SessionState {
	st := &sessionpb.SessionState{
		EscrowId:        s.snap.EscrowId,
		ProtocolVersion: s.snap.ProtocolVersion,
		Nonce:           s.nonce,
		Phase:           s.phase,
		ActiveNonces:    s.activeNonces,
		Balance:         s.balance,
		Reserved:        s.reserved,
		Fees:            s.fees,
		HostStats:       s.statsCopy(),
		Live:            make([]*sessionpb.InferenceRecord, 0, len(s.live)),
		Sealed:          s.sealedCopy(),
	}
	for _, id := range s.sortedLiveIDs() {
		st.Live = append(st.Live, cloneRecord(s.live[id]))
	}
	return st
}

func (s *Session) sortedLiveIDs() []uint64 {
	ids := make([]uint64, 0, len(s.live))
	for id := range s.live {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Restore loads a state saved by State. It checks the state's invariants
// (books add up, records are well-formed) before trusting it.
func Restore(snap *sessionpb.EscrowSnapshot, st *sessionpb.SessionState, auth Authorizer) (*Session, error) {
	if err := ValidateSnapshot(snap); err != nil {
		return nil, err
	}
	bad := func(format string, args ...any) error {
		return &StateError{Reason: ReasonState, Detail: fmt.Sprintf(format, args...)}
	}
	if st == nil {
		return nil, bad("missing")
	}
	if st.EscrowId != snap.EscrowId || st.ProtocolVersion != snap.ProtocolVersion {
		return nil, bad("state is for escrow %d v%d, snapshot for escrow %d v%d", st.EscrowId, st.ProtocolVersion, snap.EscrowId, snap.ProtocolVersion)
	}
	if len(st.HostStats) != len(snap.Group) {
		return nil, bad("%d host stats for a group of %d", len(st.HostStats), len(snap.Group))
	}
	if st.Phase < sessionpb.Phase_PHASE_ACTIVE || st.Phase > sessionpb.Phase_PHASE_SETTLEMENT {
		return nil, bad("unknown phase %d", st.Phase)
	}
	if st.Nonce > snap.MaxNonce || st.ActiveNonces > st.Nonce {
		return nil, bad("nonce %d (active %d) outside max nonce %d", st.Nonce, st.ActiveNonces, snap.MaxNonce)
	}
	if st.Sealed == nil || len(st.Sealed.Digest) != hashSize {
		return nil, bad("sealed accumulator missing or malformed")
	}
	s := newEmpty(snap, auth)
	s.nonce, s.phase, s.activeNonces = st.Nonce, st.Phase, st.ActiveNonces
	s.balance, s.reserved, s.fees = st.Balance, st.Reserved, st.Fees
	s.sealedCount = st.Sealed.Count
	copy(s.sealedDigest[:], st.Sealed.Digest)
	total := st.Balance
	var ok bool
	for _, v := range []uint64{st.Reserved, st.Fees} {
		if total, ok = add(total, v); !ok {
			return nil, bad("books overflow")
		}
	}
	for i, hs := range st.HostStats {
		if hs == nil {
			return nil, bad("host stats %d missing", i)
		}
		s.stats[i] = *hs
		if total, ok = add(total, hs.Cost); !ok {
			return nil, bad("books overflow")
		}
	}
	if total != snap.Amount {
		return nil, bad("books do not add up: balance+reserved+fees+costs = %d, escrow amount %d", total, snap.Amount)
	}
	var reserved uint64
	prev := uint64(0)
	for i, r := range st.Live {
		if err := checkRecord(s, r); err != nil {
			return nil, bad("record %d: %v", i, err)
		}
		if i > 0 && r.Id <= prev {
			return nil, bad("live records not in ascending id order at %d", r.Id)
		}
		prev = r.Id
		if open(r.Status) {
			if reserved, ok = add(reserved, r.Reserved); !ok {
				return nil, bad("reservations overflow")
			}
		}
		s.live[r.Id] = cloneRecord(r)
	}
	if reserved != st.Reserved {
		return nil, bad("reserved %d does not match live reservations %d", st.Reserved, reserved)
	}
	s.refreshDerived()
	return s, nil
}

func checkRecord(s *Session, r *sessionpb.InferenceRecord) error {
	if r == nil {
		return fmt.Errorf("missing")
	}
	if r.Id == 0 || r.Id > s.nonce {
		return fmt.Errorf("id %d outside 1..%d", r.Id, s.nonce)
	}
	if r.ExecutorSlot != s.Executor(r.Id) {
		return fmt.Errorf("executor slot %d, expected %d", r.ExecutorSlot, s.Executor(r.Id))
	}
	if r.Status < sessionpb.InferenceStatus_INFERENCE_STATUS_PENDING || r.Status > sessionpb.InferenceStatus_INFERENCE_STATUS_FINISHED+1 {
		// Terminal records are sealed in the diff that made them terminal,
		// so only PENDING..CHALLENGED can be live.
		return fmt.Errorf("status %s cannot be live", r.Status)
	}
	// Sampling is drawn from the seed, so a stored record must carry one
	// exactly when it has finished.
	finished := r.Status == sessionpb.InferenceStatus_INFERENCE_STATUS_FINISHED || r.Status == sessionpb.InferenceStatus_INFERENCE_STATUS_CHALLENGED
	switch {
	case finished && len(r.SampleSeed) != hashSize:
		return fmt.Errorf("a %s record needs a %d-byte sample seed, got %d bytes", r.Status, hashSize, len(r.SampleSeed))
	case !finished && len(r.SampleSeed) != 0:
		return fmt.Errorf("a %s record has no sample seed yet, got %d bytes", r.Status, len(r.SampleSeed))
	}
	n := bitmapLen(len(s.group))
	for _, votes := range [][]byte{r.ValidVotes, r.InvalidVotes, r.TimeoutVotes} {
		if len(votes) != n {
			return fmt.Errorf("vote bitmaps must be %d bytes", n)
		}
		// Bits past the last slot would count as votes nobody cast.
		if pad := len(s.group) % 8; pad != 0 && votes[n-1]>>pad != 0 {
			return fmt.Errorf("vote bitmap has bits set past slot %d", len(s.group)-1)
		}
	}
	return nil
}

// open reports whether a record still holds a reservation.
func open(st sessionpb.InferenceStatus) bool {
	return st == sessionpb.InferenceStatus_INFERENCE_STATUS_PENDING || st == sessionpb.InferenceStatus_INFERENCE_STATUS_STARTED
}

func bitmapLen(slots int) int { return (slots + 7) / 8 }

func cloneRecord(r *sessionpb.InferenceRecord) *sessionpb.InferenceRecord {
	c := *r
	c.PromptHash = slices.Clone(r.PromptHash)
	c.ResponseHash = slices.Clone(r.ResponseHash)
	c.SampleSeed = slices.Clone(r.SampleSeed)
	c.ValidVotes = slices.Clone(r.ValidVotes)
	c.InvalidVotes = slices.Clone(r.InvalidVotes)
	c.TimeoutVotes = slices.Clone(r.TimeoutVotes)
	return &c
}

func cloneSnapshot(s *sessionpb.EscrowSnapshot) *sessionpb.EscrowSnapshot {
	c := *s
	c.Creator = slices.Clone(s.Creator)
	c.Group = make([][]byte, len(s.Group))
	for i, a := range s.Group {
		c.Group[i] = slices.Clone(a)
	}
	return &c
}

// Settlement returns the parts of the current root as a settlement message,
// without signatures.
func (s *Session) Settlement() *sessionpb.Settlement {
	st := &sessionpb.Settlement{
		EscrowId:        s.snap.EscrowId,
		Nonce:           s.nonce,
		Phase:           s.phase,
		ActiveNonces:    s.activeNonces,
		Balance:         s.balance,
		Reserved:        s.reserved,
		Fees:            s.fees,
		HostStats:       s.statsCopy(),
		Sealed:          s.sealedCopy(),
		ProtocolVersion: s.snap.ProtocolVersion,
	}
	r := s.tree.root()
	st.RecordsRoot = r[:]
	root := s.root
	st.StateRoot = root[:]
	return st
}

func (s *Session) statsCopy() []*sessionpb.HostStats {
	out := make([]*sessionpb.HostStats, len(s.stats))
	for i := range s.stats {
		c := s.stats[i]
		out[i] = &c
	}
	return out
}

func (s *Session) sealedCopy() *sessionpb.SealedAccumulator {
	return &sessionpb.SealedAccumulator{Count: s.sealedCount, Digest: append([]byte(nil), s.sealedDigest[:]...)}
}
