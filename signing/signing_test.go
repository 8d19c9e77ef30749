package signing

import (
	"bytes"
	"encoding/hex"
	"math/rand"
	"testing"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/stretchr/testify/require"
)

func testKey(t testing.TB, seed int64) *PrivKey {
	t.Helper()
	k, err := GenerateKey(rand.New(rand.NewSource(seed)))
	require.NoError(t, err)
	return k
}

func TestSignVerify(t *testing.T) {
	t.Parallel()
	k := testKey(t, 1)
	msg := []byte("devshard")
	sig := k.SignBytes(msg)
	require.Len(t, sig, SignatureSize)
	pub := k.PubKey()
	require.NoError(t, Verify(pub[:], msg, sig))
	require.ErrorIs(t, Verify(pub[:], []byte("other"), sig), ErrMismatch)
	other := testKey(t, 2).PubKey()
	require.ErrorIs(t, Verify(other[:], msg, sig), ErrMismatch)
	require.Equal(t, sig, k.SignBytes(msg), "RFC 6979 signatures are deterministic")
}

func TestVerifyRejectsMalformed(t *testing.T) {
	t.Parallel()
	k := testKey(t, 3)
	msg := []byte("m")
	sig := k.SignBytes(msg)
	pub := k.PubKey()
	require.ErrorIs(t, Verify(pub[:5], msg, sig), ErrBadPubKey)
	require.ErrorIs(t, Verify(pub[:], msg, sig[:63]), ErrBadSignature)
	zero := make([]byte, 64)
	require.ErrorIs(t, Verify(pub[:], msg, zero), ErrBadSignature)
	overflow := bytes.Repeat([]byte{0xff}, 64)
	require.ErrorIs(t, Verify(pub[:], msg, overflow), ErrBadSignature)
}

// A high-S twin of a valid signature verifies mathematically; it must still be
// refused so that signatures are not malleable.
func TestVerifyRejectsHighS(t *testing.T) {
	t.Parallel()
	k := testKey(t, 4)
	msg := []byte("m")
	sig := k.SignBytes(msg)
	var s secp256k1.ModNScalar
	s.SetByteSlice(sig[32:])
	s.Negate()
	high := append([]byte(nil), sig[:32]...)
	sb := s.Bytes()
	high = append(high, sb[:]...)
	pub := k.PubKey()
	require.ErrorIs(t, Verify(pub[:], msg, high), ErrHighS)
}

// The address derivation must match Cosmos SDK secp256k1 accounts. The vector
// is the well-known key with secret scalar 1 (the generator point).
func TestAddressMatchesCosmosDerivation(t *testing.T) {
	t.Parallel()
	one := make([]byte, 32)
	one[31] = 1
	k, err := PrivKeyFromBytes(one)
	require.NoError(t, err)
	pub := k.PubKey()
	require.Equal(t, "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798", hex.EncodeToString(pub[:]))
	// RIPEMD160(SHA256(G compressed)), the Bitcoin/Cosmos hash160 of the generator.
	require.Equal(t, "751e76e8199196d454941c45d1b3a323f1433bd6", k.Address().String())
}

func TestKeyAndAddressParsing(t *testing.T) {
	t.Parallel()
	_, err := PrivKeyFromBytes(make([]byte, 31))
	require.ErrorContains(t, err, "32 bytes, got 31")
	_, err = PrivKeyFromBytes(make([]byte, 32))
	require.ErrorContains(t, err, "not a valid secp256k1 scalar")
	k := testKey(t, 5)
	k2, err := PrivKeyFromBytes(k.Bytes())
	require.NoError(t, err)
	require.Equal(t, k.PubKey(), k2.PubKey())
	pub := k.PubKey()
	p, err := PubKeyFromBytes(pub[:])
	require.NoError(t, err)
	require.Equal(t, pub, p)
	_, err = PubKeyFromBytes(make([]byte, 33))
	require.ErrorContains(t, err, "not on secp256k1")
	_, err = AddressFromBytes([]byte{1, 2})
	require.ErrorContains(t, err, "20 bytes, got 2")
}

func FuzzVerify(f *testing.F) {
	k, _ := GenerateKey(rand.New(rand.NewSource(9)))
	pub := k.PubKey()
	f.Add(pub[:], []byte("m"), k.SignBytes([]byte("m")))
	f.Fuzz(func(t *testing.T, pub, msg, sig []byte) {
		_ = Verify(pub, msg, sig)
	})
}

func BenchmarkVerify(b *testing.B) {
	k := testKey(b, 6)
	msg := []byte("a message of ordinary length for a diff's sign bytes")
	sig := k.SignBytes(msg)
	pub := k.PubKey()
	for b.Loop() {
		if err := Verify(pub[:], msg, sig); err != nil {
			b.Fatal(err)
		}
	}
}

// The build's curve check (pure Go, or libsecp256k1 with the
// libsecp256k1_sdk tag) takes exactly the signatures the pure-Go check
// takes: hosts built either way must agree on every diff.
func TestCurveCheckAgreesWithPureGo(t *testing.T) {
	t.Parallel()
	t.Logf("secp256k1: %s", Backend)
	rng := rand.New(rand.NewSource(11))
	other := testKey(t, 99).PubKey()
	for i := range 100 {
		k := testKey(t, int64(i))
		pub := k.PubKey()
		msg := make([]byte, 1+rng.Intn(200))
		rng.Read(msg)
		sig := k.SignBytes(msg)
		badSig := bytes.Clone(sig)
		badSig[rng.Intn(64)] ^= byte(1 + rng.Intn(255))
		badMsg := append(bytes.Clone(msg), 0)
		for _, c := range []struct {
			name          string
			pub, msg, sig []byte
		}{
			{"valid", pub[:], msg, sig},
			{"altered signature", pub[:], msg, badSig},
			{"altered message", pub[:], badMsg, sig},
			{"another key", other[:], msg, sig},
		} {
			key, err := secp256k1.ParsePubKey(c.pub)
			require.NoError(t, err)
			var r, s secp256k1.ModNScalar
			if r.SetByteSlice(c.sig[:32]) || s.SetByteSlice(c.sig[32:]) || r.IsZero() || s.IsZero() || s.IsOverHalfOrder() {
				require.Error(t, Verify(c.pub, c.msg, c.sig), "%s %d: malformed", c.name, i)
				continue
			}
			want := verifyPureGo(key, &r, &s, c.msg)
			require.Equal(t, want, verifyCurve(key, &r, &s, c.pub, c.msg, c.sig), "%s %d", c.name, i)
			require.Equal(t, want, Verify(c.pub, c.msg, c.sig) == nil, "%s %d", c.name, i)
			if c.name == "valid" {
				require.True(t, want)
			}
		}
	}
}

func BenchmarkSign(b *testing.B) {
	k := testKey(b, 6)
	msg := []byte("a message of ordinary length for a diff's sign bytes")
	for b.Loop() {
		_ = k.SignBytes(msg)
	}
}

// The public key is derived once, at construction; it must be the secret's.
func TestPubKeyIsTheSecretsOwn(t *testing.T) {
	t.Parallel()
	for seed := range int64(8) {
		k := testKey(t, seed+10)
		want := secp256k1.PrivKeyFromBytes(k.Bytes()).PubKey().SerializeCompressed()
		got := k.PubKey()
		require.Equal(t, want, got[:], "generated key %d", seed)
		loaded, err := PrivKeyFromBytes(k.Bytes())
		require.NoError(t, err)
		require.Equal(t, k.PubKey(), loaded.PubKey(), "loaded key %d", seed)
		require.Equal(t, k.PubKey().Address(), loaded.Address())
	}
}
