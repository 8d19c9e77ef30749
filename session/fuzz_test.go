package session_test

import (
	"bytes"
	"math/rand"
	"testing"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
)

// fuzzSession runs a small random session and returns its sequencer.
func fuzzSession(seed int64, steps int) (*sessiontest.Fixture, *sessiontest.Sequencer, []*sessionpb.Diff) {
	rng := rand.New(rand.NewSource(seed))
	o := sessiontest.DefaultOptions()
	o.SealGraceNonces = 3
	o.SealGraceSeconds = 1
	f := sessiontest.New(seed, o)
	gw := f.Sequencer()
	var diffs []*sessionpb.Diff
	for range steps {
		d, err := gw.RandomStep(rng)
		if err != nil {
			panic(err)
		}
		diffs = append(diffs, d)
	}
	return f, gw, diffs
}

// mutate flips bytes of raw as the fuzzer directs.
func mutate(raw, edits []byte) []byte {
	out := bytes.Clone(raw)
	for i := 0; i+1 < len(edits) && len(out) > 0; i += 2 {
		out[int(edits[i])*7%len(out)] ^= edits[i+1]
	}
	return out
}

// FuzzApply feeds mutated diffs to a replica. Whatever the bytes, apply must
// not panic, a rejected diff must leave the state untouched, and an accepted
// one must land exactly on its signed root.
func FuzzApply(f *testing.F) {
	f.Add(int64(1), uint8(5), []byte{})
	f.Add(int64(2), uint8(9), []byte{3, 1})
	f.Add(int64(3), uint8(20), []byte{40, 0x80, 41, 1})
	f.Fuzz(func(t *testing.T, seed int64, steps uint8, edits []byte) {
		fx, _, diffs := fuzzSession(seed, int(steps%24)+1)
		replica := fx.NewSession(nil)
		last := diffs[len(diffs)-1]
		for _, d := range diffs[:len(diffs)-1] {
			if _, err := replica.Apply(d); err != nil {
				t.Fatalf("honest diff %d rejected: %v", d.Nonce, err)
			}
		}
		raw, _ := last.Marshal()
		var d sessionpb.Diff
		if err := d.Unmarshal(mutate(raw, edits)); err != nil {
			return
		}
		before, _ := replica.State().Marshal()
		res, err := replica.Apply(&d)
		after, _ := replica.State().Marshal()
		if err != nil {
			if !bytes.Equal(before, after) {
				t.Fatalf("rejected diff changed the state: %v", err)
			}
			return
		}
		if !bytes.Equal(res.Root[:], d.PostStateRoot) {
			t.Fatalf("accepted diff landed on %x, signed %x", res.Root, d.PostStateRoot)
		}
	})
}

// FuzzDecodeDiff: arbitrary bytes as a diff for a fresh session.
func FuzzDecodeDiff(f *testing.F) {
	_, _, diffs := fuzzSession(4, 3)
	for _, d := range diffs {
		raw, _ := d.Marshal()
		f.Add(raw)
	}
	fx := sessiontest.New(4, sessiontest.DefaultOptions())
	f.Fuzz(func(t *testing.T, raw []byte) {
		var d sessionpb.Diff
		if err := d.Unmarshal(raw); err != nil {
			return
		}
		_ = session.DiffSignBytes(sessiontest.ChainID, &d)
		_, _ = fx.NewSession(nil).Apply(&d)
	})
}

// FuzzDecodeState: arbitrary bytes restored as a stored state.
func FuzzDecodeState(f *testing.F) {
	fx, gw, _ := fuzzSession(5, 12)
	raw, _ := gw.Replica.State().Marshal()
	f.Add(raw)
	f.Fuzz(func(t *testing.T, raw []byte) {
		var st sessionpb.SessionState
		if err := st.Unmarshal(raw); err != nil {
			return
		}
		s, err := session.Restore(fx.Snapshot, &st, nil)
		if err != nil {
			return
		}
		// A restored state must round-trip to the same root.
		again, err := session.Restore(fx.Snapshot, s.State(), nil)
		if err != nil || again.Root() != s.Root() {
			t.Fatalf("restored state does not round-trip: %v", err)
		}
	})
}

// FuzzVerifySettlement: mutated settlements never panic, and an accepted
// plan pays exactly the replica's books and conserves the amount.
func FuzzVerifySettlement(f *testing.F) {
	fx, gw, _ := fuzzSession(6, 15)
	raw, _ := fx.Settle(gw.Replica, fx.AllSlots()...).Marshal()
	st := gw.Replica.State()
	f.Add(raw, []byte{})
	f.Add(raw, []byte{10, 1})
	f.Fuzz(func(t *testing.T, raw, edits []byte) {
		var m sessionpb.Settlement
		if err := m.Unmarshal(mutate(raw, edits)); err != nil {
			return
		}
		plan, err := session.VerifySettlement(fx.Snapshot, &m, nil)
		if err != nil {
			return
		}
		// The signatures bind the settlement to the replica's root, so an
		// accepted one pays exactly the replica's books.
		if err := planMatches(fx.Snapshot, plan, st.Balance, st.Reserved, st.Fees, st.HostStats); err != nil {
			t.Fatalf("accepted plan does not match the replica's books: %v", err)
		}
	})
}

// FuzzStateSignature: arbitrary state signatures never panic.
func FuzzStateSignature(f *testing.F) {
	fx := sessiontest.New(7, sessiontest.DefaultOptions())
	ss, _ := session.SignState(fx.SlotKey(0), sessiontest.ChainID, 7, 1, make([]byte, 32), 0)
	raw, _ := ss.Marshal()
	f.Add(raw)
	f.Fuzz(func(t *testing.T, raw []byte) {
		var ss sessionpb.StateSignature
		if err := ss.Unmarshal(raw); err != nil {
			return
		}
		_ = session.VerifyStateSignature(fx.Snapshot, &ss, nil)
	})
}

// FuzzDecodeSnapshot: arbitrary bytes as an escrow snapshot. Validation never
// panics, and a snapshot it accepts must start a session whose books hold
// exactly the amount.
func FuzzDecodeSnapshot(f *testing.F) {
	for seed, holders := range [][]int{{0, 1, 2}, {0, 0, 1}, {0}} {
		o := sessiontest.DefaultOptions()
		o.Holders = holders
		raw, _ := sessiontest.New(int64(seed), o).Snapshot.Marshal()
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var snap sessionpb.EscrowSnapshot
		if err := snap.Unmarshal(raw); err != nil {
			return
		}
		if err := session.ValidateSnapshot(&snap); err != nil {
			return
		}
		s, err := session.New(&snap, nil)
		if err != nil {
			t.Fatalf("validated snapshot does not start a session: %v", err)
		}
		st := s.State()
		if st.Balance+st.Fees != snap.Amount || len(st.HostStats) != len(snap.Group) {
			t.Fatalf("new session holds balance %d + fees %d for %d slots, the snapshot has amount %d and %d slots",
				st.Balance, st.Fees, len(st.HostStats), snap.Amount, len(snap.Group))
		}
	})
}

// FuzzVerifyHostTx: arbitrary bytes as a gossiped host tx. Verification never
// panics, and without the hosts' keys no mutation verifies: an accepted tx has
// the canonical bytes of one the fixture signed.
func FuzzVerifyHostTx(f *testing.F) {
	o := sessiontest.DefaultOptions()
	o.Holders = []int{0, 0, 1} // slots 0 and 1 share a key: a moved slot must not verify
	fx := sessiontest.New(8, o)
	signed := map[string]bool{}
	for _, tx := range []*sessionpb.Tx{
		fx.Confirm(0, 1, sessiontest.Timestamp(1)),
		fx.Finish(0, 1, 10, 20),
		fx.Validate(1, 1, true),
		fx.Validate(2, 1, false),
		fx.Timeout(1, 2),
		sessiontest.Start(3, 10, 20),
	} {
		signed[session.TxKey(tx)] = true
		raw, _ := tx.Marshal()
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var tx sessionpb.Tx
		if err := tx.Unmarshal(raw); err != nil {
			return
		}
		_ = session.TxKey(&tx)
		_, _ = session.TxSignBytes(fx.Snapshot.ChainId, fx.Snapshot.EscrowId, &tx)
		if err := session.VerifyHostTx(fx.Snapshot, &tx, nil); err != nil {
			return
		}
		if !signed[session.TxKey(&tx)] {
			t.Fatalf("a tx the fixture never signed verifies: slot %d, %v", tx.Slot, tx.Body)
		}
	})
}

// protoMessage is a generated message, as the canonical decoders take it.
type protoMessage interface {
	Marshal() ([]byte, error)
	Unmarshal([]byte) error
}

// checkCanonical is the property of every canonical decoder: what it
// accepts encodes back to exactly the bytes it came as, and whatever plain
// Unmarshal takes has a canonical form that it accepts and that decodes to
// the same message.
func checkCanonical[M protoMessage](t *testing.T, raw []byte, decode func([]byte) (M, error), fresh func() M) {
	got, err := decode(raw)
	if err == nil {
		again, err := got.Marshal()
		if err != nil || !bytes.Equal(again, raw) {
			t.Fatalf("accepted %x, which encodes back to %x (%v)", raw, again, err)
		}
	}
	plain := fresh()
	if plain.Unmarshal(raw) != nil {
		if err == nil {
			t.Fatalf("accepted %x, which does not unmarshal", raw)
		}
		return
	}
	canon, err := plain.Marshal()
	if err != nil {
		t.Fatalf("decoded message does not encode: %v", err)
	}
	back, err := decode(canon)
	if err != nil {
		t.Fatalf("canonical encoding %x refused: %v", canon, err)
	}
	if again, _ := back.Marshal(); !bytes.Equal(again, canon) {
		t.Fatalf("canonical encoding %x decodes to %x", canon, again)
	}
}

// FuzzCanonicalDiff: decode-then-encode is the identity on every diff
// DecodeDiff accepts.
func FuzzCanonicalDiff(f *testing.F) {
	_, _, diffs := fuzzSession(9, 6)
	for _, d := range diffs {
		raw, _ := d.Marshal()
		f.Add(raw)
		f.Add(append(raw, 0xf8, 0x07, 0x01))
	}
	f.Add([]byte{0x10, 0x81, 0x00})
	f.Fuzz(func(t *testing.T, raw []byte) {
		checkCanonical(t, raw, session.DecodeDiff, func() *sessionpb.Diff { return &sessionpb.Diff{} })
	})
}

// FuzzCanonicalTx: decode-then-encode is the identity on every tx DecodeTx
// accepts.
func FuzzCanonicalTx(f *testing.F) {
	fx := sessiontest.New(10, sessiontest.DefaultOptions())
	for _, tx := range []*sessionpb.Tx{
		fx.Confirm(0, 1, sessiontest.Timestamp(1)),
		fx.Finish(0, 1, 10, 20),
		fx.Validate(1, 1, true),
		fx.Timeout(1, 2),
		sessiontest.Start(3, 10, 20),
		sessiontest.Finalize(),
	} {
		raw, _ := tx.Marshal()
		f.Add(raw)
		f.Add(append([]byte{0x50, 0x00}, raw...))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		checkCanonical(t, raw, session.DecodeTx, func() *sessionpb.Tx { return &sessionpb.Tx{} })
	})
}

// FuzzCanonicalStateSignature: decode-then-encode is the identity on every
// state signature DecodeStateSignature accepts.
func FuzzCanonicalStateSignature(f *testing.F) {
	fx := sessiontest.New(11, sessiontest.DefaultOptions())
	ss, _ := session.SignState(fx.SlotKey(0), fx.Snapshot.ChainId, 7, 1, make([]byte, 32), 0)
	raw, _ := ss.Marshal()
	f.Add(raw)
	f.Add(append(raw, 0x30, 0x01))
	f.Fuzz(func(t *testing.T, raw []byte) {
		checkCanonical(t, raw, session.DecodeStateSignature, func() *sessionpb.StateSignature { return &sessionpb.StateSignature{} })
	})
}
