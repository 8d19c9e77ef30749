// Package recent holds a bounded set of 32-byte keys that forgets the
// oldest first: what a node remembers having checked, so that checking
// the same thing again costs a lookup.
package recent

import (
	"crypto/sha256"
	"encoding/binary"
	"sync"
)

// Set holds at most its limit of keys. It is safe for concurrent use.
type Set struct {
	mu    sync.Mutex
	seen  map[[32]byte]struct{}
	ring  [][32]byte // insertion order; ring[next] is the oldest once full
	next  int
	limit int
}

// New returns a set of at most limit keys (at least 1). Its memory grows
// with what it holds, up to about 100 bytes a key.
func New(limit int) *Set {
	limit = max(limit, 1)
	return &Set{seen: make(map[[32]byte]struct{}, min(limit, 4096)), limit: limit}
}

// Has reports whether k is held.
func (s *Set) Has(k [32]byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.seen[k]
	return ok
}

// Add holds k, forgetting the oldest key when the set is full.
func (s *Set) Add(k [32]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.seen[k]; ok {
		return
	}
	if len(s.ring) < s.limit {
		s.ring = append(s.ring, k)
	} else {
		delete(s.seen, s.ring[s.next])
		s.ring[s.next] = k
		s.next = (s.next + 1) % s.limit
	}
	s.seen[k] = struct{}{}
}

// Len is how many keys the set holds.
func (s *Set) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}

// KeyOf is the key of a sequence of parts: SHA-256 over each part,
// length-prefixed, so that no two different sequences share a key.
func KeyOf(parts ...[]byte) [32]byte {
	h := sha256.New()
	var n [8]byte
	for _, part := range parts {
		binary.BigEndian.PutUint64(n[:], uint64(len(part)))
		h.Write(n[:])
		h.Write(part)
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}
