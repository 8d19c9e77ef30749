package session

import "crypto/sha256"

// treeDepth is the height of the live-record tree. Inference ids are nonces,
// and snapshots cap max_nonce below 2^32, so every id has a leaf.
const treeDepth = 32

// emptyHash[k] is the hash of an empty subtree of height k.
var emptyHash = func() (h [treeDepth + 1][32]byte) {
	for k := 1; k <= treeDepth; k++ {
		h[k] = nodeHash(h[k-1], h[k-1])
	}
	return h
}()

func nodeHash(l, r [32]byte) [32]byte {
	var buf [65]byte
	buf[0] = 0x01
	copy(buf[1:33], l[:])
	copy(buf[33:], r[:])
	return sha256.Sum256(buf[:])
}

// recordTree is a sparse Merkle tree over inference ids holding the leaf hash
// of every live record. Only non-empty nodes are stored, so memory follows
// the live set, and an update rehashes one path: the root is incremental.
type recordTree struct {
	levels [treeDepth + 1]map[uint64][32]byte
}

func newRecordTree() *recordTree {
	t := &recordTree{}
	for i := range t.levels {
		t.levels[i] = make(map[uint64][32]byte)
	}
	return t
}

func (t *recordTree) node(level int, idx uint64) [32]byte {
	if h, ok := t.levels[level][idx]; ok {
		return h
	}
	return emptyHash[level]
}

func (t *recordTree) root() [32]byte { return t.node(treeDepth, 0) }

// nodes reads a record tree: the tree itself, or a planned update over it.
type nodes interface {
	node(level int, idx uint64) [32]byte
}

// treeUpdate is a set of node changes computed over a tree but not yet
// written to it, so a rejected diff leaves the tree untouched. It reads as
// the tree it was planned over with the changes made, so the next diff of a
// run can be planned over it before either is written.
type treeUpdate struct {
	base   nodes
	levels [treeDepth + 1]map[uint64][32]byte
}

// planTree computes the nodes that change over base when the given leaves
// change. A zero leaf hash means the leaf is removed.
func planTree(base nodes, leaves map[uint64][32]byte) *treeUpdate {
	u := &treeUpdate{base: base}
	u.levels[0] = leaves
	for level := 1; level <= treeDepth; level++ {
		below := u.levels[level-1]
		cur := make(map[uint64][32]byte, len(below))
		for idx := range below {
			p := idx >> 1
			if _, done := cur[p]; done {
				continue
			}
			cur[p] = nodeHash(u.node(level-1, p<<1), u.node(level-1, p<<1|1))
		}
		u.levels[level] = cur
	}
	return u
}

func (u *treeUpdate) node(level int, idx uint64) [32]byte {
	if h, ok := u.levels[level][idx]; ok {
		return h
	}
	return u.base.node(level, idx)
}

func (u *treeUpdate) root() [32]byte { return u.node(treeDepth, 0) }

// apply writes the update into the tree, dropping nodes that became empty.
func (t *recordTree) apply(u *treeUpdate) {
	for level, nodes := range u.levels {
		for idx, h := range nodes {
			if h == emptyHash[level] {
				delete(t.levels[level], idx)
			} else {
				t.levels[level][idx] = h
			}
		}
	}
}
