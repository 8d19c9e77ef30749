// Package storetest is the conformance suite every store driver passes, with
// the fixtures it runs on: valid signed sessions (Chain) and cheap
// realistic-size diffs for load (Synthetic).
package storetest

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/store"
)

// Chain is a valid, signed session as a host stores it: the escrow
// snapshot, the diffs in nonce order (Diffs[i] has nonce i+1, Sealed
// filled) and the root after each. Callers must not modify it.
type Chain struct {
	Snapshot *sessionpb.EscrowSnapshot
	Diffs    []store.Diff
	Roots    [][32]byte
	Fixture  *sessiontest.Fixture
}

// slots is the group size of generated sessions. Five slots let every diff
// carry a challenge and its resolution, which brings diffs to about 1 KB.
const slots = 5

// generator extends one escrow's session on demand.
type generator struct {
	mu    sync.Mutex // one caller extends at a time
	f     *sessiontest.Fixture
	q     *sessiontest.Sequencer
	diffs []store.Diff
	roots [][32]byte
}

var (
	genMu      sync.Mutex
	generators = map[uint64]*generator{}
)

// NewChain returns the first n diffs of escrow id's session, in epoch. The
// session is deterministic per escrow id, and generated sessions are cached,
// so tests asking for the same escrow share the work.
func NewChain(id, epoch uint64, n int) *Chain {
	genMu.Lock()
	g := generators[id]
	if g == nil {
		o := sessiontest.DefaultOptions()
		o.EscrowID = id
		o.Holders = []int{0, 1, 2, 3, 4}
		o.Amount = 1 << 50
		o.ValidationRateBps = 10000 // every eligible slot sampled: any may open the challenge
		g = &generator{f: sessiontest.New(int64(id), o)}
		g.q = g.f.Sequencer()
		generators[id] = g
	}
	genMu.Unlock()

	// Generation runs outside genMu: it is the slow part, and generators of
	// different escrows are independent.
	diffs, roots := g.extend(n)
	snap := *g.f.Snapshot
	snap.Epoch = epoch
	return &Chain{Snapshot: &snap, Diffs: diffs, Roots: roots, Fixture: g.f}
}

// extend generates the session up to n diffs and returns the first n.
func (g *generator) extend(n int) ([]store.Diff, [][32]byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for len(g.diffs) < n {
		id := uint64(len(g.diffs) + 1)
		d, err := g.q.Build(g.txs(id)...)
		if err != nil {
			panic(fmt.Sprintf("storetest: build diff %d: %v", id, err))
		}
		res, err := g.q.Replica.Apply(d)
		if err != nil {
			panic(fmt.Sprintf("storetest: apply diff %d: %v", id, err))
		}
		sd, err := store.NewDiff(d, res.Sealed)
		if err != nil {
			panic(err)
		}
		g.diffs = append(g.diffs, sd)
		g.roots = append(g.roots, res.Root)
	}
	return g.diffs[:n:n], g.roots[:n:n]
}

// txs is diff id's work, pipelined over the inferences in flight: start
// id, confirm id-1, finish id-2, challenge id-3 and resolve id-4 with two
// agreeing votes, which seals it.
func (g *generator) txs(id uint64) []*sessionpb.Tx {
	f := g.f
	exec := func(x uint64) uint32 { return uint32(x % slots) }
	other := func(x uint64, k uint32) uint32 { return (exec(x) + k) % slots }
	txs := []*sessionpb.Tx{sessiontest.Start(id, 100, 200)}
	if id >= 2 {
		txs = append(txs, f.Confirm(exec(id-1), id-1, sessiontest.Timestamp(id-1)))
	}
	if id >= 3 {
		txs = append(txs, f.Finish(exec(id-2), id-2, 100, 150))
	}
	if id >= 4 {
		txs = append(txs, f.Validate(other(id-3, 1), id-3, false))
	}
	if id >= 5 {
		txs = append(txs, f.Validate(other(id-4, 2), id-4, true), f.Validate(other(id-4, 3), id-4, true))
	}
	return txs
}

// template is a real diff from the middle of a session, the body of
// Synthetic diffs.
var template = sync.OnceValue(func() *sessionpb.Diff {
	c := NewChain(1<<40, 1, 12)
	var d sessionpb.Diff
	if err := d.Unmarshal(c.Diffs[11].Data); err != nil {
		panic(err)
	}
	return &d
})

// Synthetic is a realistic-size diff (about 1 KB: six signed txs) for
// escrow id at nonce, made by relabelling a real diff. Its signatures do not
// verify, so it is for storage load only, never for replay; generating it
// costs microseconds instead of the milliseconds of signing.
func Synthetic(id, nonce uint64) store.Diff {
	d := *template()
	d.EscrowId, d.Nonce = id, nonce
	var key [16]byte
	binary.BigEndian.PutUint64(key[:8], id)
	binary.BigEndian.PutUint64(key[8:], nonce)
	root := sha256.Sum256(key[:])
	d.PostStateRoot = root[:]
	data, err := d.Marshal()
	if err != nil {
		panic(err)
	}
	return store.Diff{EscrowID: id, Nonce: nonce, Root: root[:], Data: data}
}

// SyntheticSnapshot is an escrow snapshot for Synthetic sessions.
func SyntheticSnapshot(id, epoch uint64) *sessionpb.EscrowSnapshot {
	c := NewChain(1<<40, epoch, 1)
	snap := *c.Snapshot
	snap.EscrowId = id
	return &snap
}

// Replica applies a chain's first n diffs to a fresh session and returns it.
func (c *Chain) Replica(n int) *session.Session {
	s, err := session.New(c.Snapshot, nil)
	if err != nil {
		panic(err)
	}
	for i := range n {
		var d sessionpb.Diff
		if err := d.Unmarshal(c.Diffs[i].Data); err != nil {
			panic(err)
		}
		if _, err := s.Apply(&d); err != nil {
			panic(err)
		}
	}
	return s
}
