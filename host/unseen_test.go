package host

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/jobs"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/store/sqlite"
)

// laggingNode is a fake of a chain node behind the gateway's: it knows the
// escrows in known, and those in late only once caughtUp is closed. Its
// next escrow id is next until then, and nextAfter after. It counts the
// lookups it is asked.
type laggingNode struct {
	caughtUp chan struct{}

	mu              sync.Mutex
	known, late     map[uint64]*sessionpb.EscrowSnapshot
	next, nextAfter uint64
	asked           map[uint64]int
}

func newLaggingNode(next, nextAfter uint64) *laggingNode {
	return &laggingNode{caughtUp: make(chan struct{}), next: next, nextAfter: nextAfter,
		known: map[uint64]*sessionpb.EscrowSnapshot{}, late: map[uint64]*sessionpb.EscrowSnapshot{}, asked: map[uint64]int{}}
}

func (n *laggingNode) caught() bool {
	select {
	case <-n.caughtUp:
		return true
	default:
		return false
	}
}

func (n *laggingNode) EscrowSnapshot(_ context.Context, id uint64) (*sessionpb.EscrowSnapshot, error) {
	caught := n.caught()
	n.mu.Lock()
	defer n.mu.Unlock()
	n.asked[id]++
	if s, ok := n.known[id]; ok {
		return s, nil
	}
	if s, ok := n.late[id]; ok && caught {
		return s, nil
	}
	return nil, fmt.Errorf("%w: the chain has no escrow %d", ErrUnknownEscrow, id)
}

func (n *laggingNode) NextEscrowID(context.Context) (uint64, error) {
	caught := n.caught()
	n.mu.Lock()
	defer n.mu.Unlock()
	if caught {
		return n.nextAfter, nil
	}
	return n.next, nil
}

func (n *laggingNode) lookups(id uint64) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.asked[id]
}

// unseenSetup is an engine on real SQLite reading escrows from node, whose
// escrow 7 (the fixture's) it is a member of. MissFor is long, so a miss
// is remembered throughout the test.
func unseenSetup(t *testing.T, node *laggingNode, wait time.Duration) (*Engine, *sessionpb.EscrowSnapshot) {
	t.Helper()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	st, err := sqlite.Open(context.Background(), t.TempDir(), sqlite.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	e := New(Config{Key: f.Hosts[0], Store: st, Escrows: node, Seq: node, UnseenWait: wait, Executor: executor.Builtin{},
		ChainID: testChainID, MissFor: time.Minute, LoadWait: 30 * time.Second})
	e.MarkReady()
	t.Cleanup(e.Wait)
	return e, f.Snapshot
}

// The bug: with several validators, the host's node applied the block of
// the escrow the gateway had just made 300 ms after the gateway's first
// diff came. The host answered 404 and remembered the miss, and the gateway
// skipped it. Now the first diff waits for the node and is applied.
//
// Without the wait the first host answered 404 "unknown escrow: the chain
// has no escrow 7" (checked by taking the wait out of lookupNew).
func TestFirstDiffWaitsForALaggingNode(t *testing.T) {
	t.Parallel()
	node := newLaggingNode(0, 0)
	b := setupTuned(t, func(_ int, c *Config) *jobs.Queue {
		c.Escrows, c.Seq, c.UnseenWait = node, node, 3*time.Second
		return nil
	})
	id := b.f.Snapshot.EscrowId
	node.mu.Lock()
	node.late[id], node.next, node.nextAfter = b.f.Snapshot, id, id+1
	node.mu.Unlock()
	time.AfterFunc(300*time.Millisecond, func() { close(node.caughtUp) })

	began := time.Now()
	b.next(t, nil) // every host applies it and signs the gateway's root
	require.Less(t, time.Since(began), 2*time.Second, "the wait ends once the node has the escrow, not at UnseenWait")
	require.Equal(t, 4, node.lookups(id), "the first host looked before its wait and after; the others once, the node caught up")
}

// An id far past the node's next escrow id cannot be an escrow made in a
// block the node lags by: it is unknown at once, from one lookup, while
// the last id of the window waits.
func TestFarUnseenEscrowIsUnknownAtOnce(t *testing.T) {
	t.Parallel()
	node := newLaggingNode(8, 8+unseenAhead)
	e, _ := unseenSetup(t, node, 30*time.Second)
	last := make(chan error, 1)
	go func() {
		_, err := e.escrow(context.Background(), 8+unseenAhead-1)
		last <- err
	}()

	began := time.Now()
	_, err := e.escrow(t.Context(), 8+unseenAhead)
	require.ErrorIs(t, err, ErrUnknownEscrow)
	require.Less(t, time.Since(began), time.Second, "no wait")
	require.Equal(t, 1, node.lookups(8+unseenAhead))
	require.Eventually(t, func() bool { return node.lookups(8+unseenAhead-1) == 1 }, 5*time.Second, time.Millisecond)
	time.Sleep(50 * time.Millisecond) // room for an answer that does not wait
	require.Empty(t, last, "the window's last id waits")
	close(node.caughtUp) // its wait ends; the node still does not know it
	require.ErrorIs(t, <-last, ErrUnknownEscrow)
}

// An escrow the node never learns of is unknown once UnseenWait has
// passed, after one more lookup, and the miss is remembered as before.
func TestUnseenEscrowStaysUnknownAfterTheWait(t *testing.T) {
	t.Parallel()
	node := newLaggingNode(8, 8)
	e, _ := unseenSetup(t, node, 200*time.Millisecond)
	began := time.Now()
	_, err := e.escrow(t.Context(), 8)
	require.ErrorIs(t, err, ErrUnknownEscrow)
	require.GreaterOrEqual(t, time.Since(began), 200*time.Millisecond)
	require.Equal(t, 2, node.lookups(8))
	_, err = e.escrow(t.Context(), 8)
	require.ErrorIs(t, err, ErrUnknownEscrow)
	require.Equal(t, 2, node.lookups(8), "the miss is remembered")
}

// A flood of requests naming ids just past the node's next one makes
// their loads wait, three times the lookup slots of them, and a real
// escrow still loads at once: a wait sleeps without a slot.
//
// Without the wait the flood's loads did not wait at all; with a wait
// that held its lookup slot, the loads past the slots waited for them; with
// loads that held their entry's lock, Settleables waited for the loads
// (each checked).
func TestUnseenWaitsLeaveLookupsToRealEscrows(t *testing.T) {
	t.Parallel()
	node := newLaggingNode(8, 100)
	e, snap := unseenSetup(t, node, 30*time.Second)
	node.known[snap.EscrowId] = snap
	flood := 3 * e.cfg.Lookups
	errs := make(chan error, flood)
	for id := uint64(8); id < 8+uint64(flood); id++ {
		go func() {
			_, err := e.escrow(context.Background(), id)
			errs <- err
		}()
	}
	require.Eventually(t, func() bool {
		for id := uint64(8); id < 8+uint64(flood); id++ {
			if node.lookups(id) == 0 {
				return false
			}
		}
		return true
	}, 5*time.Second, time.Millisecond, "every load of the flood asked the node once")

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	began := time.Now()
	got, err := e.escrow(ctx, snap.EscrowId)
	require.NoError(t, err)
	require.Equal(t, snap.EscrowId, got.EscrowId)
	require.Less(t, time.Since(began), time.Second)
	require.Empty(t, errs, "the flood's loads still wait")
	// Nor do the loads hold their entries: the daemon's Tick, Settleables
	// and the metrics lock every entry.
	listed := make(chan int, 1)
	go func() { listed <- len(e.Settleables()) }()
	select {
	case n := <-listed:
		require.Equal(t, 1, n, "the real escrow")
	case <-time.After(2 * time.Second):
		t.Fatal("Settleables waited for the loads that wait for the chain")
	}

	close(node.caughtUp) // the node's next id passes them; it still knows none
	for range flood {
		require.ErrorIs(t, <-errs, ErrUnknownEscrow)
	}
	require.Equal(t, 2, node.lookups(8))
}
