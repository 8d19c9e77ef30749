package host

import (
	"log/slog"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/session"
)

// grantingChain is the daemon's chain in memory with warm-key grants.
type grantingChain struct {
	*daemonChain
	grants warmGrants
}

func (c grantingChain) Authorizer() session.Authorizer { return c.grants }

// A proxy host starts only with a key the primary's account granted: with
// any other, every vote it cast would be refused. Started, it serves its
// workers' routes and no session route, and closes cleanly.
func TestProxyDaemonNeedsAGrantedKey(t *testing.T) {
	t.Parallel()
	account, warm := newKey(t, 911).Address(), newKey(t, 912)
	chain := grantingChain{daemonChain: &daemonChain{id: "devshard-daemon", epoch: 2}, grants: warmGrants{}}
	cfg := ProxyConfig{Listen: "127.0.0.1:0", Primary: "http://127.0.0.1:1", Account: account, Key: warm, Chain: chain,
		Executor: executor.Builtin{}, Version: "test", Logger: slog.New(slog.NewTextHandler(&logBuffer{}, nil))}
	_, err := OpenProxy(t.Context(), cfg)
	require.ErrorContains(t, err, "is not granted by the primary's account")
	require.ErrorContains(t, err, "authz grant")

	chain.grants[warm.Address()] = account
	d, err := OpenProxy(t.Context(), cfg)
	require.NoError(t, err)
	status, body := get(t, d.URL()+"/readyz")
	require.Equal(t, http.StatusOK, status, body)
	status, body = get(t, d.URL()+hostapi.GetDiffs.For(7))
	require.Equal(t, http.StatusNotFound, status, "a proxy serves no session route: %s", body)
	status, body = get(t, d.URL()+"/version")
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, body, account.String(), "its workers sign for the primary's account")
	require.NoError(t, d.Close(t.Context()))
}
