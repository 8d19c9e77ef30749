package host

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/sqlite"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// memberURLs is where each member serves.
type memberURLs map[signing.Address]string

func (b memberURLs) PeerURL(_ context.Context, a signing.Address) (string, error) {
	if u, ok := b[a]; ok {
		return u, nil
	}
	return "", fmt.Errorf("no URL for %s", a)
}

// logBuffer is a log many goroutines write.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// settleGroup is an escrow of three members whose gateway died while
// holding diffs: all five reached host 0, three host 1, two host 2. The
// chain is at epoch 3, the escrow's settlement deadline.
type settleGroup struct {
	f       *sessiontest.Fixture
	engines []*Engine
	urls    memberURLs
	chain   *daemonChain
	id      uint64
	root    []byte
	logs    *logBuffer
}

func setupSettleGroup(t *testing.T) *settleGroup {
	t.Helper()
	return setupSettleGroupOf(t, []int{0, 1, 2}, []int{5, 3, 2}, nil)
}

// setupSettleGroupOf is a settleGroup of one slot per holder, whose member
// i holds the first held[i] of five diffs, on the store wrap makes of its
// own (nil: as is).
func setupSettleGroupOf(t *testing.T, holders, held []int, wrap func(i int, st store.Store) store.Store) *settleGroup {
	t.Helper()
	opts := sessiontest.DefaultOptions()
	opts.Holders = holders
	f := sessiontest.New(1, opts)
	seq := f.Sequencer()
	g := &settleGroup{f: f, urls: memberURLs{}, id: f.Snapshot.EscrowId, logs: &logBuffer{}}
	quiet := slog.New(slog.DiscardHandler)
	for i, key := range f.Hosts {
		sq, err := sqlite.Open(context.Background(), t.TempDir(), sqlite.Options{})
		require.NoError(t, err)
		t.Cleanup(func() { sq.Close() })
		var st store.Store = sq
		if wrap != nil {
			st = wrap(i, st)
		}
		e := New(Config{Key: key, Store: st, Escrows: &fakeChain{snaps: map[uint64]*sessionpb.EscrowSnapshot{g.id: f.Snapshot}}, Executor: executor.Builtin{}, Logger: quiet})
		e.MarkReady()
		srv := httptest.NewServer(Handler(e, "test"))
		t.Cleanup(srv.Close)
		t.Cleanup(e.Wait)
		g.urls[key.Address()] = srv.URL
		g.engines = append(g.engines, e)
	}
	var raws [][]byte
	for range 5 {
		d, err := seq.Next()
		require.NoError(t, err)
		raw, err := d.Marshal()
		require.NoError(t, err)
		raws = append(raws, raw)
	}
	for i, n := range held {
		items := make([]DiffItem, n)
		for j := range n {
			items[j] = DiffItem{Raw: raws[j]}
		}
		_, err := g.engines[i].ApplyDiffs(t.Context(), g.id, items)
		require.NoError(t, err)
	}
	root := seq.Replica.Root()
	g.root = root[:]
	g.chain = &daemonChain{epoch: 3, escrows: map[uint64]*devshardtypes.Escrow{
		g.id: {Id: g.id, Snapshot: *f.Snapshot, Status: devshardtypes.EscrowOpen, DeadlineEpoch: 3},
	}}
	return g
}

// settler is member i's self-settler, sending through send, with no turns
// to wait: every member may send as soon as the deadline has passed.
func (g *settleGroup) settler(i int, send ChainSender) *selfSettler {
	e := g.engines[i]
	s := newSelfSettler(e, g.chain, send, newPeerReads(e, g.urls), slog.New(slog.NewTextHandler(g.logs, nil)))
	s.turn = 0
	return s
}

func (g *settleGroup) settleable(t *testing.T, i int) Settleable {
	t.Helper()
	for _, st := range g.engines[i].Settleables() {
		if st.Snapshot.EscrowId == g.id {
			return st
		}
	}
	t.Fatal("escrow not loaded")
	return Settleable{}
}

// A gateway that crashed while holding diffs leaves the members at
// different nonces. Each member's self-settler catches up from its peers'
// stored diffs and signs its latest root, so the group meets at the latest
// nonce, where every slot has signed one root.
func TestSelfSettlerCatchesUpFromPeers(t *testing.T) {
	t.Parallel()
	g := setupSettleGroup(t)
	for _, i := range []int{2, 1, 0} {
		st := g.settler(i, &fakeSender{}).catchUp(t.Context(), g.settleable(t, i))
		require.Equal(t, uint64(5), st.Settlement.Nonce, "host %d caught up", i)
		require.Equal(t, g.root, st.Settlement.StateRoot, "host %d", i)
	}
	// Every member has signed the one root, and any of them can read the
	// others' signatures.
	read := newPeerReads(g.engines[1], g.urls)
	for i, key := range g.f.Hosts {
		sigs, err := read.signatures(t.Context(), key.Address(), g.f.Snapshot, 5)
		require.NoError(t, err)
		require.Len(t, sigs, 1, "host %d signed nonce 5", i)
		require.Equal(t, g.root, sigs[0].StateRoot)
	}
}

// Past the deadline a member settles once a quorum of slots has signed its
// latest root, and only then: host 2 catches up first but finds host 1
// still at nonce 3; host 1, caught up in its turn, meets a quorum and
// settles, once.
func TestSelfSettlerSettlesOnceAQuorumSigned(t *testing.T) {
	t.Parallel()
	g := setupSettleGroup(t)
	send := &fakeSender{}
	g.settler(2, send).round(t.Context())
	require.Empty(t, send.settlements(), "two of three slots are no quorum")
	require.Contains(t, g.logs.String(), "2 of 3 slots signed the root at nonce 5; settling needs 3")

	s := g.settler(1, send)
	s.round(t.Context())
	s.round(t.Context())
	got := send.settlements()
	require.Len(t, got, 1, "settled once")
	m := got[0]
	require.Equal(t, uint64(5), m.Nonce)
	require.Equal(t, g.root, m.StateRoot)
	var slots []uint32
	for _, sig := range m.Signatures {
		slots = append(slots, sig.Slot)
	}
	require.Equal(t, []uint32{0, 1, 2}, slots, "every slot, in slot order")
	_, err := session.VerifySettlement(g.f.Snapshot, m, nil)
	require.NoError(t, err, "the chain accepts what was sent")
	require.Contains(t, g.logs.String(), "settled an escrow the gateway left open past its deadline")
}

// Before the deadline, and once the chain shows the escrow closed, a
// member settles nothing.
func TestSelfSettlerWaitsForTheDeadline(t *testing.T) {
	t.Parallel()
	g := setupSettleGroup(t)
	send := &fakeSender{}
	s := g.settler(0, send)
	g.chain.setEpoch(2)
	s.round(t.Context())
	require.Empty(t, send.settlements(), "epoch 2 is before the deadline")
	g.chain.setEpoch(3)
	g.chain.escrows[g.id].Status = devshardtypes.EscrowSettled
	s.round(t.Context())
	require.Empty(t, send.settlements(), "the gateway settled it")
	require.True(t, s.done[g.id], "a closed escrow is not asked about again")
}

// Past the deadline the members take turns by their first slot: the first
// slot's member sends at once, the second's a turn later, the third's two
// turns later; each catches up and signs in its first round all the same,
// so the one whose turn comes finds a quorum.
func TestSelfSettlersTakeTurns(t *testing.T) {
	t.Parallel()
	g := setupSettleGroupOf(t, []int{2, 0, 1}, []int{5, 5, 5}, nil) // slot 0 is host 2's, slot 1 host 0's, slot 2 host 1's
	clock := time.Date(2026, 12, 7, 5, 0, 0, 0, time.UTC)
	now := func() time.Time { return clock }
	sends := make([]*fakeSender, 3)
	settlers := make([]*selfSettler, 3)
	for i := range settlers {
		sends[i] = &fakeSender{}
		settlers[i] = g.settler(i, sends[i])
		settlers[i].turn, settlers[i].now = 10*time.Second, now
	}
	roundAll := func() {
		for _, s := range settlers {
			s.round(t.Context())
		}
	}
	sent := func() []int {
		var out []int
		for _, s := range sends {
			out = append(out, len(s.settlements()))
		}
		return out
	}

	roundAll()
	require.Equal(t, []int{0, 0, 1}, sent(), "the first slot's member (host 2) sends at once")
	// The chain shows the escrow still open (the first member's tx did
	// not land), so the others' turns come.
	clock = clock.Add(9 * time.Second)
	roundAll()
	require.Equal(t, []int{0, 0, 1}, sent(), "the others wait while the first member's tx lands")
	clock = clock.Add(time.Second)
	roundAll()
	require.Equal(t, []int{1, 0, 1}, sent(), "a turn in, the second slot's member (host 0) sends")
	clock = clock.Add(10 * time.Second)
	roundAll()
	require.Equal(t, []int{1, 1, 1}, sent(), "two turns in, the third slot's member (host 1) sends")
}

// A member that answers a forged signature for another member's slot does
// not keep that slot's real signature out of the settlement.
func TestSelfSettlerDropsAForgedSignatureForTheRealOne(t *testing.T) {
	t.Parallel()
	g := setupSettleGroup(t)
	for _, i := range []int{2, 1} {
		g.settler(i, &fakeSender{}).catchUp(t.Context(), g.settleable(t, i))
	}
	// Host 0 answers its own signature and, first, one it made for slot 2.
	own, err := g.engines[0].OwnSignatures(t.Context(), g.id, 5)
	require.NoError(t, err)
	require.Len(t, own, 1)
	forged := *own[0]
	forged.Slot = 2
	var raws [][]byte
	for _, ss := range []*sessionpb.StateSignature{&forged, own[0]} {
		raw, err := ss.Marshal()
		require.NoError(t, err)
		raws = append(raws, raw)
	}
	liar := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"signatures": raws})
	}))
	t.Cleanup(liar.Close)
	g.urls[g.f.Hosts[0].Address()] = liar.URL

	send := &fakeSender{}
	require.NoError(t, g.settler(1, send).settle(t.Context(), g.settleable(t, 1)))
	got := send.settlements()
	require.Len(t, got, 1)
	_, err = session.VerifySettlement(g.f.Snapshot, got[0], nil)
	require.NoError(t, err)
}

// The retention guard holds an epoch while the host holds one of its
// escrows open on chain, or cannot learn whether it is, and lets it go once
// the escrow settled.
func TestOpenEscrowsGuardsRetention(t *testing.T) {
	t.Parallel()
	g := setupSettleGroup(t)
	guard := openEscrows(g.engines[0], g.chain)
	epoch := g.f.Snapshot.Epoch
	open, err := guard(t.Context(), epoch)
	require.NoError(t, err)
	require.True(t, open, "the escrow is open on chain")
	open, err = guard(t.Context(), epoch+7)
	require.NoError(t, err)
	require.False(t, open, "the host holds no escrow of that epoch")

	g.chain.mu.Lock()
	esc := g.chain.escrows[g.id]
	delete(g.chain.escrows, g.id)
	g.chain.mu.Unlock()
	open, err = guard(t.Context(), epoch)
	require.Error(t, err)
	require.True(t, open, "a chain that does not answer holds the epoch")

	g.chain.mu.Lock()
	g.chain.escrows[g.id] = esc
	g.chain.escrows[g.id].Status = devshardtypes.EscrowSettled
	g.chain.mu.Unlock()
	open, err = guard(t.Context(), epoch)
	require.NoError(t, err)
	require.False(t, open, "settled: the epoch may be pruned")

	// A closed escrow is final: the guard does not ask the chain about it
	// again (a chain that cannot answer now would otherwise hold the epoch).
	g.chain.mu.Lock()
	delete(g.chain.escrows, g.id)
	g.chain.mu.Unlock()
	open, err = guard(t.Context(), epoch)
	require.NoError(t, err)
	require.False(t, open, "the settled escrow is remembered, not asked about again")
}

// unreadable fails every read of the signatures it stores while fail is
// set, as a store whose database went away does.
type unreadable struct {
	store.Store
	fail atomic.Bool
}

func (u *unreadable) Signatures(ctx context.Context, escrow, nonce uint64) ([]store.Signature, error) {
	if u.fail.Load() {
		return nil, fmt.Errorf("%w: postgres: connection refused", store.ErrUnavailable)
	}
	return u.Store.Signatures(ctx, escrow, nonce)
}

// Issue 18: a member whose store cannot read its own signatures still
// settles past the deadline from what is durable elsewhere, its peers'
// signatures, when they make a quorum.
func TestSelfSettlerSettlesThoughItsStoreFailsToRead(t *testing.T) {
	t.Parallel()
	own := &unreadable{}
	g := setupSettleGroupOf(t, []int{0, 1, 2, 3}, []int{5, 5, 5, 5}, func(i int, st store.Store) store.Store {
		if i != 0 {
			return st
		}
		own.Store = st
		return own
	})
	own.fail.Store(true)
	send := &fakeSender{}
	g.settler(0, send).round(t.Context())
	got := send.settlements()
	require.Len(t, got, 1, "three of four slots are a quorum without this host's")
	require.Contains(t, g.logs.String(), "own signatures unreadable")
	_, err := session.VerifySettlement(g.f.Snapshot, got[0], nil)
	require.NoError(t, err)
}
