// Package signing holds the secp256k1 keys devshard signs with. They are the
// chain's account keys: a signature is 64 bytes (r||s, low-S) over the
// SHA-256 of the message, and an address is RIPEMD-160(SHA-256(compressed
// public key)), exactly as Cosmos SDK accounts use them, so a host can sign
// session messages with the same key (or keyring) that holds its funds.
//
// The package signs and verifies bytes; what those bytes are, and their
// domain separation, belongs to the caller (see package session).
package signing

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
	"golang.org/x/crypto/ripemd160" //nolint:staticcheck // Cosmos addresses are defined with RIPEMD-160.
)

// Sizes of the encoded forms.
const (
	AddressSize   = 20
	PubKeySize    = 33
	SignatureSize = 64
	PrivKeySize   = 32
)

// Address is an account address: RIPEMD-160(SHA-256(compressed pubkey)).
type Address [AddressSize]byte

// AddressFromBytes copies b into an Address. It fails unless len(b) is 20.
func AddressFromBytes(b []byte) (Address, error) {
	var a Address
	if len(b) != AddressSize {
		return a, fmt.Errorf("address must be %d bytes, got %d", AddressSize, len(b))
	}
	copy(a[:], b)
	return a, nil
}

// Bytes returns a fresh copy of the address bytes.
func (a Address) Bytes() []byte { return append([]byte(nil), a[:]...) }

// String is the lowercase hex form; the chain renders addresses in bech32.
func (a Address) String() string { return hex.EncodeToString(a[:]) }

// PrivKey is a secp256k1 private key, with its public key derived once:
// every signed tx and state signature carries it.
type PrivKey struct {
	key *secp256k1.PrivateKey
	pub PubKey
}

func newPrivKey(k *secp256k1.PrivateKey) *PrivKey {
	p := &PrivKey{key: k}
	copy(p.pub[:], k.PubKey().SerializeCompressed())
	return p
}

// GenerateKey draws a new key from r (crypto/rand.Reader in production).
func GenerateKey(r io.Reader) (*PrivKey, error) {
	k, err := secp256k1.GeneratePrivateKeyFromRand(r)
	if err != nil {
		return nil, fmt.Errorf("generate secp256k1 key: %w", err)
	}
	return newPrivKey(k), nil
}

// PrivKeyFromBytes loads a 32-byte secret scalar.
func PrivKeyFromBytes(b []byte) (*PrivKey, error) {
	if len(b) != PrivKeySize {
		return nil, fmt.Errorf("private key must be %d bytes, got %d", PrivKeySize, len(b))
	}
	var s secp256k1.ModNScalar
	if overflow := s.SetByteSlice(b); overflow || s.IsZero() {
		return nil, errors.New("private key is not a valid secp256k1 scalar")
	}
	return newPrivKey(secp256k1.NewPrivateKey(&s)), nil
}

// Bytes returns the 32-byte secret scalar.
func (k *PrivKey) Bytes() []byte { return k.key.Serialize() }

// PubKey returns the compressed public key.
func (k *PrivKey) PubKey() PubKey { return k.pub }

// Address returns the account address of the key.
func (k *PrivKey) Address() Address { return k.PubKey().Address() }

// Signer is anything that holds a key: an in-memory PrivKey, or a keyring
// entry whose Sign may fail.
type Signer interface {
	PubKey() PubKey
	Sign(msg []byte) ([]byte, error)
}

// Sign returns the 64-byte r||s signature over SHA-256(msg). It never fails;
// the error is there to satisfy Signer.
func (k *PrivKey) Sign(msg []byte) ([]byte, error) { return k.SignBytes(msg), nil }

// SignBytes returns the 64-byte r||s signature over SHA-256(msg). RFC 6979
// makes it deterministic, and the result is always low-S.
func (k *PrivKey) SignBytes(msg []byte) []byte {
	h := sha256.Sum256(msg)
	sig := ecdsa.Sign(k.key, h[:])
	r, s := sig.R(), sig.S()
	out := make([]byte, SignatureSize)
	r.PutBytesUnchecked(out[:32])
	s.PutBytesUnchecked(out[32:])
	return out
}

// PubKey is a 33-byte compressed secp256k1 public key.
type PubKey [PubKeySize]byte

// PubKeyFromBytes copies b into a PubKey after checking it is on the curve.
func PubKeyFromBytes(b []byte) (PubKey, error) {
	var p PubKey
	if len(b) != PubKeySize {
		return p, fmt.Errorf("public key must be %d bytes (compressed), got %d", PubKeySize, len(b))
	}
	if _, err := secp256k1.ParsePubKey(b); err != nil {
		return p, fmt.Errorf("public key is not on secp256k1: %w", err)
	}
	copy(p[:], b)
	return p, nil
}

// Address is RIPEMD-160(SHA-256(p)).
func (p PubKey) Address() Address {
	h := sha256.Sum256(p[:])
	r := ripemd160.New()
	r.Write(h[:])
	var a Address
	copy(a[:], r.Sum(nil))
	return a
}

// Errors returned by Verify. They are sentinel values so callers can wrap
// them with context (which slot, which message) and still match them.
var (
	ErrBadPubKey    = errors.New("malformed public key")
	ErrBadSignature = errors.New("malformed signature")
	ErrHighS        = errors.New("signature is not low-S")
	ErrMismatch     = errors.New("signature does not verify")
)

// Verify checks sig (64-byte r||s) over SHA-256(msg) with the compressed
// public key pub. High-S signatures are rejected so a signature has exactly
// one valid encoding, as on the chain. A key whose signatures have passed
// often is checked through its precomputed table (keytable.go): faster,
// with the same outcome.
func Verify(pub, msg, sig []byte) error {
	// A key with a table passed its checks before, so it is well formed.
	table := tables.get(pub)
	var key *secp256k1.PublicKey
	if table == nil {
		var err error
		if key, err = secp256k1.ParsePubKey(pub); err != nil || len(pub) != PubKeySize {
			return ErrBadPubKey
		}
	}
	if len(sig) != SignatureSize {
		return fmt.Errorf("%w: want %d bytes, got %d", ErrBadSignature, SignatureSize, len(sig))
	}
	var r, s secp256k1.ModNScalar
	if r.SetByteSlice(sig[:32]) || r.IsZero() || s.SetByteSlice(sig[32:]) || s.IsZero() {
		return ErrBadSignature
	}
	if s.IsOverHalfOrder() {
		return ErrHighS
	}
	curveChecks.Add(1)
	if table != nil {
		if !table.verify(&r, &s, msg) {
			return ErrMismatch
		}
		return nil
	}
	if !verifyCurve(key, &r, &s, pub, msg, sig) {
		return ErrMismatch
	}
	tables.passed(pub, key)
	return nil
}

// curveChecks counts the signatures Verify checked on the curve.
var curveChecks atomic.Uint64

// CurveChecks is how many signatures this process has checked on the curve
// (Verify's costly part), whatever the outcome. A memo hit is not one.
func CurveChecks() uint64 { return curveChecks.Load() }

// verifyPureGo is the curve check of Verify in pure Go (decred secp256k1).
func verifyPureGo(key *secp256k1.PublicKey, r, s *secp256k1.ModNScalar, msg []byte) bool {
	h := sha256.Sum256(msg)
	return ecdsa.NewSignature(r, s).Verify(h[:], key)
}
