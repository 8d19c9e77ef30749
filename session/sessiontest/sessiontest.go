// Package sessiontest builds signed sessions for tests: a fixture of keys and
// an escrow snapshot, and a scripted sequencer that plays the gateway. It is
// deterministic for a given seed. Host, chain and gateway tests use it to
// produce real, signed diffs and settlements without a network.
package sessiontest

import (
	"crypto/sha256"
	"fmt"
	"math/rand"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
)

// Fixture holds the keys of one escrow's creator and group.
type Fixture struct {
	Gateway  *signing.PrivKey
	Hosts    []*signing.PrivKey // one key per distinct participant
	Holders  []int              // slot i is held by Hosts[Holders[i]]
	Snapshot *sessionpb.EscrowSnapshot
}

// ChainID is the chain id of fixtures whose options name none.
const ChainID = "devshard-test"

// Options shape a fixture's snapshot.
type Options struct {
	ChainID          string // empty: ChainID
	EscrowID         uint64
	Amount           uint64
	Holders          []int // slot -> participant index; default: 3 slots, 3 participants
	TokenPrice       uint64
	CreationFee      uint64
	FeePerNonce      uint64
	MaxNonce         uint64
	SealGraceNonces  uint64
	SealGraceSeconds uint64
	// ValidationRateBps is the share of eligible slots sampled to validate
	// each finished inference; 10000 samples every one.
	ValidationRateBps uint32
}

// DefaultOptions are small, round numbers that make test arithmetic easy.
func DefaultOptions() Options {
	return Options{
		EscrowID:         7,
		Amount:           10_000_000,
		Holders:          []int{0, 1, 2},
		TokenPrice:       10,
		CreationFee:      1000,
		FeePerNonce:      3,
		MaxNonce:         1_000_000,
		SealGraceNonces:  150,
		SealGraceSeconds: 30,

		ValidationRateBps: 1000,
	}
}

// New builds a fixture with keys derived from seed.
func New(seed int64, o Options) *Fixture {
	rng := rand.New(rand.NewSource(seed))
	key := func() *signing.PrivKey {
		k, err := signing.GenerateKey(rng)
		if err != nil {
			panic(err)
		}
		return k
	}
	f := &Fixture{Gateway: key(), Holders: o.Holders}
	parts := 0
	for _, h := range o.Holders {
		parts = max(parts, h+1)
	}
	for range parts {
		f.Hosts = append(f.Hosts, key())
	}
	gw := f.Gateway.Address()
	if o.ChainID == "" {
		o.ChainID = ChainID
	}
	f.Snapshot = &sessionpb.EscrowSnapshot{
		ChainId:                 o.ChainID,
		EscrowId:                o.EscrowID,
		Creator:                 gw.Bytes(),
		Amount:                  o.Amount,
		Epoch:                   1,
		TokenPrice:              o.TokenPrice,
		CreationFee:             o.CreationFee,
		FeePerNonce:             o.FeePerNonce,
		MaxNonce:                o.MaxNonce,
		SealGraceNonces:         o.SealGraceNonces,
		SealGraceSeconds:        o.SealGraceSeconds,
		ExecutionTimeoutSeconds: 60,
		ValidationRateBps:       o.ValidationRateBps,
		ProtocolVersion:         session.ProtocolVersion,
	}
	for _, h := range o.Holders {
		a := f.Hosts[h].Address()
		f.Snapshot.Group = append(f.Snapshot.Group, a.Bytes())
	}
	return f
}

// SlotKey is the key of the participant holding slot.
func (f *Fixture) SlotKey(slot uint32) *signing.PrivKey { return f.Hosts[f.Holders[slot]] }

// NewSession starts a replica of the fixture's session.
func (f *Fixture) NewSession(auth session.Authorizer) *session.Session {
	s, err := session.New(f.Snapshot, auth)
	if err != nil {
		panic(err)
	}
	return s
}

// Hash is a stand-in prompt or response hash.
func Hash(parts ...any) []byte {
	h := sha256.Sum256(fmt.Append(nil, parts...))
	return h[:]
}

// Start is the gateway's StartInference for nonce id.
func Start(id, in, maxTokens uint64) *sessionpb.Tx {
	return &sessionpb.Tx{Body: &sessionpb.Tx_Start{Start: &sessionpb.StartInference{
		InferenceId: id, InputTokens: in, MaxTokens: maxTokens, PromptHash: Hash("prompt", id), Model: "test-model",
	}}}
}

// Finalize is the gateway's FinalizeRound.
func Finalize() *sessionpb.Tx {
	return &sessionpb.Tx{Body: &sessionpb.Tx_Finalize{Finalize: &sessionpb.FinalizeRound{}}}
}

// Signed signs tx for slot with the key holding that slot.
func (f *Fixture) Signed(slot uint32, tx *sessionpb.Tx) *sessionpb.Tx {
	return f.SignedBy(f.SlotKey(slot), slot, tx)
}

// SignedBy signs tx for slot with any key: for forgeries and warm keys.
func (f *Fixture) SignedBy(k signing.Signer, slot uint32, tx *sessionpb.Tx) *sessionpb.Tx {
	tx.Slot = slot
	if err := session.SignTx(k, f.Snapshot.ChainId, f.Snapshot.EscrowId, tx); err != nil {
		panic(err)
	}
	return tx
}

// Confirm is the executor's ConfirmStart, signed.
func (f *Fixture) Confirm(slot uint32, id uint64, at int64) *sessionpb.Tx {
	return f.Signed(slot, &sessionpb.Tx{Body: &sessionpb.Tx_Confirm{Confirm: &sessionpb.ConfirmStart{InferenceId: id, ConfirmedAt: at}}})
}

// Finish is the executor's FinishInference, signed.
func (f *Fixture) Finish(slot uint32, id, in, out uint64) *sessionpb.Tx {
	return f.Signed(slot, &sessionpb.Tx{Body: &sessionpb.Tx_Finish{Finish: &sessionpb.FinishInference{
		InferenceId: id, InputTokens: in, OutputTokens: out, ResponseHash: Hash("response", id),
	}}})
}

// Validate is a validator's vote, signed.
func (f *Fixture) Validate(slot uint32, id uint64, valid bool) *sessionpb.Tx {
	return f.Signed(slot, &sessionpb.Tx{Body: &sessionpb.Tx_Validation{Validation: &sessionpb.Validation{
		InferenceId: id, Valid: valid, ResponseHash: Hash("response", id),
	}}})
}

// Timeout is a timeout vote, signed.
func (f *Fixture) Timeout(slot uint32, id uint64) *sessionpb.Tx {
	return f.Signed(slot, &sessionpb.Tx{Body: &sessionpb.Tx_Timeout{Timeout: &sessionpb.TimeoutInference{InferenceId: id}}})
}

// Sequencer plays an honest gateway: it keeps its own replica, fills in the
// post-state root and signs every diff it builds.
type Sequencer struct {
	F       *Fixture
	Replica *session.Session
}

// Sequencer starts a gateway replica.
func (f *Fixture) Sequencer() *Sequencer {
	return &Sequencer{F: f, Replica: f.NewSession(nil)}
}

// Build makes the next diff from txs, signed, without applying it.
func (q *Sequencer) Build(txs ...*sessionpb.Tx) (*sessionpb.Diff, error) {
	d := &sessionpb.Diff{EscrowId: q.F.Snapshot.EscrowId, Nonce: q.Replica.Nonce() + 1, Txs: txs}
	root, err := q.Replica.Next(d)
	if err != nil {
		return nil, err
	}
	d.PostStateRoot = root[:]
	if err := session.SignDiff(q.F.Gateway, q.F.Snapshot.ChainId, d); err != nil {
		return nil, err
	}
	return d, nil
}

// Next builds the next diff and applies it to the gateway's replica.
func (q *Sequencer) Next(txs ...*sessionpb.Tx) (*sessionpb.Diff, error) {
	d, err := q.Build(txs...)
	if err != nil {
		return nil, err
	}
	if _, err := q.Replica.Apply(d); err != nil {
		return nil, err
	}
	return d, nil
}

// Settle builds a settlement of s's current state signed by the given slots.
func (f *Fixture) Settle(s *session.Session, slots ...uint32) *sessionpb.Settlement {
	m := s.Settlement()
	for _, slot := range slots {
		ss, err := session.SignState(f.SlotKey(slot), f.Snapshot.ChainId, m.EscrowId, m.Nonce, m.StateRoot, slot)
		if err != nil {
			panic(err)
		}
		m.Signatures = append(m.Signatures, &sessionpb.SlotSignature{Slot: slot, Sig: ss.Sig})
	}
	return m
}

// AllSlots lists every slot of the fixture's group.
func (f *Fixture) AllSlots() []uint32 {
	out := make([]uint32, len(f.Holders))
	for i := range out {
		out[i] = uint32(i)
	}
	return out
}

// Timestamp is a deterministic confirmed_at for inference id: one second
// per nonce from a fixed epoch.
func Timestamp(id uint64) int64 { return 1_700_000_000 + int64(id) }
