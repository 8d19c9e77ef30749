package gateway

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestStatusJSONShowsEscrowsHostsAndRecentRequests(t *testing.T) {
	t.Parallel()
	b := setup(t)
	srv := b.api(t, APIConfig{})
	resp := postChat(t, srv.URL, chatBody(t, ask(1), nil))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp = postChat(t, srv.URL, []byte(`{"model":`))
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)

	// A request is counted once its handler returns, which may be just
	// after its client has the answer.
	var s Status
	require.Eventually(t, func() bool {
		s = Status{}
		require.Equal(t, http.StatusOK, getJSON(t, srv.URL, "/status.json", &s))
		n := 0
		for _, m := range s.Minutes {
			n += m.Requests
		}
		return n == 2
	}, settleWait, 10*time.Millisecond)
	require.True(t, s.Ready, s.Reason)
	require.Equal(t, b.gw.Address().String(), s.Address)
	require.Len(t, s.Escrows, 1)
	e := b.gw.Escrows()[0]
	require.Equal(t, e, s.Escrows[0])
	require.Positive(t, e.Nonce)
	require.Equal(t, "PHASE_ACTIVE", e.Phase)

	require.Len(t, s.Hosts, len(b.hosts), "every member of the escrow, once")
	executorURL := b.escrowOf(t, e.ID).out.members[0].url
	states := map[string]HostStatus{}
	for _, h := range s.Hosts {
		states[h.URL] = h
	}
	asked := 0
	for _, h := range states {
		switch h.State {
		case "up":
			asked++
			require.Equal(t, 1, h.Requests)
			require.Zero(t, h.Failures)
		case "idle":
			require.Zero(t, h.Requests)
		default:
			t.Fatalf("host %s is %s; expected up or idle", h.URL, h.State)
		}
	}
	require.Equal(t, 1, asked, "one host executed the one request")
	require.Contains(t, states, executorURL)

	require.Len(t, s.Minutes, statusMinutes)
	var requests, errs int
	for _, m := range s.Minutes {
		requests += m.Requests
		errs += m.Errors
	}
	require.Equal(t, 2, requests)
	require.Equal(t, 1, errs, "the unparsable request is an error")
}

func TestWindowForgetsOldMinutes(t *testing.T) {
	t.Parallel()
	w := newWindow(3)
	t0 := time.Date(2026, 1, 1, 12, 0, 30, 0, time.UTC)
	w.add(t0, false)
	w.add(t0.Add(time.Minute), true)
	got := w.read(t0.Add(time.Minute))
	require.Equal(t, []MinuteStatus{
		{Start: t0.Add(-time.Minute).Truncate(time.Minute)},
		{Start: t0.Truncate(time.Minute), Requests: 1},
		{Start: t0.Add(time.Minute).Truncate(time.Minute), Requests: 1, Errors: 1},
	}, got)
	// Three minutes on, the first minute's slot is another minute's.
	got = w.read(t0.Add(3 * time.Minute))
	require.Equal(t, []MinuteStatus{
		{Start: t0.Add(time.Minute).Truncate(time.Minute), Requests: 1, Errors: 1},
		{Start: t0.Add(2 * time.Minute).Truncate(time.Minute)},
		{Start: t0.Add(3 * time.Minute).Truncate(time.Minute)},
	}, got, "the first minute has left the window")
}

// chromium is the path of a headless Chromium, or the test fails saying
// how to install one.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("this test renders the status page in headless Chromium, which is not installed: apt-get install -y chromium (scripts/test.sh installs it when run as root)")
	return ""
}

// renderPage loads url in headless Chromium, lets the page's scripts run
// for budget of virtual time, and returns the DOM they left.
func renderPage(t *testing.T, url string, budget time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium(t), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
		"--user-data-dir="+t.TempDir(), fmt.Sprintf("--virtual-time-budget=%d", budget.Milliseconds()), "--dump-dom", url)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "chromium: %s", stderr.String())
	return stdout.String()
}

// The status page loads without a script error and shows the escrow a
// request just opened.
func TestStatusPageShowsTheOpenEscrow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	srv := b.api(t, APIConfig{})
	resp := postChat(t, srv.URL, chatBody(t, ask(1), nil))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	e := b.gw.Escrows()[0]

	dom := renderPage(t, srv.URL+"/status", 4*time.Second)
	require.Regexp(t, `<pre id="errors"></pre>`, dom, "the page reported an error")
	require.Regexp(t, `<span id="ready" class="ready">ready</span>`, dom)
	row := regexp.MustCompile(fmt.Sprintf(`<tr data-key="%d"><td class="n">%d</td><td class="n">%d</td><td>%s</td><td>%s</td><td class="n">%d</td><td class="n">%d</td>`,
		e.ID, e.ID, e.Epoch, e.Status, e.Phase, e.Nonce, e.Balance))
	require.Regexp(t, row, dom, "the escrow's row, with its phase, nonce and balance")
	require.Regexp(t, `<td class="up">up</td>`, dom, "the executor host is up")
}
