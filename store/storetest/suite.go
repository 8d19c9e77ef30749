package storetest

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/store"
)

// Target is one freshly opened, empty store of the driver under test.
type Target struct {
	Store store.Store
	// Reopen closes Store and opens the same data again, as a restart.
	Reopen func(t *testing.T) store.Store
	// FailWrites makes every later insert into table (a table of the
	// driver's schema: diffs, sealed, ...) fail inside its transaction, as a
	// disk error would, until restore is called. Sessions must exist first.
	FailWrites func(t *testing.T, table string) (restore func())
}

// Opener opens a new Target for one test. Each test gets its own database
// or directory, so tests never share state.
type Opener func(t *testing.T) *Target

// Run runs the conformance suite against a driver. Every driver passes every
// test.
func Run(t *testing.T, open Opener) {
	tests := []struct {
		name string
		fn   func(*testing.T, *bundle)
	}{
		{"SessionRoundTrip", testSessionRoundTrip},
		{"CreateSessionIdempotent", testCreateSessionIdempotent},
		{"UnknownEscrow", testUnknownEscrow},
		{"AppendReadsInNonceOrder", testAppendReadsInNonceOrder},
		{"NonceGap", testNonceGap},
		{"ReplayIsNoOp", testReplayIsNoOp},
		{"ForkRefused", testForkRefused},
		{"InvalidDiff", testInvalidDiff},
		{"BatchReportsEachDiff", testBatchReportsEachDiff},
		{"BatchAcrossEpochs", testBatchAcrossEpochs},
		{"ConcurrentAppends", testConcurrentAppends},
		{"RacingForkHasOneWinner", testRacingForkHasOneWinner},
		{"GroupCommit", testGroupCommit},
		{"Signatures", testSignatures},
		{"SignaturesWithDiff", testSignaturesWithDiff},
		{"SnapshotOnlyHigherOverwrites", testSnapshotOnlyHigherOverwrites},
		{"SealedIndexRebuild", testSealedIndexRebuild},
		{"AttackSealedIndexRebuiltOnRecovery", testAttackSealedIndexRebuiltOnRecovery},
		{"RecoverFromSnapshot", testRecoverFromSnapshot},
		{"RecoverRejectsBadSnapshot", testRecoverRejectsBadSnapshot},
		{"Prune", testPrune},
		{"PrepareEpoch", testPrepareEpoch},
		{"ListSessions", testListSessions},
		{"Reopen", testReopen},
		{"WriteFailurePersistsNothing", testWriteFailurePersistsNothing},
		{"CallerOwnsSlices", testCallerOwnsSlices},
		{"Closed", testClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, setup(t, open))
		})
	}
}

// bundle is one test's state.
type bundle struct {
	*Target
	s   store.Store
	ctx context.Context
}

func setup(t *testing.T, open Opener) *bundle {
	t.Helper()
	tg := open(t)
	return &bundle{Target: tg, s: tg.Store, ctx: t.Context()}
}

// session creates a session for escrow id in epoch and returns its chain
// of n diffs (not yet appended).
func (b *bundle) session(t *testing.T, id, epoch uint64, n int) *Chain {
	t.Helper()
	c := NewChain(id, epoch, n)
	require.NoError(t, b.s.CreateSession(b.ctx, c.Snapshot))
	return c
}

// append appends diffs one at a time.
func (b *bundle) append(t *testing.T, ds ...store.Diff) {
	t.Helper()
	for _, d := range ds {
		require.NoError(t, b.s.AppendDiff(b.ctx, d), "append diff %d of escrow %d", d.Nonce, d.EscrowID)
	}
}

// requireDiffs checks the store holds exactly want for the escrow.
func (b *bundle) requireDiffs(t *testing.T, id uint64, want []store.Diff) {
	t.Helper()
	got, err := b.s.Diffs(b.ctx, id, 1, len(want)+10)
	require.NoError(t, err)
	require.Len(t, got, len(want))
	for i := range want {
		require.Equal(t, want[i].Nonce, got[i].Nonce)
		require.Equal(t, want[i].Root, got[i].Root, "root of nonce %d", want[i].Nonce)
		require.Equal(t, want[i].Data, got[i].Data, "data of nonce %d", want[i].Nonce)
		require.Nil(t, got[i].Sealed)
	}
	last, err := b.s.LastNonce(b.ctx, id)
	require.NoError(t, err)
	require.Equal(t, uint64(len(want)), last)
}

func forkOf(d store.Diff) store.Diff {
	f := d
	f.Data = append(bytes.Clone(d.Data), 0x42)
	return f
}

func testSessionRoundTrip(t *testing.T, b *bundle) {
	c := b.session(t, 101, 4, 3)
	got, err := b.s.Session(b.ctx, 101)
	require.NoError(t, err)
	require.Equal(t, uint64(101), got.EscrowID)
	require.Equal(t, uint64(4), got.Epoch)
	require.Zero(t, got.LastNonce)
	require.Equal(t, c.Snapshot, got.Snapshot, "snapshot round trip")

	b.append(t, c.Diffs...)
	got, err = b.s.Session(b.ctx, 101)
	require.NoError(t, err)
	require.Equal(t, uint64(3), got.LastNonce)

	epochs, err := b.s.Epochs(b.ctx)
	require.NoError(t, err)
	require.Contains(t, epochs, uint64(4))
}

func testCreateSessionIdempotent(t *testing.T, b *bundle) {
	c := b.session(t, 102, 2, 1)
	require.NoError(t, b.s.CreateSession(b.ctx, c.Snapshot), "identical re-create is a no-op")

	other := *c.Snapshot
	other.Amount++
	err := b.s.CreateSession(b.ctx, &other)
	require.ErrorIs(t, err, store.ErrConflict)
	require.Contains(t, err.Error(), "escrow 102")

	moved := *c.Snapshot
	moved.Epoch = 3
	require.ErrorIs(t, b.s.CreateSession(b.ctx, &moved), store.ErrConflict, "an escrow lives in one epoch")

	got, err := b.s.Session(b.ctx, 102)
	require.NoError(t, err)
	require.Equal(t, c.Snapshot.Amount, got.Snapshot.Amount, "the original session stays")
	require.ErrorIs(t, b.s.CreateSession(b.ctx, nil), store.ErrInvalid)
}

func testUnknownEscrow(t *testing.T, b *bundle) {
	b.session(t, 103, 1, 1) // the epoch exists; escrow 999 does not
	const id = 999
	ctx := b.ctx
	_, err := b.s.Session(ctx, id)
	require.ErrorIs(t, err, store.ErrNotFound)
	require.Contains(t, err.Error(), "999")
	require.ErrorIs(t, b.s.AppendDiff(ctx, Synthetic(id, 1)), store.ErrNotFound)
	_, err = b.s.Diffs(ctx, id, 1, 10)
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = b.s.LastNonce(ctx, id)
	require.ErrorIs(t, err, store.ErrNotFound)
	require.ErrorIs(t, b.s.PutSignature(ctx, store.Signature{EscrowID: id, Nonce: 1, Data: []byte{1}}), store.ErrNotFound)
	_, err = b.s.Signatures(ctx, id, 1)
	require.ErrorIs(t, err, store.ErrNotFound)
	require.ErrorIs(t, b.s.PutSnapshot(ctx, store.Snapshot{EscrowID: id, Nonce: 1, Root: make([]byte, 32), State: []byte{1}}), store.ErrNotFound)
	_, err = b.s.Snapshot(ctx, id)
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = b.s.Sealed(ctx, id)
	require.ErrorIs(t, err, store.ErrNotFound)
	require.ErrorIs(t, b.s.ClearIndex(ctx, id), store.ErrNotFound)
	require.ErrorIs(t, b.s.IndexSealed(ctx, []store.Sealed{{EscrowID: id, InferenceID: 1, Nonce: 1, Record: []byte{1}}}), store.ErrNotFound)
}

func testAppendReadsInNonceOrder(t *testing.T, b *bundle) {
	c := b.session(t, 104, 1, 25)
	b.append(t, c.Diffs...)
	b.requireDiffs(t, 104, c.Diffs)

	page, err := b.s.Diffs(b.ctx, 104, 10, 5)
	require.NoError(t, err)
	require.Len(t, page, 5)
	for i, d := range page {
		require.Equal(t, uint64(10+i), d.Nonce)
		require.Equal(t, c.Diffs[9+i].Data, d.Data)
	}
	past, err := b.s.Diffs(b.ctx, 104, 26, 5)
	require.NoError(t, err)
	require.Empty(t, past)
	require.NotNil(t, past, "an empty page is an empty slice, not an error")
}

func testNonceGap(t *testing.T, b *bundle) {
	c := b.session(t, 105, 1, 5)
	err := b.s.AppendDiff(b.ctx, c.Diffs[1])
	require.ErrorIs(t, err, store.ErrNonceGap)
	var gap *store.GapError
	require.ErrorAs(t, err, &gap)
	require.Equal(t, store.GapError{EscrowID: 105, Nonce: 2, Last: 0}, *gap)

	b.append(t, c.Diffs[:3]...)
	err = b.s.AppendDiff(b.ctx, c.Diffs[4])
	require.ErrorAs(t, err, &gap)
	require.Equal(t, uint64(3), gap.Last)
	require.Contains(t, err.Error(), "must be 4")
	b.requireDiffs(t, 105, c.Diffs[:3])
}

func testReplayIsNoOp(t *testing.T, b *bundle) {
	c := b.session(t, 106, 1, 4)
	b.append(t, c.Diffs...)
	b.append(t, c.Diffs...) // every nonce again, byte-identical
	b.append(t, c.Diffs[1])
	b.requireDiffs(t, 106, c.Diffs)
}

func testForkRefused(t *testing.T, b *bundle) {
	c := b.session(t, 107, 1, 3)
	b.append(t, c.Diffs...)
	fork := forkOf(c.Diffs[1])
	err := b.s.AppendDiff(b.ctx, fork)
	require.ErrorIs(t, err, store.ErrFork)
	var fe *store.ForkError
	require.ErrorAs(t, err, &fe)
	require.Equal(t, uint64(107), fe.EscrowID)
	require.Equal(t, uint64(2), fe.Nonce)
	require.NotEqual(t, fe.Stored, fe.Got)

	other := c.Diffs[2]
	other.Root = bytes.Repeat([]byte{9}, 32)
	require.ErrorIs(t, b.s.AppendDiff(b.ctx, other), store.ErrFork, "same data with another root is a fork too")
	b.requireDiffs(t, 107, c.Diffs)
}

func testInvalidDiff(t *testing.T, b *bundle) {
	c := b.session(t, 108, 1, 1)
	d := c.Diffs[0]
	zero := d
	zero.Nonce = 0
	require.ErrorIs(t, b.s.AppendDiff(b.ctx, zero), store.ErrInvalid)
	short := d
	short.Root = d.Root[:31]
	require.ErrorIs(t, b.s.AppendDiff(b.ctx, short), store.ErrInvalid)
	empty := d
	empty.Data = nil
	require.ErrorIs(t, b.s.AppendDiff(b.ctx, empty), store.ErrInvalid)
	foreign := d
	foreign.Sealed = []store.Sealed{{EscrowID: 1, InferenceID: 1, Nonce: 1, Record: []byte{1}}}
	require.ErrorIs(t, b.s.AppendDiff(b.ctx, foreign), store.ErrInvalid)
	b.requireDiffs(t, 108, nil)
}

func testBatchReportsEachDiff(t *testing.T, b *bundle) {
	c := b.session(t, 109, 1, 6)
	b.append(t, c.Diffs[0])
	batch := []store.Diff{
		c.Diffs[1],          // stored
		c.Diffs[2],          // stored: its predecessor is earlier in the batch
		c.Diffs[4],          // gap: 4 is missing
		forkOf(c.Diffs[0]),  // fork
		c.Diffs[0],          // replay
		Synthetic(12345, 1), // unknown escrow
		c.Diffs[3],          // stored
	}
	err := b.s.AppendDiffs(b.ctx, batch)
	var be *store.BatchError
	require.ErrorAs(t, err, &be)
	require.Len(t, be.Errs, len(batch))
	require.NoError(t, be.Errs[0])
	require.NoError(t, be.Errs[1])
	require.ErrorIs(t, be.Errs[2], store.ErrNonceGap)
	require.ErrorIs(t, be.Errs[3], store.ErrFork)
	require.NoError(t, be.Errs[4])
	require.ErrorIs(t, be.Errs[5], store.ErrNotFound)
	require.NoError(t, be.Errs[6])
	require.ErrorIs(t, err, store.ErrFork, "errors.Is sees through a batch")
	b.requireDiffs(t, 109, c.Diffs[:4])

	require.NoError(t, b.s.AppendDiffs(b.ctx, c.Diffs[4:]))
	require.NoError(t, b.s.AppendDiffs(b.ctx, nil))
	b.requireDiffs(t, 109, c.Diffs)
}

func testBatchAcrossEpochs(t *testing.T, b *bundle) {
	const per = 6
	var chains []*Chain
	for i := range 4 {
		chains = append(chains, b.session(t, uint64(110+i), uint64(1+i%2), per))
	}
	var batch []store.Diff
	for n := range per {
		for _, c := range chains {
			batch = append(batch, c.Diffs[n])
		}
	}
	require.NoError(t, b.s.AppendDiffs(b.ctx, batch))
	for _, c := range chains {
		b.requireDiffs(t, c.Snapshot.EscrowId, c.Diffs)
	}
}

func testConcurrentAppends(t *testing.T, b *bundle) {
	const escrows, per = 8, 30
	for i := range escrows {
		require.NoError(t, b.s.CreateSession(b.ctx, SyntheticSnapshot(uint64(200+i), uint64(1+i%3))))
	}
	var wg sync.WaitGroup
	errs := make(chan error, escrows)
	for i := range escrows {
		wg.Go(func() {
			id := uint64(200 + i)
			for n := uint64(1); n <= per; n++ {
				if err := b.s.AppendDiff(b.ctx, Synthetic(id, n)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	for i := range escrows {
		id := uint64(200 + i)
		want := make([]store.Diff, per)
		for n := range want {
			want[n] = Synthetic(id, uint64(n+1))
		}
		b.requireDiffs(t, id, want)
	}
}

func testRacingForkHasOneWinner(t *testing.T, b *bundle) {
	c := b.session(t, 120, 1, 1)
	const racers = 8
	var wg sync.WaitGroup
	var wins atomic.Int32
	results := make([]error, racers)
	for i := range racers {
		wg.Go(func() {
			d := c.Diffs[0]
			d.Data = append(bytes.Clone(d.Data), byte(i))
			results[i] = b.s.AppendDiff(b.ctx, d)
			if results[i] == nil {
				wins.Add(1)
			}
		})
	}
	wg.Wait()
	require.Equal(t, int32(1), wins.Load(), "exactly one writer wins nonce 1: %v", results)
	for _, err := range results {
		if err != nil {
			require.ErrorIs(t, err, store.ErrFork)
		}
	}
	got, err := b.s.Diffs(b.ctx, 120, 1, 10)
	require.NoError(t, err)
	require.Len(t, got, 1)
}

func testGroupCommit(t *testing.T, b *bundle) {
	const escrows, per = 16, 10
	for i := range escrows {
		require.NoError(t, b.s.CreateSession(b.ctx, SyntheticSnapshot(uint64(300+i), 1)))
	}
	gc := NewCommitter(b.s, 0)
	defer gc.Close()
	var wg sync.WaitGroup
	errs := make(chan error, escrows+1)
	for i := range escrows {
		wg.Go(func() {
			for n := uint64(1); n <= per; n++ {
				if err := gc.Append(b.ctx, Synthetic(uint64(300+i), n)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	// Each waiter gets its own outcome.
	err := gc.Append(b.ctx, Synthetic(300, per+2))
	require.ErrorIs(t, err, store.ErrNonceGap)
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	for i := range escrows {
		last, err := b.s.LastNonce(b.ctx, uint64(300+i))
		require.NoError(t, err)
		require.Equal(t, uint64(per), last)
	}
	gc.Close()
	require.ErrorIs(t, gc.Append(b.ctx, Synthetic(300, per+1)), store.ErrClosed)
}

func testSignatures(t *testing.T, b *bundle) {
	c := b.session(t, 121, 1, 2)
	b.append(t, c.Diffs...)
	sigs := make([]store.Signature, 3)
	for _, slot := range []uint32{2, 0, 1} {
		ss, err := signState(c, slot, 2)
		require.NoError(t, err)
		sigs[slot] = ss
		require.NoError(t, b.s.PutSignature(b.ctx, ss))
	}
	require.NoError(t, b.s.PutSignature(b.ctx, sigs[1]), "identical signature again is a no-op")
	other := sigs[1]
	other.Data = append(bytes.Clone(other.Data), 1)
	err := b.s.PutSignature(b.ctx, other)
	require.ErrorIs(t, err, store.ErrConflict)
	require.Contains(t, err.Error(), "slot 1")

	got, err := b.s.Signatures(b.ctx, 121, 2)
	require.NoError(t, err)
	require.Equal(t, sigs, got, "in slot order")
	none, err := b.s.Signatures(b.ctx, 121, 1)
	require.NoError(t, err)
	require.Empty(t, none)
}

// signed is diff nonce of c carrying the state signatures of slots.
func signed(t *testing.T, c *Chain, nonce uint64, slots ...uint32) store.Diff {
	t.Helper()
	d := c.Diffs[nonce-1]
	d.Signatures = nil
	for _, slot := range slots {
		ss, err := signState(c, slot, nonce)
		require.NoError(t, err)
		d.Signatures = append(d.Signatures, ss)
	}
	return d
}

func testSignaturesWithDiff(t *testing.T, b *bundle) {
	c := b.session(t, 123, 1, 5)
	one := signed(t, c, 1, 1, 0)
	b.append(t, one)
	got, err := b.s.Signatures(b.ctx, 123, 1)
	require.NoError(t, err)
	require.Equal(t, []store.Signature{one.Signatures[1], one.Signatures[0]}, got, "stored with the diff, read in slot order")

	// A batch: each stored diff brings its own signatures; a refused one
	// (the gap at nonce 4) brings none.
	batch := []store.Diff{signed(t, c, 2, 2), signed(t, c, 4, 2), signed(t, c, 3, 0, 2)}
	var be *store.BatchError
	require.ErrorAs(t, b.s.AppendDiffs(b.ctx, batch), &be)
	require.NoError(t, be.Errs[0])
	require.ErrorIs(t, be.Errs[1], store.ErrNonceGap)
	require.NoError(t, be.Errs[2])
	for nonce, want := range map[uint64][]store.Signature{2: batch[0].Signatures, 3: batch[2].Signatures, 4: {}} {
		got, err := b.s.Signatures(b.ctx, 123, nonce)
		require.NoError(t, err)
		require.Equal(t, want, got, "signatures at nonce %d", nonce)
	}

	// A replay carrying other signatures changes nothing stored.
	again := signed(t, c, 1, 2)
	require.NoError(t, b.s.AppendDiff(b.ctx, again))
	got, err = b.s.Signatures(b.ctx, 123, 1)
	require.NoError(t, err)
	require.Len(t, got, 2)
	require.NotContains(t, got, again.Signatures[0])

	// A signature stored with its diff guards the nonce like PutSignature's.
	other := one.Signatures[0]
	other.Data = append(bytes.Clone(other.Data), 1)
	require.ErrorIs(t, b.s.PutSignature(b.ctx, other), store.ErrConflict)

	// Rows that are not the diff's own are refused, with nothing stored.
	stray := signed(t, c, 4, 0)
	stray.Signatures[0].Nonce = 3
	require.ErrorIs(t, b.s.AppendDiff(b.ctx, stray), store.ErrInvalid)
	blank := signed(t, c, 4, 0)
	blank.Signatures[0].Data = nil
	require.ErrorIs(t, b.s.AppendDiff(b.ctx, blank), store.ErrInvalid)
	last, err := b.s.LastNonce(b.ctx, 123)
	require.NoError(t, err)
	require.Equal(t, uint64(3), last)
}

func testSnapshotOnlyHigherOverwrites(t *testing.T, b *bundle) {
	c := b.session(t, 122, 1, 6)
	b.append(t, c.Diffs...)
	_, err := b.s.Snapshot(b.ctx, 122)
	require.ErrorIs(t, err, store.ErrNotFound)

	at := func(n int) store.Snapshot {
		snap, err := store.TakeSnapshot(c.Replica(n))
		require.NoError(t, err)
		return snap
	}
	s4, s2, s6 := at(4), at(2), at(6)
	require.NoError(t, b.s.PutSnapshot(b.ctx, s4))
	require.NoError(t, b.s.PutSnapshot(b.ctx, s2), "a lower nonce is a no-op")
	got, err := b.s.Snapshot(b.ctx, 122)
	require.NoError(t, err)
	require.Equal(t, s4, got)
	require.NoError(t, b.s.PutSnapshot(b.ctx, s6))
	got, err = b.s.Snapshot(b.ctx, 122)
	require.NoError(t, err)
	require.Equal(t, s6, got)
	require.ErrorIs(t, b.s.PutSnapshot(b.ctx, store.Snapshot{EscrowID: 122, Nonce: 7}), store.ErrInvalid)
}

func testSealedIndexRebuild(t *testing.T, b *bundle) {
	c := b.session(t, 123, 1, 30)
	require.NoError(t, b.s.AppendDiffs(b.ctx, c.Diffs[:10]))
	b.append(t, c.Diffs[10:]...)
	var want []store.Sealed
	for _, d := range c.Diffs {
		want = append(want, d.Sealed...)
	}
	require.NotEmpty(t, want, "the chain seals inferences")
	got, err := b.s.Sealed(b.ctx, 123)
	require.NoError(t, err)
	require.ElementsMatch(t, want, got)
	for i := 1; i < len(got); i++ {
		require.Less(t, got[i-1].InferenceID, got[i].InferenceID, "in inference id order")
	}

	require.NoError(t, b.s.ClearIndex(b.ctx, 123))
	got, err = b.s.Sealed(b.ctx, 123)
	require.NoError(t, err)
	require.Empty(t, got)

	n, err := store.RebuildIndex(b.ctx, b.s, 123, nil)
	require.NoError(t, err)
	require.Equal(t, len(want), n)
	got, err = b.s.Sealed(b.ctx, 123)
	require.NoError(t, err)
	require.ElementsMatch(t, want, got)
	for _, r := range got {
		var rec sessionpb.InferenceRecord
		require.NoError(t, rec.Unmarshal(r.Record))
		require.Equal(t, r.InferenceID, rec.Id)
	}
}

// Attack 7: the sealed-inference index is derived data, and a restart must
// not lose it. The driver keeps it across a reopen, and Recover, which a
// host runs on every session at startup, rebuilds it from the diffs when it
// was lost or holds rows the diffs never sealed, and leaves an intact one
// alone. Checked to fail before the fix: with Recover not rebuilding, the
// lost and stray cases keep the wrong rows; and on a sqlite mutant that
// deletes the index at open, the first check after the reopen fails.
func testAttackSealedIndexRebuiltOnRecovery(t *testing.T, b *bundle) {
	const id = 127
	c := b.session(t, id, 1, 30)
	b.append(t, c.Diffs...)
	snap, err := store.TakeSnapshot(c.Replica(24))
	require.NoError(t, err)
	require.NoError(t, b.s.PutSnapshot(b.ctx, snap))
	want, err := b.s.Sealed(b.ctx, id)
	require.NoError(t, err)
	require.NotEmpty(t, want, "the chain seals inferences")
	requireSealed := func(msg string) {
		t.Helper()
		got, err := b.s.Sealed(b.ctx, id)
		require.NoError(t, err)
		require.Equal(t, want, got, msg)
		n, err := b.s.SealedCount(b.ctx, id)
		require.NoError(t, err)
		require.Equal(t, uint64(len(want)), n, msg)
	}
	recoverNow := func() store.Recovery {
		t.Helper()
		s, rec, err := store.Recover(b.ctx, b.s, id, nil)
		require.NoError(t, err)
		require.Equal(t, c.Roots[29], s.Root())
		require.Equal(t, uint64(24), rec.SnapshotNonce, "recovery still starts from the snapshot")
		return rec
	}

	b.s = b.Reopen(t)
	requireSealed("the driver keeps the index across a reopen")
	require.Zero(t, recoverNow().IndexRebuilt, "an intact index is not rebuilt")
	requireSealed("recovery leaves an intact index as it was")

	// Lost: the rows are gone when the host restarts.
	require.NoError(t, b.s.ClearIndex(b.ctx, id))
	b.s = b.Reopen(t)
	require.Equal(t, len(want), recoverNow().IndexRebuilt)
	requireSealed("recovery rebuilds a lost index")

	// Inconsistent: a row for an inference no diff sealed.
	stray := want[0]
	stray.InferenceID, stray.Nonce = 1000, 30
	require.NoError(t, b.s.IndexSealed(b.ctx, []store.Sealed{stray}))
	b.s = b.Reopen(t)
	require.Equal(t, len(want), recoverNow().IndexRebuilt)
	requireSealed("recovery drops rows the diffs never sealed")
}

func testRecoverFromSnapshot(t *testing.T, b *bundle) {
	const n, k = 40, 16
	c := b.session(t, 124, 1, n)
	policy := store.SnapshotPolicy{Every: k}
	replica := c.Replica(0)
	for i, d := range c.Diffs {
		b.append(t, d)
		var pd sessionpb.Diff
		require.NoError(t, pd.Unmarshal(d.Data))
		_, err := replica.Apply(&pd)
		require.NoError(t, err)
		if policy.ShouldSnapshot(uint64(i+1), replica.Phase()) {
			snap, err := store.TakeSnapshot(replica)
			require.NoError(t, err)
			require.NoError(t, b.s.PutSnapshot(b.ctx, snap))
		}
	}
	s, rec, err := store.Recover(b.ctx, b.s, 124, nil)
	require.NoError(t, err)
	require.NoError(t, rec.Rejected)
	require.Equal(t, uint64(32), rec.SnapshotNonce)
	require.Equal(t, n-32, rec.Replayed, "only the tail is replayed")
	require.Equal(t, c.Roots[n-1], s.Root())
	require.Equal(t, uint64(n), s.Nonce())

	// Without a snapshot everything is replayed, to the same root.
	c2 := b.session(t, 125, 1, 12)
	b.append(t, c2.Diffs...)
	s2, rec2, err := store.Recover(b.ctx, b.s, 125, nil)
	require.NoError(t, err)
	require.Equal(t, store.Recovery{SnapshotNonce: 0, Replayed: 12}, rec2)
	require.Equal(t, c2.Roots[11], s2.Root())
}

func testRecoverRejectsBadSnapshot(t *testing.T, b *bundle) {
	c := b.session(t, 126, 1, 10)
	b.append(t, c.Diffs...)
	snap, err := store.TakeSnapshot(c.Replica(8))
	require.NoError(t, err)
	snap.Root = c.Roots[3][:] // filed with another state's root
	require.NoError(t, b.s.PutSnapshot(b.ctx, snap))

	s, rec, err := store.Recover(b.ctx, b.s, 126, nil)
	require.NoError(t, err)
	require.Error(t, rec.Rejected)
	require.Contains(t, rec.Rejected.Error(), "nonce 8")
	require.Zero(t, rec.SnapshotNonce)
	require.Equal(t, 10, rec.Replayed)
	require.Equal(t, c.Roots[9], s.Root())
}

func testPrune(t *testing.T, b *bundle) {
	old := b.session(t, 130, 1, 4)
	keep := b.session(t, 131, 2, 4)
	b.append(t, old.Diffs...)
	b.append(t, keep.Diffs...)
	sig, err := signState(old, 0, 4)
	require.NoError(t, err)
	require.NoError(t, b.s.PutSignature(b.ctx, sig))

	require.NoError(t, b.s.Prune(b.ctx, 1))
	_, err = b.s.Session(b.ctx, 130)
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = b.s.Diffs(b.ctx, 130, 1, 10)
	require.ErrorIs(t, err, store.ErrNotFound)
	require.ErrorIs(t, b.s.AppendDiff(b.ctx, old.Diffs[0]), store.ErrNotFound)
	b.requireDiffs(t, 131, keep.Diffs)

	epochs, err := b.s.Epochs(b.ctx)
	require.NoError(t, err)
	require.Equal(t, []uint64{2}, epochs)

	err = b.s.CreateSession(b.ctx, old.Snapshot)
	require.ErrorIs(t, err, store.ErrEpochPruned)
	require.Contains(t, err.Error(), "epoch 1")
	require.ErrorIs(t, b.s.PrepareEpoch(b.ctx, 1), store.ErrEpochPruned)
	require.NoError(t, b.s.Prune(b.ctx, 1), "pruning again is a no-op")

	require.NoError(t, b.s.Prune(b.ctx, 99), "an epoch never seen")
	require.ErrorIs(t, b.s.CreateSession(b.ctx, SyntheticSnapshot(132, 99)), store.ErrEpochPruned)
}

func testPrepareEpoch(t *testing.T, b *bundle) {
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Go(func() { errs[i] = b.s.PrepareEpoch(b.ctx, 7) })
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err, "concurrent creators")
	}
	require.NoError(t, b.s.PrepareEpoch(b.ctx, 8))
	epochs, err := b.s.Epochs(b.ctx)
	require.NoError(t, err)
	require.Equal(t, []uint64{7, 8}, epochs)
	c := b.session(t, 133, 8, 2)
	b.append(t, c.Diffs...)
}

func testListSessions(t *testing.T, b *bundle) {
	for i, epoch := range []uint64{3, 1, 2, 1} {
		c := b.session(t, uint64(143-i), epoch, i+1)
		b.append(t, c.Diffs...)
	}
	got, err := b.s.ListSessions(b.ctx)
	require.NoError(t, err)
	var ids, epochs, lasts []uint64
	for _, s := range got {
		ids = append(ids, s.EscrowID)
		epochs = append(epochs, s.Epoch)
		lasts = append(lasts, s.LastNonce)
		require.Equal(t, s.EscrowID, s.Snapshot.EscrowId)
	}
	require.Equal(t, []uint64{140, 141, 142, 143}, ids)
	require.Equal(t, []uint64{1, 2, 1, 3}, epochs)
	require.Equal(t, []uint64{4, 3, 2, 1}, lasts)

	require.NoError(t, b.s.Prune(b.ctx, 1))
	got, err = b.s.ListSessions(b.ctx)
	require.NoError(t, err)
	require.Len(t, got, 2)
}

func testReopen(t *testing.T, b *bundle) {
	c := b.session(t, 150, 5, 8)
	b.append(t, c.Diffs...)
	snap, err := store.TakeSnapshot(c.Replica(8))
	require.NoError(t, err)
	require.NoError(t, b.s.PutSnapshot(b.ctx, snap))
	sig, err := signState(c, 1, 8)
	require.NoError(t, err)
	require.NoError(t, b.s.PutSignature(b.ctx, sig))
	require.NoError(t, b.s.CreateSession(b.ctx, SyntheticSnapshot(151, 4)))
	require.NoError(t, b.s.Prune(b.ctx, 4))

	b.s = b.Reopen(t)
	b.requireDiffs(t, 150, c.Diffs)
	got, err := b.s.Snapshot(b.ctx, 150)
	require.NoError(t, err)
	require.Equal(t, snap, got)
	sigs, err := b.s.Signatures(b.ctx, 150, 8)
	require.NoError(t, err)
	require.Equal(t, []store.Signature{sig}, sigs)
	require.ErrorIs(t, b.s.CreateSession(b.ctx, SyntheticSnapshot(152, 4)), store.ErrEpochPruned, "prunes survive a restart")
	epochs, err := b.s.Epochs(b.ctx)
	require.NoError(t, err)
	require.Equal(t, []uint64{5}, epochs)
	s, _, err := store.Recover(b.ctx, b.s, 150, nil)
	require.NoError(t, err)
	require.Equal(t, c.Roots[7], s.Root())
}

func testWriteFailurePersistsNothing(t *testing.T, b *bundle) {
	c := b.session(t, 160, 1, 30)
	b.append(t, c.Diffs[:4]...)
	// Diff 5 onwards seal records, so each append writes the diff and then
	// its index rows; the failure hits the second write.
	require.NotEmpty(t, c.Diffs[4].Sealed)
	restore := b.FailWrites(t, "sealed")

	err := b.s.AppendDiff(b.ctx, c.Diffs[4])
	require.Error(t, err)
	require.NotErrorIs(t, err, store.ErrFork)
	err = b.s.AppendDiffs(b.ctx, c.Diffs[4:8])
	require.Error(t, err)
	for _, e := range store.DiffErrors(err, 4) {
		require.Error(t, e, "no diff of a failed batch is stored")
	}
	b.requireDiffs(t, 160, c.Diffs[:4])
	sealed, err := b.s.Sealed(b.ctx, 160)
	require.NoError(t, err)
	require.Empty(t, sealed)

	restore()
	b.append(t, c.Diffs[4:]...)
	b.requireDiffs(t, 160, c.Diffs)
}

func testCallerOwnsSlices(t *testing.T, b *bundle) {
	c := b.session(t, 170, 1, 2)
	d := c.Diffs[0]
	d.Data, d.Root = bytes.Clone(d.Data), bytes.Clone(d.Root)
	require.NoError(t, b.s.AppendDiff(b.ctx, d))
	d.Data[0] ^= 0xff // the store kept no reference to the caller's bytes
	d.Root[0] ^= 0xff

	got, err := b.s.Diffs(b.ctx, 170, 1, 1)
	require.NoError(t, err)
	require.Equal(t, c.Diffs[0].Data, got[0].Data)
	got[0].Data[0] ^= 0xff // nor does it share what it returns
	again, err := b.s.Diffs(b.ctx, 170, 1, 1)
	require.NoError(t, err)
	require.Equal(t, c.Diffs[0].Data, again[0].Data)
	require.Equal(t, c.Diffs[0].Root, again[0].Root)
}

func testClosed(t *testing.T, b *bundle) {
	c := b.session(t, 180, 1, 1)
	require.NoError(t, b.s.Close())
	require.NoError(t, b.s.Close(), "closing twice is harmless")
	require.ErrorIs(t, b.s.AppendDiff(b.ctx, c.Diffs[0]), store.ErrClosed)
	_, err := b.s.Session(b.ctx, 180)
	require.ErrorIs(t, err, store.ErrClosed)
	require.ErrorIs(t, b.s.CreateSession(b.ctx, SyntheticSnapshot(181, 1)), store.ErrClosed)
	_, err = b.s.Epochs(b.ctx)
	require.ErrorIs(t, err, store.ErrClosed)
}

// signState is slot's state signature over the chain's root at nonce.
func signState(c *Chain, slot uint32, nonce uint64) (store.Signature, error) {
	root := c.Roots[nonce-1]
	ss, err := session.SignState(c.Fixture.SlotKey(slot), c.Snapshot.ChainId, c.Snapshot.EscrowId, nonce, root[:], slot)
	if err != nil {
		return store.Signature{}, fmt.Errorf("sign state: %w", err)
	}
	return store.NewSignature(ss)
}
