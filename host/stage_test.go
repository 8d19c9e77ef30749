package host

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/sqlite"
)

// diskWatch is a store that checks DESIGN invariant 4 from inside every
// diff write: the host's session must then be at the nonce before the
// diffs written, never ahead of them. The write runs on the goroutine that
// holds the session's lock, so it may read the session. Writes fail while
// fail is set.
type diskWatch struct {
	store.Store
	e      *Engine
	escrow uint64

	mu     sync.Mutex
	fail   bool
	ahead  []string // what each write found memory ahead of disk by
	writes int
}

func (w *diskWatch) AppendDiff(ctx context.Context, d store.Diff) error {
	return w.AppendDiffs(ctx, []store.Diff{d})
}

func (w *diskWatch) AppendDiffs(ctx context.Context, ds []store.Diff) error {
	w.e.mu.Lock()
	en := w.e.sessions[w.escrow]
	w.e.mu.Unlock()
	w.mu.Lock()
	w.writes++
	if en != nil && en.s != nil && en.s.Nonce() != ds[0].Nonce-1 {
		w.ahead = append(w.ahead, fmt.Sprintf("writing diffs %d to %d, memory is at nonce %d", ds[0].Nonce, ds[len(ds)-1].Nonce, en.s.Nonce()))
	}
	fail := w.fail
	w.mu.Unlock()
	if fail {
		return store.Errorf(store.ErrUnavailable, "injected write failure for diffs %d to %d", ds[0].Nonce, ds[len(ds)-1].Nonce)
	}
	return w.Store.AppendDiffs(ctx, ds)
}

func (w *diskWatch) setFail(fail bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.fail = fail
}

// stageBundle is one host (slot 0) over a diskWatch store, and the gateway.
type stageBundle struct {
	f  *sessiontest.Fixture
	gw *sessiontest.Sequencer
	e  *Engine
	w  *diskWatch
}

func stageSetup(t *testing.T) *stageBundle {
	t.Helper()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	st, err := sqlite.Open(context.Background(), t.TempDir(), sqlite.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	w := &diskWatch{Store: st, escrow: f.Snapshot.EscrowId}
	chain := &fakeChain{snaps: map[uint64]*sessionpb.EscrowSnapshot{f.Snapshot.EscrowId: f.Snapshot}}
	now := time.Unix(1_800_000_000, 0)
	w.e = New(Config{Key: f.Hosts[0], Store: w, Escrows: chain, Executor: executor.Builtin{}, Now: func() time.Time { return now }, ChainID: testChainID})
	w.e.MarkReady()
	t.Cleanup(w.e.Wait)
	return &stageBundle{f: f, gw: f.Sequencer(), e: w.e, w: w}
}

// diffs has the gateway sequence a run of n diffs that start inferences on
// the other slots and carry their work.
func (b *stageBundle) diffs(t *testing.T, n int) []DiffItem {
	t.Helper()
	var out []DiffItem
	for range n {
		id := b.gw.Replica.Nonce() + 1
		txs := []*sessionpb.Tx{}
		if exec := b.gw.Replica.Executor(id); exec != 0 {
			txs = append(txs, sessiontest.Start(id, 5, 10))
		}
		if r, ok := b.gw.Replica.Record(id - 1); ok && r.Status == sessionpb.InferenceStatus_INFERENCE_STATUS_PENDING {
			txs = append(txs, b.f.Confirm(r.ExecutorSlot, r.Id, sessiontest.Timestamp(r.Id)))
		}
		d, err := b.gw.Next(txs...)
		require.NoError(t, err)
		raw, err := d.Marshal()
		require.NoError(t, err)
		out = append(out, DiffItem{Raw: raw})
	}
	return out
}

// memory returns the host's session entry and its nonce and root.
func (b *stageBundle) memory(t *testing.T) (*entry, uint64, [32]byte) {
	t.Helper()
	en, err := b.e.session(t.Context(), b.f.Snapshot.EscrowId)
	require.NoError(t, err)
	defer en.mu.Unlock()
	return en, en.s.Nonce(), en.s.Root()
}

// DESIGN invariant 4: a run whose durable write fails leaves the host's
// memory at the last stored nonce, in place (nothing to recover from
// disk), and the same delivery then applies once the store is back.
func TestAFailedRunWriteLeavesMemoryAtTheLastDurableNonce(t *testing.T) {
	t.Parallel()
	b := stageSetup(t)
	escrow := b.f.Snapshot.EscrowId
	_, err := b.e.ApplyDiffs(t.Context(), escrow, b.diffs(t, 1))
	require.NoError(t, err)
	en, nonce, root := b.memory(t)
	require.Equal(t, uint64(1), nonce)

	run := b.diffs(t, 4)
	b.w.setFail(true)
	_, err = b.e.ApplyDiffs(t.Context(), escrow, run)
	require.ErrorIs(t, err, store.ErrUnavailable)
	require.ErrorContains(t, err, "diffs 2 to 5 of escrow 7 not stored")

	after, nonce, rootAfter := b.memory(t)
	require.Same(t, en, after, "the session stays loaded: it never went ahead of disk")
	require.Equal(t, uint64(1), nonce, "memory is at the last durable nonce")
	require.Equal(t, root, rootAfter)
	stored, err := b.w.Store.Diffs(t.Context(), escrow, 1, 10)
	require.NoError(t, err)
	require.Len(t, stored, 1)

	b.w.setFail(false)
	reply, err := b.e.ApplyDiffs(t.Context(), escrow, run)
	require.NoError(t, err, "the retry applies")
	require.Equal(t, uint64(5), reply.Nonce)
	require.Equal(t, b.gw.Replica.Root(), reply.Root)
	require.Len(t, reply.Signatures, 1, "the retried run's last root is signed")
	_, nonce, rootAfter = b.memory(t)
	require.Equal(t, uint64(5), nonce)
	require.Equal(t, b.gw.Replica.Root(), rootAfter)

	b.w.mu.Lock()
	defer b.w.mu.Unlock()
	require.Equal(t, 3, b.w.writes)
	require.Empty(t, b.w.ahead, "no write found memory ahead of disk")
}

// A run cut short by a refused diff stores and commits the diffs before
// it, with memory at the nonce before the write while it is made.
func TestARunCutShortIsStagedToo(t *testing.T) {
	t.Parallel()
	b := stageSetup(t)
	escrow := b.f.Snapshot.EscrowId
	run := b.diffs(t, 3)
	bad := run[2]
	var d sessionpb.Diff
	require.NoError(t, d.Unmarshal(bad.Raw))
	d.PostStateRoot = sessiontest.Hash("forged")
	raw, err := d.Marshal()
	require.NoError(t, err)
	run[2] = DiffItem{Raw: raw}
	_, err = b.e.ApplyDiffs(t.Context(), escrow, run)
	require.Error(t, err, "the third diff is refused")
	_, nonce, root := b.memory(t)
	require.Equal(t, uint64(2), nonce, "the two before it are stored and applied")
	stored, err := b.w.Store.Diffs(t.Context(), escrow, 1, 10)
	require.NoError(t, err)
	require.Len(t, stored, 2)
	require.Equal(t, stored[1].Root, root[:])
	b.w.mu.Lock()
	defer b.w.mu.Unlock()
	require.Empty(t, b.w.ahead)
}
