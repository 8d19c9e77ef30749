package gateway

import (
	"log/slog"
	"sync"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
)

// signatures collects the members' state signatures over the root of the
// latest sequenced diff, which the settlement needs. Members answer every
// diff they take with their signatures; only those over the latest root
// are kept, and they are verified only when a settlement asks for a
// quorum, so collecting costs the request path no curve operation.
//
// mu guards set; it is held only inside these methods.
type signatures struct {
	mu  sync.Mutex
	set *session.SignatureSet
}

// newSignatures collects signatures for snap's escrow over root at nonce;
// auth decides which warm keys may sign for a slot. A signature that
// fails verification is logged on log and dropped.
func newSignatures(snap *sessionpb.EscrowSnapshot, auth session.Authorizer, nonce uint64, root []byte, log *slog.Logger) *signatures {
	set := session.NewSignatureSet(snap, nonce, root, auth)
	set.Dropped = func(slot uint32, err error) {
		log.Warn("dropped a bad state signature", "escrow", snap.EscrowId, "slot", slot, "err", err)
	}
	return &signatures{set: set}
}

// expect makes the diff at nonce, whose post-state root is root, the one
// whose signatures are kept. The signatures of an earlier nonce are
// forgotten; those already kept for nonce stay.
func (s *signatures) expect(nonce uint64, root []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.set.Nonce() != nonce {
		s.set.Reset(nonce, root)
	}
}

// absorb takes a member's answer to the diff at nonce: its state
// signatures, undecoded, kept while that diff is the latest. A signature
// that does not decode or is over anything else is ignored: the member
// signs again when the final diff is sent once more.
func (s *signatures) absorb(nonce uint64, raws [][]byte) {
	if len(raws) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if nonce != s.set.Nonce() {
		return
	}
	for _, raw := range raws {
		if ss, err := session.DecodeStateSignature(raw); err == nil {
			_ = s.set.Add(ss)
		}
	}
}

// quorum verifies the signatures kept, drops the bad ones, and reports
// whether the good ones make a settlement quorum.
func (s *signatures) quorum() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.set.Quorum()
}

// signed counts the slots whose signature over the latest root arrived.
func (s *signatures) signed() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.set.Len()
}

// attach adds the verified signatures to m, the settlement of the latest
// root, in the order a settlement lists them. Call quorum first.
func (s *signatures) attach(m *sessionpb.Settlement) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.set.Attach(m)
}
