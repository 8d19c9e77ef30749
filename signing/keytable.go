package signing

import (
	"crypto/sha256"
	"sync"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
)

// An ECDSA check computes u1·G + u2·Q. The library has a precomputed table
// for the generator G, so u1·G is cheap, but u2·Q starts from nothing for
// every signature, and that is most of the check's time. A node checks the
// same few keys over and over (its gateway's, its group's), so for a key
// seen often enough it pays once for a table of Q's multiples and then
// computes u2·Q the way u1·G is computed: one addition per window of the
// scalar, no doublings. The result is the same equation, evaluated the
// same way in the end (see checkEquation), so a table changes how fast a
// signature is checked, never whether it passes.

// tableWindow is the width in bits of a scalar window. With signed digits
// a row holds 2^(w-1) points; 6 bits make 44 rows of 32 affine points
// (about 170 KB a key) and 44 additions per multiplication.
const tableWindow = 6

const (
	tableHalf = 1 << (tableWindow - 1)
	// tableRows covers 256 bits plus the carry the signed recoding may
	// push out of the top window.
	tableRows = (256+tableWindow-1)/tableWindow + 1
)

// keyTable holds rows[i][d-1] = d·2^(w·i)·Q for d = 1..2^(w-1), each
// point affine (Z = 1) so that adding it is the cheaper mixed addition.
type keyTable struct {
	rows [tableRows][tableHalf]secp256k1.JacobianPoint
}

// newKeyTable computes the table of key. It costs about as much as 25
// ordinary checks.
func newKeyTable(key *secp256k1.PublicKey) *keyTable {
	t := &keyTable{}
	var base secp256k1.JacobianPoint
	key.AsJacobian(&base)
	for i := range t.rows {
		row := &t.rows[i]
		row[0].Set(&base)
		for d := 1; d < tableHalf; d++ {
			secp256k1.AddNonConst(&row[d-1], &base, &row[d])
		}
		// The next row's base is 2^w times this one's: double the last
		// entry (2^(w-1)·base) once more.
		secp256k1.DoubleNonConst(&row[tableHalf-1], &base)
		base.ToAffine()
	}
	toAffineAll(t.rows[:])
	return t
}

// toAffineAll scales every point to Z = 1 with a single field inversion
// (Montgomery's trick: invert the product of all Z, then peel each Z^-1
// off it). Every Z must be non-zero, as it is for the multiples of a
// public key below the group order.
func toAffineAll(rows [][tableHalf]secp256k1.JacobianPoint) {
	n := len(rows) * tableHalf
	at := func(k int) *secp256k1.JacobianPoint { return &rows[k/tableHalf][k%tableHalf] }
	prefix := make([]secp256k1.FieldVal, n) // prefix[k] = Z_0 · … · Z_k
	prefix[0].Set(&at(0).Z)
	for k := 1; k < n; k++ {
		prefix[k].Mul2(&prefix[k-1], &at(k).Z).Normalize()
	}
	var inv secp256k1.FieldVal // (Z_0 · … · Z_k)^-1, walking k down
	inv.Set(&prefix[n-1]).Inverse()
	for k := n - 1; k >= 0; k-- {
		p := at(k)
		var zInv, zInv2, zInv3 secp256k1.FieldVal
		if k > 0 {
			zInv.Mul2(&inv, &prefix[k-1]).Normalize()
			inv.Mul(&p.Z).Normalize()
		} else {
			zInv.Set(&inv)
		}
		zInv2.SquareVal(&zInv)
		zInv3.Mul2(&zInv2, &zInv)
		p.X.Mul(&zInv2).Normalize()
		p.Y.Mul(&zInv3).Normalize()
		p.Z.SetInt(1)
	}
}

// mulAdd adds k·Q to acc, reading k in signed windows of w bits: each
// digit is in [-2^(w-1), 2^(w-1)), so a row needs only the positive
// multiples and a negative digit adds the negated point.
func (t *keyTable) mulAdd(k *secp256k1.ModNScalar, acc *secp256k1.JacobianPoint) {
	b := k.Bytes() // big-endian
	bit := func(p int) int {
		if p >= 256 {
			return 0
		}
		return int(b[31-p/8]>>(p%8)) & 1
	}
	carry := 0
	for i := range t.rows {
		d := carry
		for j := range tableWindow {
			d += bit(i*tableWindow+j) << j
		}
		carry = 0
		if d >= tableHalf {
			d -= 1 << tableWindow
			carry = 1
		}
		switch {
		case d > 0:
			secp256k1.AddNonConst(acc, &t.rows[i][d-1], acc)
		case d < 0:
			var neg secp256k1.JacobianPoint
			neg.Set(&t.rows[i][-d-1])
			neg.Y.Negate(1).Normalize()
			secp256k1.AddNonConst(acc, &neg, acc)
		}
	}
}

// verify checks the signature (r, s), already found well formed, over
// SHA-256(msg).
func (t *keyTable) verify(r, s *secp256k1.ModNScalar, msg []byte) bool {
	h := sha256.Sum256(msg)
	var e secp256k1.ModNScalar
	e.SetByteSlice(h[:])
	w := new(secp256k1.ModNScalar).InverseValNonConst(s)
	u1 := new(secp256k1.ModNScalar).Mul2(&e, w)
	u2 := new(secp256k1.ModNScalar).Mul2(r, w)
	var x secp256k1.JacobianPoint
	secp256k1.ScalarBaseMultNonConst(u1, &x)
	t.mulAdd(u2, &x)
	return checkEquation(&x, r)
}

// checkEquation reports whether the x coordinate of the Jacobian point p,
// taken mod N, equals r: that is, whether X == r·Z² or (r+N)·Z² (mod P)
// when r+N < P. It needs no inversion.
func checkEquation(p *secp256k1.JacobianPoint, r *secp256k1.ModNScalar) bool {
	if (p.X.IsZero() && p.Y.IsZero()) || p.Z.IsZero() {
		return false // the point at infinity
	}
	var z2 secp256k1.FieldVal
	z2.SquareVal(&p.Z)
	rb := r.Bytes()
	var rField secp256k1.FieldVal
	rField.SetBytes(&rb)
	var lhs secp256k1.FieldVal
	if lhs.Mul2(&rField, &z2).Normalize(); lhs.Equals(&p.X) {
		return true
	}
	if rField.IsGtOrEqPrimeMinusOrder() {
		return false // r+N would not be below P
	}
	rField.Add(&curveOrder)
	lhs.Mul2(&rField, &z2).Normalize()
	return lhs.Equals(&p.X)
}

// curveOrder is N as a field value, for the r+N case of checkEquation.
var curveOrder = func() secp256k1.FieldVal {
	n := secp256k1.Params().N.Bytes()
	var b [32]byte
	copy(b[32-len(n):], n)
	var f secp256k1.FieldVal
	f.SetBytes(&b)
	return f
}()

// keyTables keeps the tables of the keys checked most, keyed by the
// compressed public key. A key gets its table once tableAfter of its
// signatures have passed the ordinary check; failed checks do not count,
// so nobody earns a table with garbage. At most tableKeys tables are kept:
// when full, the one used least since the last eviction goes.
type keyTables struct {
	mu     sync.Mutex
	tables map[PubKey]*tableEntry
	passes map[PubKey]int // passed checks of keys without a table
}

type tableEntry struct {
	table *keyTable // nil while it is being built
	uses  int
}

const (
	tableAfter  = 32   // passed checks of a key before it gets a table
	tableKeys   = 64   // tables kept (about 11 MB)
	countedKeys = 4096 // keys counted before the counts start over
)

var tables = &keyTables{tables: map[PubKey]*tableEntry{}, passes: map[PubKey]int{}}

// get returns the table of pub, or nil if it has none (yet).
func (c *keyTables) get(pub []byte) *keyTable {
	if len(pub) != PubKeySize {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.tables[PubKey(pub)]
	if !ok {
		return nil
	}
	e.uses++
	return e.table
}

// passed counts a signature of key that passed the ordinary check, and
// builds the key's table, in the caller's time, on the tableAfter-th.
func (c *keyTables) passed(pub []byte, key *secp256k1.PublicKey) {
	if len(pub) != PubKeySize {
		return
	}
	k := PubKey(pub)
	c.mu.Lock()
	if _, ok := c.tables[k]; ok {
		c.mu.Unlock()
		return // built, or being built by another caller
	}
	if len(c.passes) >= countedKeys {
		clear(c.passes)
	}
	c.passes[k]++
	if c.passes[k] < tableAfter {
		c.mu.Unlock()
		return
	}
	delete(c.passes, k)
	if len(c.tables) >= tableKeys {
		c.evictLocked()
	}
	e := &tableEntry{}
	c.tables[k] = e
	c.mu.Unlock()

	t := newKeyTable(key)
	c.mu.Lock()
	e.table = t
	c.mu.Unlock()
}

// evictLocked drops the built table used least since the last eviction,
// and starts every use count again.
func (c *keyTables) evictLocked() {
	var victim PubKey
	least := -1
	for k, e := range c.tables {
		if e.table != nil && (least < 0 || e.uses < least) {
			victim, least = k, e.uses
		}
	}
	if least >= 0 {
		delete(c.tables, victim)
	}
	for _, e := range c.tables {
		e.uses = 0
	}
}
