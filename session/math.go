package session

import "math/bits"

// add and mul return ok=false on uint64 overflow. Every amount in the
// protocol goes through them.
func add(a, b uint64) (uint64, bool) {
	s, carry := bits.Add64(a, b, 0)
	return s, carry == 0
}

func mul(a, b uint64) (uint64, bool) {
	hi, lo := bits.Mul64(a, b)
	return lo, hi == 0
}
