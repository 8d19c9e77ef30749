// Package sessionbench holds the session protocol's benchmark workloads, so
// that `go test -bench` and `devshard bench protocol` measure the same thing.
package sessionbench

import (
	"fmt"
	"math/rand"
	"testing"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
)

// Steady-state workload: every diff starts inference n and confirms and
// finishes inference n-1, so it carries three signatures (the gateway's and
// two of the executor's). Confirm times advance one second per nonce, and
// the default grace of 150 nonces plus a 300-second clock gate keep a few hundred
// records live.
const (
	GraceNonces  = 150
	GraceSeconds = 300
	SigsPerDiff  = 3
	warmNonces   = 1000
	batch        = 512
)

// ApplyWorkload replays pre-signed steady-state diffs against a replica
// positioned at a given nonce.
type ApplyWorkload struct {
	f     *sessiontest.Fixture
	base  *sessionpb.SessionState // replica state before diffs[0]
	diffs []*sessionpb.Diff
	live  int
}

func options() sessiontest.Options {
	o := sessiontest.DefaultOptions()
	o.Amount = 1 << 62
	o.SealGraceNonces = GraceNonces
	o.SealGraceSeconds = GraceSeconds
	o.MaxNonce = session.MaxNonceLimit
	return o
}

func pipelineStep(f *sessiontest.Fixture, q *sessiontest.Sequencer) (*sessionpb.Diff, error) {
	n := q.Replica.Nonce() + 1
	txs := []*sessionpb.Tx{sessiontest.Start(n, 200, 300)}
	if n > 1 {
		prev := n - 1
		exec := q.Replica.Executor(prev)
		txs = append(txs, f.Confirm(exec, prev, sessiontest.Timestamp(prev)), f.Finish(exec, prev, 200, 120))
	}
	return q.Next(txs...)
}

// NewApplyWorkload runs a real session to nonce 1,000, then, if at is
// larger, moves the whole state forward to nonce `at` by shifting every id,
// the sealed count and the fees by the same whole number of group rounds.
// Apply's work depends only on the live window, never on how many records
// were sealed before it; the shifted state is one a real run of `at` nonces
// would also reach (its sealed digest aside, a constant-size hash).
func NewApplyWorkload(at uint64) (*ApplyWorkload, error) {
	f := sessiontest.New(11, options())
	q := f.Sequencer()
	for q.Replica.Nonce() < warmNonces {
		if _, err := pipelineStep(f, q); err != nil {
			return nil, err
		}
	}
	if at > warmNonces {
		st := q.Replica.State()
		shift := at - warmNonces
		shift -= shift % uint64(len(f.Snapshot.Group)) // keep id mod N: executors stay put
		st.Nonce += shift
		st.ActiveNonces += shift
		st.Sealed.Count += shift
		st.Fees += shift * f.Snapshot.FeePerNonce
		st.Balance -= shift * f.Snapshot.FeePerNonce
		for _, r := range st.Live {
			r.Id += shift
			if r.FinishedNonce != 0 {
				r.FinishedNonce += shift
			}
		}
		// Timestamps follow the ids so the clock gate behaves the same.
		for _, hs := range st.HostStats {
			hs.LastConfirmedAt += int64(shift)
		}
		for _, r := range st.Live {
			if r.ConfirmedAt != 0 {
				r.ConfirmedAt += int64(shift)
			}
		}
		s, err := session.Restore(f.Snapshot, st, nil)
		if err != nil {
			return nil, fmt.Errorf("shift to nonce %d: %w", at, err)
		}
		q.Replica = s
	}
	w := &ApplyWorkload{f: f, base: q.Replica.State(), live: q.Replica.LiveCount()}
	for range batch {
		d, err := pipelineStep(f, q)
		if err != nil {
			return nil, err
		}
		w.diffs = append(w.diffs, d)
	}
	return w, nil
}

// Live is the number of live records when the measured diffs start.
func (w *ApplyWorkload) Live() int { return w.live }

// Run applies the workload's diffs, one per iteration, restoring the base
// state (off the clock) whenever the batch is used up.
func (w *ApplyWorkload) Run(b *testing.B) {
	var s *session.Session
	i := len(w.diffs)
	b.ReportAllocs()
	for b.Loop() {
		if i == len(w.diffs) {
			b.StopTimer()
			var err error
			if s, err = session.Restore(w.f.Snapshot, w.base, nil); err != nil {
				b.Fatal(err)
			}
			i = 0
			b.StartTimer()
		}
		if _, err := s.Apply(w.diffs[i]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BareVerify measures the secp256k1 verifications one diff contains, with
// nothing around them.
func BareVerify(b *testing.B) {
	rng := rand.New(rand.NewSource(3))
	type sig struct{ pub, msg, sig []byte }
	var sigs [SigsPerDiff]sig
	for i := range sigs {
		k, err := signing.GenerateKey(rng)
		if err != nil {
			b.Fatal(err)
		}
		msg := fmt.Appendf(nil, "a signed message of about a diff's length, number %d, padded ...........", i)
		pub := k.PubKey()
		sigs[i] = sig{pub[:], msg, k.SignBytes(msg)}
	}
	for b.Loop() {
		for _, s := range sigs {
			if err := signing.Verify(s.pub, s.msg, s.sig); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// SettleWorkload verifies a settlement of a group of the given size, signed
// by every slot.
type SettleWorkload struct {
	f *sessiontest.Fixture
	m *sessionpb.Settlement
}

// NewSettleWorkload builds a finished session of `slots` distinct hosts.
func NewSettleWorkload(slots int) (*SettleWorkload, error) {
	o := options()
	o.Holders = make([]int, slots)
	for i := range o.Holders {
		o.Holders[i] = i
	}
	f := sessiontest.New(12, o)
	q := f.Sequencer()
	for range 3 * slots {
		if _, err := pipelineStep(f, q); err != nil {
			return nil, err
		}
	}
	for range 2 {
		if _, err := q.Next(sessiontest.Finalize()); err != nil {
			return nil, err
		}
	}
	return &SettleWorkload{f: f, m: f.Settle(q.Replica, f.AllSlots()...)}, nil
}

// Run verifies the settlement once per iteration.
func (w *SettleWorkload) Run(b *testing.B) {
	for b.Loop() {
		if _, err := session.VerifySettlement(w.f.Snapshot, w.m, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// Pipeline is a session's steady-state diffs from nonce 1, pre-signed, for
// benchmarks of whole hosts (which store every diff from the first).
type Pipeline struct {
	Fixture *sessiontest.Fixture
	Diffs   []*sessionpb.Diff
	Raw     [][]byte
}

// NewPipeline signs n steady-state diffs of one escrow.
func NewPipeline(escrowID uint64, n int) (*Pipeline, error) {
	o := options()
	o.EscrowID = escrowID
	f := sessiontest.New(11, o)
	q := f.Sequencer()
	p := &Pipeline{Fixture: f}
	for range n {
		d, err := pipelineStep(f, q)
		if err != nil {
			return nil, err
		}
		raw, err := d.Marshal()
		if err != nil {
			return nil, err
		}
		p.Diffs = append(p.Diffs, d)
		p.Raw = append(p.Raw, raw)
	}
	return p, nil
}
