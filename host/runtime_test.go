package host

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/jobs"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/store"
)

// runtimesOf names the runtime version each host of a bundle serves.
func runtimesOf(names ...string) func(i int, c *Config) *jobs.Queue {
	return func(i int, c *Config) *jobs.Queue {
		c.RuntimeVersion = names[i]
		return nil
	}
}

// A host process behind versiond serves only the escrows created under
// its runtime version: a diff misrouted to another version's process is
// refused with 409 before the session is stored there, while the right
// version, and a host with no version name, take it.
func TestHostRefusesAnEscrowOfAnotherRuntime(t *testing.T) {
	t.Parallel()
	b := setupTuned(t, runtimesOf("v2", "v1", ""))
	b.f.Snapshot.RuntimeVersion = "v1" // before any host loads it
	d, err := b.gw.Next()
	require.NoError(t, err)

	status, _, body := b.send(t, 0, d, nil)
	require.Equal(t, http.StatusConflict, status, body)
	require.Contains(t, body, fmt.Sprintf("escrow %d was created under runtime v1; this host process serves v2, so send it to /devshard/v1/", d.EscrowId))
	_, err = b.stores[0].Session(t.Context(), d.EscrowId)
	require.ErrorIs(t, err, store.ErrNotFound, "the wrong runtime stored nothing")

	for i := 1; i < 3; i++ {
		status, _, body = b.send(t, i, d, nil)
		require.Equal(t, http.StatusOK, status, "host %d: %s", i, body)
	}
}

// An escrow that names no runtime version belongs to hosts that run no
// versiond; a process that serves a named version refuses it.
func TestNamedHostRefusesAnUnnamedEscrow(t *testing.T) {
	t.Parallel()
	b := setupTuned(t, runtimesOf("v1", "", ""))
	d, err := b.gw.Next()
	require.NoError(t, err)
	status, _, body := b.send(t, 0, d, nil)
	require.Equal(t, http.StatusConflict, status, body)
	require.Contains(t, body, fmt.Sprintf("escrow %d names no runtime version; this host process serves runtime v1", d.EscrowId))
}

// routedBook reaches each host the way versiond does: below
// /devshard/<version>/, stripped on the way; any other path is a 404.
type routedBook struct {
	mu    sync.Mutex
	urls  map[signing.Address]string
	paths []string // every path a peer call arrived at
}

func (p *routedBook) PeerURL(_ context.Context, addr signing.Address) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.urls[addr], nil
}

func (p *routedBook) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.paths...)
}

// Host-to-host calls about an escrow (self-settlement's reads, re-gossip)
// go to the peer's route for the escrow's runtime version; the fake
// versiond in front of each host answers 404 to any other path.
func TestPeerCallsGoToTheEscrowsRuntime(t *testing.T) {
	t.Parallel()
	b := setupTuned(t, runtimesOf("v1", "v1", "v1"))
	b.f.Snapshot.RuntimeVersion = "v1"
	book := &routedBook{urls: map[signing.Address]string{}}
	for i, h := range b.hosts {
		target, err := url.Parse(b.urls[i])
		require.NoError(t, err)
		child := httputil.NewSingleHostReverseProxy(target)
		versiond := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			book.mu.Lock()
			book.paths = append(book.paths, r.URL.Path)
			book.mu.Unlock()
			rest, ok := strings.CutPrefix(r.URL.Path, "/devshard/v1/")
			if !ok {
				http.NotFound(w, r)
				return
			}
			r.URL.Path = "/" + rest
			child.ServeHTTP(w, r)
		}))
		t.Cleanup(versiond.Close)
		book.urls[h.Address()] = versiond.URL
		h.cfg.Peers = book // before any traffic
	}
	id := b.f.Snapshot.EscrowId

	confirm, finish := b.runOnHost1(t) // nonce 1
	read := newPeerReads(b.hosts[0], book)
	diffs, err := read.diffs(t.Context(), b.hosts[1].Address(), b.f.Snapshot, 1)
	require.NoError(t, err)
	require.Len(t, diffs, 1)
	sigs, err := read.signatures(t.Context(), b.hosts[2].Address(), b.f.Snapshot, 1)
	require.NoError(t, err)
	require.Len(t, sigs, 1)

	b.next(t, nil, confirm) // the finish is left out until it is due for gossip
	for b.gw.Replica.Nonce() < 7 {
		b.next(t, nil)
	}
	b.tick()
	for _, i := range []int{0, 2} {
		require.True(t, holds(b.pooled(t, i), finish), "host %d got host 1's finish through versiond", i)
	}
	require.Equal(t, []string{
		fmt.Sprintf("/devshard/v1/v1/sessions/%d/diffs", id),
		fmt.Sprintf("/devshard/v1/v1/sessions/%d/signatures", id),
		fmt.Sprintf("/devshard/v1/v1/sessions/%d/gossip", id),
		fmt.Sprintf("/devshard/v1/v1/sessions/%d/gossip", id),
	}, book.seen())
}
