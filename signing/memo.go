package signing

import "github.com/devshard/devshard/internal/recent"

// Memo remembers signatures that verified, so that one checked when it
// arrives costs only a hash when it is checked again later, inside a diff.
// The key binds the public key, the message and the signature, so a memo
// hit is exactly a repeat of a check that passed. It holds at most its
// capacity, forgetting the oldest first. A nil *Memo verifies every time.
// It is safe for concurrent use.
type Memo struct{ set *recent.Set }

// NewMemo returns a memo of at most limit signatures (at least 1).
func NewMemo(limit int) *Memo { return &Memo{set: recent.New(limit)} }

// Verify is Verify, answered from the memo when the same signature over the
// same message by the same key already verified.
func (m *Memo) Verify(pub, msg, sig []byte) error {
	if m == nil {
		return Verify(pub, msg, sig)
	}
	k := memoKey(pub, msg, sig)
	if m.set.Has(k) {
		return nil
	}
	if err := Verify(pub, msg, sig); err != nil {
		return err
	}
	m.set.Add(k)
	return nil
}

// Remember records a signature the caller made itself with the key of pub,
// so that its own signatures are never verified again. Do not pass it a
// signature from anyone else.
func (m *Memo) Remember(pub, msg, sig []byte) {
	if m != nil {
		m.set.Add(memoKey(pub, msg, sig))
	}
}

// Len is how many signatures the memo holds.
func (m *Memo) Len() int { return m.set.Len() }

// memoKey binds the key, the signature and the message.
func memoKey(pub, msg, sig []byte) [32]byte { return recent.KeyOf(pub, sig, msg) }
