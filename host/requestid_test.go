package host

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/store/sqlite"
)

// lockedBuffer is a log sink read while the engine writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// The host logs the app's request id the gateway sends with an inference,
// beside the escrow and nonce, served or not, so one request can be
// followed from the gateway's log into the host's.
func TestInferenceLogsRequestID(t *testing.T) {
	t.Parallel()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	st, err := sqlite.Open(context.Background(), t.TempDir(), sqlite.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	var logs lockedBuffer
	chain := &fakeChain{snaps: map[uint64]*sessionpb.EscrowSnapshot{f.Snapshot.EscrowId: f.Snapshot}}
	e := New(Config{Key: f.Hosts[0], Store: st, Escrows: chain, Executor: executor.Builtin{}, StartWait: 10 * time.Millisecond,
		ChainID: testChainID, Metrics: NewMetrics(), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	e.MarkReady()
	srv := httptest.NewServer(Handler(e, "test"))
	t.Cleanup(srv.Close)
	t.Cleanup(e.Wait)

	c := hostapi.NewClient(f.Gateway, testChainID, &http.Client{Timeout: 10 * time.Second})
	ctx := hostapi.WithRequestID(t.Context(), "app-7")
	_, err = c.Inference(ctx, srv.URL, f.Hosts[0].Address(), f.Snapshot.EscrowId, 1, request(1), time.Second, func(string) error { return nil })
	require.Error(t, err, "nonce 1 was never started")
	require.Contains(t, logs.String(), `msg="inference served" request_id=app-7 escrow=`)
	require.Contains(t, logs.String(), "nonce=1")
}
