package signing

import (
	"bytes"
	"math/big"
	"math/rand"
	"testing"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/stretchr/testify/require"
)

// The table's multiplication is the library's: k·Q for scalars at the
// edges (0, 1, N−1, every window full) and at random.
func TestKeyTableMultipliesLikeTheLibrary(t *testing.T) {
	t.Parallel()
	key, err := secp256k1.ParsePubKey(pubOf(t, 21))
	require.NoError(t, err)
	table := newKeyTable(key)
	var q secp256k1.JacobianPoint
	key.AsJacobian(&q)

	scalars := []*secp256k1.ModNScalar{new(secp256k1.ModNScalar), new(secp256k1.ModNScalar).SetInt(1),
		new(secp256k1.ModNScalar).SetInt(1).Negate(), new(secp256k1.ModNScalar).SetInt(tableHalf),
		new(secp256k1.ModNScalar).SetInt(tableHalf - 1)}
	var ones [32]byte
	for i := range ones {
		ones[i] = 0xff
	}
	scalars = append(scalars, scalarOf(ones[:]))
	rng := rand.New(rand.NewSource(5))
	for range 200 {
		b := make([]byte, 32)
		rng.Read(b)
		scalars = append(scalars, scalarOf(b))
	}
	for i, k := range scalars {
		var want, got secp256k1.JacobianPoint
		secp256k1.ScalarMultNonConst(k, &q, &want)
		table.mulAdd(k, &got)
		want.ToAffine()
		got.ToAffine()
		require.True(t, want.X.Equals(&got.X) && want.Y.Equals(&got.Y), "scalar %d (%x)", i, k.Bytes())
	}
}

// A check through a key's table has the outcome of the ordinary check, for
// good signatures and for altered signatures, messages and keys.
func TestTableCheckAgreesWithOrdinaryCheck(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewSource(23))
	for i := range 40 {
		k := testKey(t, int64(1000+i))
		pub := k.PubKey()
		key, err := secp256k1.ParsePubKey(pub[:])
		require.NoError(t, err)
		table := newKeyTable(key)
		other := testKey(t, int64(2000+i))
		for j := range 5 {
			msg := make([]byte, 1+rng.Intn(300))
			rng.Read(msg)
			sig := k.SignBytes(msg)
			badSig := bytes.Clone(sig)
			badSig[rng.Intn(64)] ^= byte(1 + rng.Intn(255))
			for _, c := range []struct {
				name     string
				msg, sig []byte
			}{
				{"valid", msg, sig},
				{"altered signature", msg, badSig},
				{"altered message", append(bytes.Clone(msg), 1), sig},
				{"another key's signature", msg, other.SignBytes(msg)},
			} {
				var r, s secp256k1.ModNScalar
				if r.SetByteSlice(c.sig[:32]) || s.SetByteSlice(c.sig[32:]) || r.IsZero() || s.IsZero() {
					continue
				}
				want := verifyPureGo(key, &r, &s, c.msg)
				require.Equal(t, want, table.verify(&r, &s, c.msg), "key %d message %d: %s", i, j, c.name)
				if c.name == "valid" {
					require.True(t, want)
				}
			}
		}
	}
}

// The rare case x ≥ N: a point whose x is r+N satisfies the equation for
// r, through the r+N branch, whatever its Z; r itself does not, nor does
// an r for which r+N would pass P.
func TestCheckEquationTakesRPlusN(t *testing.T) {
	t.Parallel()
	n := secp256k1.Params().N
	p := secp256k1.Params().P
	var pt secp256k1.JacobianPoint
	var r secp256k1.ModNScalar
	for small := int64(1); ; small++ {
		x := new(big.Int).Add(n, big.NewInt(small))
		var fx, fy secp256k1.FieldVal
		fx.SetByteSlice(x.Bytes())
		if secp256k1.DecompressY(&fx, false, &fy) {
			pt = secp256k1.MakeJacobianPoint(&fx, fy.Normalize(), new(secp256k1.FieldVal).SetInt(1))
			r.SetInt(uint32(small))
			break
		}
	}
	require.True(t, checkEquation(&pt, &r), "affine")
	// The same point with Z = 3: X·9, Y·27.
	scaled := pt
	var z, z2, z3 secp256k1.FieldVal
	z.SetInt(3)
	z2.SquareVal(&z)
	z3.Mul2(&z2, &z)
	scaled.X.Mul(&z2).Normalize()
	scaled.Y.Mul(&z3).Normalize()
	scaled.Z.Set(&z)
	require.True(t, checkEquation(&scaled, &r), "Z = 3")
	neg := r
	neg.Negate() // −r is far above P−N, so r+N is not tried
	require.False(t, checkEquation(&pt, &neg))
	var inf secp256k1.JacobianPoint
	require.False(t, checkEquation(&inf, new(secp256k1.ModNScalar).SetInt(1)), "the point at infinity")
	require.Positive(t, p.Cmp(n))
}

// Verify gives a key its table once enough of its signatures passed, and
// through the table still refuses what it refused before.
func TestVerifyUsesATableOnceAKeyPassedOften(t *testing.T) {
	t.Parallel()
	k := testKey(t, 31)
	pub := k.PubKey()
	msg := []byte("diff 41 of escrow 7")
	sig := k.SignBytes(msg)
	require.Nil(t, tables.get(pub[:]))
	forged := bytes.Clone(sig)
	forged[40] ^= 0x10
	for range 2 * tableAfter {
		require.ErrorIs(t, Verify(pub[:], msg, forged), ErrMismatch)
	}
	require.Nil(t, tables.get(pub[:]), "failed checks earn no table")
	for range tableAfter {
		require.NoError(t, Verify(pub[:], msg, sig))
	}
	require.True(t, tables.get(pub[:]) != nil, "a table after %d passes", tableAfter)

	require.NoError(t, Verify(pub[:], msg, sig))
	require.ErrorIs(t, Verify(pub[:], msg, forged), ErrMismatch)
	require.ErrorIs(t, Verify(pub[:], []byte("diff 42 of escrow 7"), sig), ErrMismatch)
	require.ErrorIs(t, Verify(pub[:], msg, sig[:63]), ErrBadSignature)
	zeroR := bytes.Clone(sig)
	clear(zeroR[:32])
	require.ErrorIs(t, Verify(pub[:], msg, zeroR), ErrBadSignature)
	var s secp256k1.ModNScalar
	s.SetByteSlice(sig[32:])
	high := bytes.Clone(sig)
	s.Negate().PutBytesUnchecked(high[32:])
	require.ErrorIs(t, Verify(pub[:], msg, high), ErrHighS)
}

// The tables are bounded: past tableKeys keys, the least used goes.
func TestKeyTablesAreBounded(t *testing.T) {
	t.Parallel()
	c := &keyTables{tables: map[PubKey]*tableEntry{}, passes: map[PubKey]int{}}
	hot := pubOf(t, 40)
	hotKey, err := secp256k1.ParsePubKey(hot)
	require.NoError(t, err)
	for range tableAfter {
		c.passed(hot, hotKey)
	}
	require.True(t, c.get(hot) != nil)
	for i := range tableKeys {
		pub := pubOf(t, int64(41+i))
		key, err := secp256k1.ParsePubKey(pub)
		require.NoError(t, err)
		for range tableAfter {
			c.passed(pub, key)
		}
		c.get(hot) // the hot key stays in use
	}
	require.Len(t, c.tables, tableKeys)
	require.True(t, c.get(hot) != nil, "the key in use is kept")
	gone := 0
	for i := range tableKeys {
		if c.get(pubOf(t, int64(41+i))) == nil {
			gone++
		}
	}
	require.Equal(t, 1, gone, "one unused table made room")
}

// The table check and the ordinary one agree on whatever signature bytes
// come, for a key with a table.
func FuzzTableCheck(f *testing.F) {
	k, _ := GenerateKey(rand.New(rand.NewSource(77)))
	pub := k.PubKey()
	key, _ := secp256k1.ParsePubKey(pub[:])
	table := newKeyTable(key)
	f.Add([]byte("m"), k.SignBytes([]byte("m")))
	f.Fuzz(func(t *testing.T, msg, sig []byte) {
		if len(sig) != SignatureSize {
			return
		}
		var r, s secp256k1.ModNScalar
		if r.SetByteSlice(sig[:32]) || s.SetByteSlice(sig[32:]) || r.IsZero() || s.IsZero() {
			return
		}
		if verifyPureGo(key, &r, &s, msg) != table.verify(&r, &s, msg) {
			t.Fatalf("table and ordinary checks disagree on %x over %x", sig, msg)
		}
	})
}

// One check through a key's table against the ordinary check, and what a
// table costs to build.
func BenchmarkVerifyPaths(b *testing.B) {
	k := testKey(b, 6)
	msg := []byte("a message of ordinary length for a diff's sign bytes")
	sig := k.SignBytes(msg)
	pub := k.PubKey()
	key, _ := secp256k1.ParsePubKey(pub[:])
	var r, s secp256k1.ModNScalar
	r.SetByteSlice(sig[:32])
	s.SetByteSlice(sig[32:])
	table := newKeyTable(key)
	b.Run("ordinary", func(b *testing.B) {
		for b.Loop() {
			if !verifyCurve(key, &r, &s, pub[:], msg, sig) {
				b.Fatal("does not verify")
			}
		}
	})
	b.Run("table", func(b *testing.B) {
		for b.Loop() {
			if !table.verify(&r, &s, msg) {
				b.Fatal("does not verify")
			}
		}
	})
	b.Run("build", func(b *testing.B) {
		for b.Loop() {
			newKeyTable(key)
		}
	})
}

func pubOf(t testing.TB, seed int64) []byte {
	p := testKey(t, seed).PubKey()
	return p[:]
}

func scalarOf(b []byte) *secp256k1.ModNScalar {
	var s secp256k1.ModNScalar
	s.SetByteSlice(b)
	return &s
}
