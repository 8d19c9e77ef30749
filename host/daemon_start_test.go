package host

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/store/legacy/legacytest"
	"github.com/devshard/devshard/store/storetest"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// A host whose chain does not answer keeps its API up, says on /readyz
// and in the log which address it tried and which setting names it, and
// becomes ready once the chain answers.
func TestDaemonWaitsForItsChain(t *testing.T) {
	t.Parallel()
	b := setupDaemon(t)
	b.cfg.Listen = unusedAddr(t)
	b.cfg.ChainRPC = "http://127.0.0.1:9"
	b.chain.idErr = errors.New("connection refused")
	type opened struct {
		d   *Daemon
		err error
	}
	done := make(chan opened, 1)
	go func() {
		d, err := Open(t.Context(), b.cfg)
		done <- opened{d, err}
	}()

	url := "http://" + b.cfg.Listen
	require.Eventually(t, func() bool {
		resp, err := http.Get(url + "/readyz")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), "chain unreachable")
	}, 5*time.Second, 10*time.Millisecond, "the API is up while the chain is not, and says why")
	status, body := get(t, url+"/readyz")
	require.Equal(t, http.StatusServiceUnavailable, status)
	require.Contains(t, body, "initializing: chain unreachable at http://127.0.0.1:9: connection refused; start the node, or set chain.rpc")
	status, _ = get(t, url+"/healthz")
	require.Equal(t, http.StatusOK, status)
	require.Eventually(t, func() bool {
		return strings.Count(b.logs.String(), "chain unreachable at http://127.0.0.1:9") >= 2
	}, 5*time.Second, 10*time.Millisecond, "it retries")
	require.Contains(t, b.logs.String(), "retry_in=2s", "the wait doubles")

	b.chain.setIDErr(nil)
	var o opened
	select {
	case o = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the host did not come up once its chain answered")
	}
	require.NoError(t, o.err)
	defer func() { require.NoError(t, o.d.Close(context.Background())) }()
	status, body = get(t, url+"/readyz")
	require.Equal(t, http.StatusOK, status, body)
}

// A host home holding a legacy database is migrated on first boot, with a
// line in the log before and after; the next boot finds nothing to do.
func TestDaemonMigratesALegacyDatabase(t *testing.T) {
	t.Parallel()
	b := setupDaemon(t)
	home := t.TempDir()
	chain := storetest.NewChain(901, 2, 6)
	legacytest.Write(t, filepath.Join(home, "host.db"), []*storetest.Chain{chain}, []int{6})
	b.chain.escrows = map[uint64]*devshardtypes.Escrow{901: {Id: 901, Snapshot: sessionpb.EscrowSnapshot{EscrowId: 901, Epoch: 2}}}
	b.cfg.Storage.Dir = filepath.Join(home, "data")
	b.cfg.Storage.Legacy = filepath.Join(home, "host.db")

	d, err := Open(t.Context(), b.cfg)
	require.NoError(t, err)
	last, err := d.st.LastNonce(t.Context(), 901)
	require.NoError(t, err)
	require.Equal(t, uint64(6), last, "the session and its diffs moved into the store")
	logs := b.logs.String()
	require.Contains(t, logs, "migrating the legacy database")
	require.Contains(t, logs, "sessions_done=1 sessions=1", "a progress line")
	require.Contains(t, logs, "legacy database migrated")
	require.Contains(t, logs, "sessions=1 diffs=6")
	require.Less(t, strings.Index(logs, "legacy database migrated"), strings.Index(logs, `msg="storage ready"`))
	require.NoFileExists(t, filepath.Join(home, "host.db"))
	require.NoError(t, d.Close(context.Background()))

	b.logs = &logBuffer{}
	b.cfg.Logger = slog.New(slog.NewTextHandler(b.logs, nil))
	d, err = Open(t.Context(), b.cfg)
	require.NoError(t, err)
	defer func() { require.NoError(t, d.Close(context.Background())) }()
	require.NotContains(t, b.logs.String(), "legacy database", "the second boot migrates nothing")
	last, err = d.st.LastNonce(t.Context(), 901)
	require.NoError(t, err)
	require.Equal(t, uint64(6), last)
}

func unusedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}
