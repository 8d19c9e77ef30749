package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/session/sessiontest"
)

// failingStorage answers every session route of the hosts it names with
// the 503 a host whose storage is failing gives; health routes still pass.
func failingStorage(failing func(i int) bool) func(int, http.Handler) http.Handler {
	return func(i int, h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if failing(i) && r.URL.Path != hostapi.Readyz.Path && r.URL.Path != hostapi.Healthz.Path {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = w.Write([]byte(`{"error":"storage unavailable: postgres: connection refused"}`))
				return
			}
			h.ServeHTTP(w, r)
		})
	}
}

// Issue 18: with every host's storage failing, requests fail fast with a
// 503 (ErrNoHost) instead of sequencing start after start that nobody
// takes, each paying the per-diff fee.
func TestStorageOutageBurnsBoundedNonces(t *testing.T) {
	t.Parallel()
	var down atomic.Bool
	b := setup(t, func(o *setupOptions) { o.wrap = failingStorage(func(int) bool { return down.Load() }) })
	requireAnswer(t, ask(0), b.complete(t, ask(0)))
	before := b.gw.Escrows()[0]
	b.waitDelivered(t, before.ID, before.Nonce)
	down.Store(true)

	const requests = 8
	for i := range requests {
		req := ask(1 + i)
		require.NoError(t, b.gw.Normalize(&req))
		_, err := b.gw.Complete(t.Context(), req, func(string) error { return nil })
		require.ErrorIs(t, err, ErrNoHost, "request %d", i)
	}
	after := b.gw.Escrows()[0]
	require.Equal(t, before.ID, after.ID)
	members := len(b.hosts)
	burned := after.Nonce - before.Nonce
	t.Logf("%d requests burned %d nonces", requests, burned)
	require.LessOrEqual(t, burned, uint64(2*members),
		"once every member is known down, no request sequences another diff")
}

// A host whose storage is failing is routed around: after its first
// refusal, requests go to the other members at once, at their first
// attempt.
func TestStorageFailingHostIsRoutedAround(t *testing.T) {
	t.Parallel()
	var down atomic.Bool
	b := setup(t, func(o *setupOptions) { o.wrap = failingStorage(func(i int) bool { return i == 0 && down.Load() }) })
	requireAnswer(t, ask(0), b.complete(t, ask(0)))
	before := b.gw.Escrows()[0]
	b.waitDelivered(t, before.ID, before.Nonce)
	down.Store(true)

	retries := 0
	for i := range 6 {
		c := b.complete(t, ask(1+i))
		requireAnswer(t, ask(1+i), c)
		require.NotEqual(t, b.hosts[0].srv.URL, b.executorOf(t, c.EscrowID, c.Nonce).url)
		retries += c.Attempts - 1
	}
	require.LessOrEqual(t, retries, 1, "only the first request may try the failing host")
}

// A member that answers that its storage is failing is skipped longer
// than one that did not answer, and one still initializing is not taken
// for it.
func TestStorageFailingMemberIsSkippedLonger(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		status  int
		body    string
		skipped time.Duration // at least
	}{
		{"storage failing", http.StatusServiceUnavailable, `{"error":"storage unavailable: postgres down"}`, storageDownFor - 500*time.Millisecond},
		{"server error", http.StatusInternalServerError, `{"error":"boom"}`, downFor - time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			}))
			t.Cleanup(srv.Close)
			c := &courier{escrow: 7, members: []*member{{url: srv.URL}}, ctx: t.Context(), hostTimeout: 5 * time.Second,
				peers: newPeers(sessiontest.New(1, sessiontest.DefaultOptions()).Hosts[0], sessiontest.ChainID, 5*time.Second),
				log:   slog.New(slog.DiscardHandler), acked: make([]uint64, 1), down: make([]time.Time, 1), failed: make([]time.Time, 1)}
			_, err := c.deliver(0, []*delivery{c.newDelivery(1, [32]byte{}, []byte{1}, nil)})
			require.Error(t, err)
			now := time.Now()
			require.True(t, c.isDown(0, now.Add(tc.skipped)), "skipped for at least %s", tc.skipped)
			require.False(t, c.isDown(0, now.Add(max(downFor, storageDownFor)+time.Second)))
			require.False(t, c.upAt(now).IsZero(), "its only member is down")
		})
	}
}

// Issue 18: a settlement cut short by a storage outage is not given up:
// it is retried in the background, and the answered requests are paid
// once the hosts' storage is back, with nobody asking again.
func TestSettlementInterruptedByAnOutageIsRetried(t *testing.T) {
	t.Parallel()
	var down atomic.Bool
	b := setup(t, func(o *setupOptions) { o.wrap = failingStorage(func(int) bool { return down.Load() }) })
	c := b.complete(t, ask(0))
	requireAnswer(t, ask(0), c)
	v := b.gw.Escrows()[0]
	b.waitDelivered(t, v.ID, v.Nonce)

	down.Store(true)
	ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
	defer cancel()
	require.Error(t, b.gw.SettleAll(ctx), "no member signs while its storage fails")
	down.Store(false)

	require.Eventually(t, func() bool {
		settlements, _, _ := b.chain.settledState()
		return len(settlements) == 1
	}, settleWait, 50*time.Millisecond, "the settlement is retried in the background")
	settlements, _, rejected := b.chain.settledState()
	require.Empty(t, rejected)
	require.Equal(t, v.ID, settlements[0].EscrowId)
}

// With every executor failing after it took its start, a request's retries
// mark each member down, and the requests after it sequence nothing until
// a member is due to be tried again.
func TestFailingExecutorsBurnBoundedNonces(t *testing.T) {
	t.Parallel()
	var broken atomic.Bool
	b := setup(t, func(o *setupOptions) {
		o.executor = func(int) executor.Executor { return switchedExecutor{broken: &broken} }
	})
	requireAnswer(t, ask(0), b.complete(t, ask(0)))
	before := b.gw.Escrows()[0]
	broken.Store(true)
	const requests = 8
	for i := range requests {
		req := ask(1 + i)
		require.NoError(t, b.gw.Normalize(&req))
		_, err := b.gw.Complete(t.Context(), req, func(string) error { return nil })
		require.ErrorIs(t, err, ErrNoHost, "request %d", i)
	}
	burned := b.gw.Escrows()[0].Nonce - before.Nonce
	t.Logf("%d requests burned %d nonces", requests, burned)
	require.LessOrEqual(t, burned, uint64(len(b.hosts)), "at most one start per member")
}

// switchedExecutor is the built-in model until broken is set; then it
// fails every inference, as an executor whose host cannot record it does.
type switchedExecutor struct {
	executor.Builtin
	broken *atomic.Bool
}

func (s switchedExecutor) Execute(ctx context.Context, req executor.Request, emit func(string) error) (executor.Result, error) {
	if s.broken.Load() {
		return executor.Result{}, errors.New("storage unavailable: cannot record the inference")
	}
	return s.Builtin.Execute(ctx, req, emit)
}
