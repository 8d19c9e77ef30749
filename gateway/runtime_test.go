package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/host"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/store/sqlite"
	"github.com/devshard/devshard/versiond"
)

// fakeVersiond is a fake of the versiond in front of one host: it answers
// GET /devshard/runtime from the states a test sets, as a long poll, and
// routes /devshard/<name>/... to that version's backend with the prefix
// stripped, recording each call's version and path.
type fakeVersiond struct {
	srv *httptest.Server

	mu       sync.Mutex
	revision uint64
	changed  chan struct{} // closed and replaced at every change
	order    []string      // versions, oldest first
	states   map[string]versiond.State
	backends map[string]http.Handler
	calls    []routedCall
}

type routedCall struct{ version, path string }

func newFakeVersiond(t *testing.T) *fakeVersiond {
	v := &fakeVersiond{revision: 1, changed: make(chan struct{}), states: map[string]versiond.State{}, backends: map[string]http.Handler{}}
	v.srv = httptest.NewServer(http.HandlerFunc(v.serve))
	t.Cleanup(v.srv.Close)
	return v
}

// set puts version name, served by backend, in state st.
func (v *fakeVersiond) set(name string, st versiond.State, backend http.Handler) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.states[name]; !ok {
		v.order = append(v.order, name)
	}
	v.states[name] = st
	if backend != nil {
		v.backends[name] = backend
	}
	v.revision++
	close(v.changed)
	v.changed = make(chan struct{})
}

func (v *fakeVersiond) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/devshard/runtime" {
		v.serveRuntime(w, r)
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/devshard/")
	name, path, _ := strings.Cut(rest, "/")
	v.mu.Lock()
	st, backend := v.states[name], v.backends[name]
	if ok && backend != nil && st == versiond.StateServing {
		v.calls = append(v.calls, routedCall{name, "/" + path})
	}
	v.mu.Unlock()
	switch {
	case !ok || backend == nil:
		http.Error(w, fmt.Sprintf("version %q is not served on this host", name), http.StatusNotFound)
		return
	case st != versiond.StateServing:
		http.Error(w, fmt.Sprintf("version %q is not ready yet (%s)", name, st), http.StatusServiceUnavailable)
		return
	}
	out := r.Clone(r.Context())
	out.URL.Path, out.URL.RawPath = "/"+path, ""
	backend.ServeHTTP(w, out)
}

func (v *fakeVersiond) serveRuntime(w http.ResponseWriter, r *http.Request) {
	after, hasAfter := uint64(0), r.URL.Query().Has("after")
	if hasAfter {
		var err error
		if after, err = strconv.ParseUint(r.URL.Query().Get("after"), 10, 64); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	wait, _ := time.ParseDuration(r.URL.Query().Get("wait"))
	timer := time.NewTimer(min(wait, 5*time.Second))
	defer timer.Stop()
	for {
		v.mu.Lock()
		rt := versiond.Runtime{Revision: v.revision, Versions: []versiond.RuntimeVersion{}}
		for _, name := range v.order {
			rt.Versions = append(rt.Versions, versiond.RuntimeVersion{Name: name, State: v.states[name], Path: "/devshard/" + name + "/"})
			if v.states[name] == versiond.StateServing {
				rt.Preferred = name
			}
		}
		changed := v.changed
		v.mu.Unlock()
		if !hasAfter || rt.Revision > after {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(rt)
			return
		}
		select {
		case <-changed:
		case <-timer.C:
			hasAfter = false // answer with the config as it is
		case <-r.Context().Done():
			return
		}
	}
}

// versionsOf lists, per escrow session path, the versions that served it.
func (v *fakeVersiond) escrowCalls(id uint64) map[string]int {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := map[string]int{}
	prefix := fmt.Sprintf("/v1/sessions/%d/", id)
	for _, c := range v.calls {
		if strings.HasPrefix(c.path, prefix) {
			out[c.version]++
		}
	}
	return out
}

// versionedBundle is a gateway over three hosts, each behind a fake
// versiond that runs versions v1 and v2 as two real host processes (two
// engines, each with its own storage, knowing its version); the chain
// approves v1, then v2.
type versionedBundle struct {
	*bundle
	versionds []*fakeVersiond
	engines   []map[string]*host.Engine // per host, by version
}

func setupVersioned(t *testing.T) *versionedBundle {
	t.Helper()
	quiet := slog.New(slog.DiscardHandler)
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	b := &bundle{fixture: f, chain: newFakeChain(f), statePath: filepath.Join(t.TempDir(), "state.db")}
	b.chain.approve("v1", "v2")
	vb := &versionedBundle{bundle: b}
	for _, key := range f.Hosts {
		vd := newFakeVersiond(t)
		engines := map[string]*host.Engine{}
		for _, name := range []string{"v1", "v2"} {
			st, err := sqlite.Open(context.Background(), t.TempDir(), sqlite.Options{})
			require.NoError(t, err)
			t.Cleanup(func() { st.Close() })
			e := host.New(host.Config{Key: key, Store: st, Escrows: hostEscrows{b.chain}, Executor: executor.Builtin{}, Logger: quiet,
				ChainID: testChainID, RuntimeVersion: name})
			e.MarkReady()
			t.Cleanup(e.Wait)
			engines[name] = e
			vd.set(name, versiond.StateServing, host.Handler(e, name))
		}
		b.chain.register(key.Address(), vd.srv.URL)
		vb.versionds = append(vb.versionds, vd)
		vb.engines = append(vb.engines, engines)
	}
	b.cfg = Config{Key: f.Gateway, ChainID: testChainID, Chain: b.chain, Logger: quiet, FlushEvery: time.Hour, EpochPoll: time.Hour}
	return vb
}

// hostURLs is every host's registered URL, as the chain lists them.
func (vb *versionedBundle) hostURLs(t *testing.T) []string {
	urls, err := vb.chain.CandidateURLs(t.Context())
	require.NoError(t, err)
	return urls
}

// An escrow's requests go to the version it was created under, and new
// escrows are created under the newest version every host serves: while
// one host only installs v2, new escrows stay on v1; once it serves v2,
// the next escrow is created under v2, while the v1 escrow's traffic, its
// settlement included, still reaches v1 alone.
func TestEscrowsFollowTheirRuntimeVersion(t *testing.T) {
	t.Parallel()
	vb := setupVersioned(t)
	vb.versionds[2].set("v2", versiond.StateInstalling, nil)
	vb.gw, vb.state = vb.startGateway(t)

	c := vb.complete(t, ask(1))
	first := c.EscrowID
	require.Equal(t, "v1", vb.chain.snapshot(first).RuntimeVersion, "host 2 does not serve v2 yet")
	vb.complete(t, ask(2))

	vb.versionds[2].set("v2", versiond.StateServing, nil)
	urls := vb.hostURLs(t)
	require.Eventually(t, func() bool {
		v, err := vb.gw.runtimes.choose(t.Context(), []string{"v1", "v2"}, urls)
		return err == nil && v == "v2"
	}, 10*time.Second, 20*time.Millisecond, "the gateway learns that every host serves v2")

	vb.gw.retire(vb.escrowOf(t, first)) // the next request needs a new escrow
	c = vb.complete(t, ask(3))
	second := c.EscrowID
	require.NotEqual(t, first, second)
	require.Equal(t, "v2", vb.chain.snapshot(second).RuntimeVersion)
	views := map[uint64]string{}
	for _, v := range vb.gw.Escrows() {
		views[v.ID] = v.Runtime
	}
	require.Equal(t, "v2", views[second], "an operator sees each escrow's runtime")
	ctx, cancel := context.WithTimeout(t.Context(), settleWait)
	defer cancel()
	require.NoError(t, vb.gw.SettleAll(ctx), "both escrows settle, each through its own runtime")
	settlements, _, rejected := vb.chain.settledState()
	require.Empty(t, rejected)
	require.Len(t, settlements, 2)

	for i, vd := range vb.versionds {
		require.Equal(t, []string{"v1"}, keys(vd.escrowCalls(first)), "host %d: escrow %d reached v1 only", i, first)
		require.Equal(t, []string{"v2"}, keys(vd.escrowCalls(second)), "host %d: escrow %d reached v2 only", i, second)
	}
}

func keys(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// The rule for a new escrow's runtime version, host by host: the approved
// version most hosts serve, the newest among equals; a host not behind
// versiond, one still installing and one that does not answer serve none;
// with none served at all, a refusal that says what each host said.
func TestChooseRuntime(t *testing.T) {
	t.Parallel()
	backend := http.NotFoundHandler()
	both := newFakeVersiond(t) // serves v1 and v2
	both.set("v1", versiond.StateServing, backend)
	both.set("v2", versiond.StateServing, backend)
	installing := newFakeVersiond(t) // serves v1, installs v2
	installing.set("v1", versiond.StateServing, backend)
	installing.set("v2", versiond.StateInstalling, nil)
	plain := httptest.NewServer(http.NotFoundHandler()) // a host without versiond
	t.Cleanup(plain.Close)
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close() // a host that does not answer

	r := newRuntimes(t.Context(), slog.New(slog.DiscardHandler))
	t.Cleanup(r.close)
	approved := []string{"v1", "v2"}
	for _, c := range []struct {
		name  string
		hosts []string
		want  string
	}{
		{"every host serves both: the newest", []string{both.srv.URL}, "v2"},
		{"one host still installs v2: the version all serve", []string{both.srv.URL, installing.srv.URL}, "v1"},
		{"a host without versiond keeps no one from v2", []string{both.srv.URL, plain.URL}, "v2"},
		{"a host that does not answer counts for none", []string{both.srv.URL, gone.URL}, "v2"},
	} {
		got, err := r.choose(t.Context(), approved, c.hosts)
		require.NoError(t, err, c.name)
		require.Equal(t, c.want, got, c.name)
	}

	got, err := r.choose(t.Context(), nil, []string{gone.URL})
	require.NoError(t, err)
	require.Empty(t, got, "a chain that approves no version gets escrows without one")

	_, err = r.choose(t.Context(), approved, []string{plain.URL, gone.URL})
	require.ErrorIs(t, err, ErrNoRuntime)
	require.ErrorContains(t, err, "the chain approves v1, v2, and of the 2 hosts a new escrow may be grouped with, none serves one ("+
		plain.URL+" runs no versiond; "+gone.URL+" did not answer: ")
	status, _, _ := classify(err)
	require.Equal(t, http.StatusServiceUnavailable, status)
}

// Once governance retires the version an open escrow was created under,
// the gateway settles that escrow, and the next request opens one under a
// version that is still approved.
func TestEscrowOfARetiredVersionIsSettled(t *testing.T) {
	t.Parallel()
	vb := setupVersioned(t)
	vb.versionds[2].set("v2", versiond.StateInstalling, nil)
	vb.gw, vb.state = vb.startGateway(t)
	first := vb.complete(t, ask(1)).EscrowID
	require.Equal(t, "v1", vb.chain.snapshot(first).RuntimeVersion)

	vb.gw.retireUnapproved()
	require.Equal(t, first, vb.complete(t, ask(2)).EscrowID, "v1 is still approved: its escrow takes requests")

	vb.chain.approve("v2")
	vb.versionds[2].set("v2", versiond.StateServing, nil)
	vb.gw.retireUnapproved()
	second := vb.complete(t, ask(3)).EscrowID
	require.NotEqual(t, first, second)
	require.Equal(t, "v2", vb.chain.snapshot(second).RuntimeVersion)
	ctx, cancel := context.WithTimeout(t.Context(), settleWait)
	defer cancel()
	require.NoError(t, vb.gw.SettleAll(ctx))
	_, _, rejected := vb.chain.settledState()
	require.Empty(t, rejected)
}

// A restarted gateway sends a resumed escrow's requests to the version it
// was created under, though every host now serves a newer one.
func TestRestartKeepsTheEscrowsRuntime(t *testing.T) {
	t.Parallel()
	vb := setupVersioned(t)
	vb.versionds[2].set("v2", versiond.StateInstalling, nil)
	vb.gw, vb.state = vb.startGateway(t)
	first := vb.complete(t, ask(1)).EscrowID
	require.Equal(t, "v1", vb.chain.snapshot(first).RuntimeVersion)

	vb.versionds[2].set("v2", versiond.StateServing, nil)
	vb.gw.halt()
	require.NoError(t, vb.state.Close())
	vb.gw, vb.state = vb.startGateway(t)
	require.Equal(t, first, vb.complete(t, ask(2)).EscrowID, "the resumed escrow goes on")
	for i, vd := range vb.versionds {
		require.Equal(t, []string{"v1"}, keys(vd.escrowCalls(first)), "host %d", i)
	}
	require.Equal(t, 1, vb.chain.createdCount())
}

// While no host serves a version the chain approves, the gateway is not
// ready and a request that needs an escrow fails with 503 and what each
// host said, rather than opening an escrow no host could serve.
func TestNoSharedRuntimeRefusesNewEscrows(t *testing.T) {
	t.Parallel()
	vb := setupVersioned(t)
	for _, vd := range vb.versionds {
		vd.set("v3", versiond.StateInstalling, nil)
	}
	vb.chain.approve("v3") // the hosts serve v1 and v2, and install v3
	vb.gw, vb.state = vb.startGateway(t)

	ok, why := vb.gw.readiness(t.Context())
	require.False(t, ok)
	require.Contains(t, why, "no escrow is open and none can be: no host serves an approved runtime version: the chain approves v3, and of the 3 hosts")
	require.Contains(t, why, vb.versionds[0].srv.URL+" serves v1, v2")

	srv := vb.api(t, APIConfig{})
	resp := postChat(t, srv.URL, chatBody(t, ask(1), nil))
	defer resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Zero(t, vb.chain.createdCount())

	for _, vd := range vb.versionds {
		vd.set("v3", versiond.StateServing, http.NotFoundHandler()) // no escrow is opened here
	}
	require.Eventually(t, func() bool { ok, _ := vb.gw.readiness(t.Context()); return ok }, 10*time.Second, 20*time.Millisecond)
}

// A halting gateway stops every follower, and an escrow creation still in
// flight starts none: no host is followed past the gateway's end.
func TestRuntimesStartNoFollowerAfterClose(t *testing.T) {
	t.Parallel()
	vd := newFakeVersiond(t)
	vd.set("v1", versiond.StateServing, http.NotFoundHandler())
	r := newRuntimes(t.Context(), slog.New(slog.DiscardHandler))
	got, err := r.choose(t.Context(), []string{"v1"}, []string{vd.srv.URL})
	require.NoError(t, err)
	require.Equal(t, "v1", got)

	r.close()
	start := time.Now()
	_, err = r.choose(t.Context(), []string{"v1"}, []string{vd.srv.URL})
	require.ErrorIs(t, err, ErrNoRuntime)
	require.Less(t, time.Since(start), r.firstWait, "nothing to wait for")
	r.mu.Lock()
	defer r.mu.Unlock()
	require.Empty(t, r.hosts, "no follower started after close")
}

// A host whose versiond answers every long poll at once, with a new
// revision each time, is asked no faster than minGap: one host cannot
// keep the gateway polling flat out.
func TestRuntimePollsOfAHastyHostAreSpaced(t *testing.T) {
	t.Parallel()
	var polls atomic.Int64
	hasty := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := polls.Add(1)
		json.NewEncoder(w).Encode(versiond.Runtime{Revision: uint64(n), Preferred: "v1",
			Versions: []versiond.RuntimeVersion{{Name: "v1", State: versiond.StateServing, Path: "/devshard/v1/"}}})
	}))
	t.Cleanup(hasty.Close)
	r := newRuntimes(t.Context(), slog.New(slog.DiscardHandler))
	t.Cleanup(r.close)
	got, err := r.choose(t.Context(), []string{"v1"}, []string{hasty.URL})
	require.NoError(t, err)
	require.Equal(t, "v1", got)
	time.Sleep(time.Second)
	require.LessOrEqual(t, polls.Load(), int64(time.Second/runtimeMinGap)+2, "polls in about a second, at least %s apart", runtimeMinGap)
	require.GreaterOrEqual(t, polls.Load(), int64(2), "the host is still followed")
}
