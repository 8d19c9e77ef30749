package devnet

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/versiond"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// TestUpgrade runs a devnet whose hosts serve through versiond, and
// upgrades its runtime by governance: v1 (the devnet's build) serves on
// every host; a proposal approving a v2 with a wrong sha256 and a version
// whose child crashes on start changes nothing that serves; the proposal
// approving the real v2 (a build stamped v2-test, served slowly over
// HTTPS so a versiond can be killed mid-download) has every host run v2
// beside v1 while requests flow without a failure; new escrows then open
// under v2 while those opened under v1 settle under v1; and a proposal
// removing v1 has every host drain it, stop it and remove its files.
func TestUpgrade(t *testing.T) {
	began := time.Now()
	v1bin, err := binary()
	require.NoError(t, err)
	// The second build links while the devnet starts.
	v2built := make(chan error, 1)
	v2bin := filepath.Join(t.TempDir(), "devshard")
	go func() { v2built <- buildStamped(v2bin, "v2-test") }()

	e := startNetwork(t, 6*time.Minute, func(c *Config) {
		c.Versiond = true
		c.Hosts = 2
		c.ThinkTime = 2 * time.Millisecond
	})
	nw := e.nw
	require.NotNil(t, nw.Binaries)
	for _, h := range nw.Hosts {
		require.Equal(t, h.PublicURL(), h.URL, "a host registers versiond's address; the gateway adds each escrow's version route")
	}
	v1 := nw.Binaries.files[RuntimeV1]
	require.Equal(t, v1bin, v1.path, "the devnet serves its own build as v1")
	genesis := approved(t, e)
	require.Len(t, genesis, 1)
	require.Equal(t, RuntimeV1, genesis[0].Name)
	require.True(t, strings.HasPrefix(genesis[0].Url, "https://"), "versiond downloads only over https: %s", genesis[0].Url)

	t.Run("v1 serves through versiond on every host", func(t *testing.T) {
		e.t = t
		for _, h := range nw.Hosts {
			rt := runtimeOf(t, h)
			require.Equal(t, RuntimeV1, rt.Preferred, "%s", h.Name)
			require.Equal(t, []string{"v1=serving"}, states(rt, "v1", "v2"), "%s", h.Name)
			require.Equal(t, http.StatusOK, httpStatus(t, route(h, RuntimeV1)+"/readyz"), "%s: v1's route reaches its child", h.Name)
		}
		e.send(6, 2, "v1")
		for _, esc := range escrowsOnChain(t, e) {
			require.Equal(t, RuntimeV1, esc.Snapshot.RuntimeVersion, "escrow %d is created under the only version served", esc.Id)
		}
	})

	// A v2 whose approved sha256 is not its binary's, and a version whose
	// child exits at once.
	crashy := filepath.Join(t.TempDir(), "crashy")
	require.NoError(t, os.WriteFile(crashy, []byte("#!/bin/sh\necho 'crashy: this build fails at start' >&2\nexit 3\n"), 0o755))
	crash, err := nw.Binaries.Publish("crashy", crashy, 0)
	require.NoError(t, err)
	require.NoError(t, <-v2built)
	v2, err := nw.Binaries.Publish("v2", v2bin, 32<<20) // about 5 s a download
	require.NoError(t, err)
	// The wrong v2 is a small file, so its retried downloads are over
	// long before the real v2's begins.
	badV2 := devshardtypes.ApprovedVersion{Name: "v2", Url: crash.Url, Sha256: strings.Repeat("ab", 32)}

	t.Run("a wrong sha256 is refused and a crashing child is never routed to", func(t *testing.T) {
		e.t = t
		require.NoError(t, nw.ProposeVersions(e.ctx, "approve v2 (wrong sha256) and crashy", []devshardtypes.ApprovedVersion{genesis[0], badV2, crash}))
		for _, h := range nw.Hosts {
			require.Eventually(t, func() bool {
				return metric(t, h.PublicURL(), `devshard_versiond_hash_mismatches_total{version="v2"}`) >= 1 &&
					metric(t, h.PublicURL(), `devshard_versiond_restarts_total{version="crashy"}`) >= 2
			}, 60*time.Second, 250*time.Millisecond, "%s refuses v2's bytes and restarts crashy", h.Name)
			log, err := os.ReadFile(h.LogPath)
			require.NoError(t, err)
			require.Contains(t, string(log), "version failed", "%s logs v2's failure", h.Name)
			require.Regexp(t, `version=v2 .*sha256 mismatch`, string(log), "%s says v2's bytes do not match the approved sha256", h.Name)
			require.Regexp(t, `version crashy: child exited .*restarting in 2s`, string(log), "%s restarts crashy with a doubling backoff", h.Name)
			st := statusOf(t, h)
			require.Contains(t, lastError(st, "v2"), "sha256", "%s: GET /devshard/status shows v2's mismatch", h.Name)
			require.Contains(t, lastError(st, "crashy"), "child exited", "%s: GET /devshard/status shows crashy's exit", h.Name)
			child, err := os.ReadFile(h.ChildLog("crashy"))
			require.NoError(t, err)
			require.Contains(t, string(child), "this build fails at start", "crashy's exits are in its child log")
		}
		// For a few seconds of crashy's restarts: it never serves, its route
		// answers 503 with Retry-After, v2 serves nothing, v1 serves on.
		until := time.Now().Add(4 * time.Second)
		for time.Now().Before(until) {
			for _, h := range nw.Hosts {
				rt := runtimeOf(t, h)
				require.Equal(t, RuntimeV1, rt.Preferred, "%s", h.Name)
				for _, v := range rt.Versions {
					switch v.Name {
					case "v1":
						require.Equal(t, versiond.StateServing, v.State)
					case "v2":
						require.Equal(t, versiond.StateInstalling, v.State, "%s: v2's binary never passes its check", h.Name)
					case "crashy":
						require.Equal(t, versiond.StateStarting, v.State, "%s: crashy is never ready", h.Name)
					}
				}
				resp, err := http.Get(route(h, "crashy") + "/readyz")
				require.NoError(t, err)
				resp.Body.Close()
				require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "%s routes nothing to crashy", h.Name)
				require.NotEmpty(t, resp.Header.Get("Retry-After"))
				require.Equal(t, http.StatusServiceUnavailable, httpStatus(t, route(h, "v2")+"/readyz"), "%s routes nothing to the wrong v2", h.Name)
				require.Equal(t, http.StatusOK, httpStatus(t, route(h, RuntimeV1)+"/readyz"), "%s: v1 serves on", h.Name)
			}
			time.Sleep(250 * time.Millisecond)
		}
		e.send(6, 2, "wrong-sha")
	})

	// openedUnderV1 counts the escrows opened before v2 was approved.
	var openedUnderV1 int
	t.Run("v2 runs beside v1 while requests flow; a versiond killed mid-download finishes cleanly", func(t *testing.T) {
		e.t = t
		// A trickle straight to v1's route on each host that is not
		// killed: versiond keeps routing to v1 while v2 comes up.
		victim := nw.Hosts[0]
		probes := startProbes(nw.Hosts[1:])
		openedUnderV1 = len(escrowsOnChain(t, e)) // before v2 is approved
		proposed := make(chan error, 1)
		go func() {
			proposed <- nw.ProposeVersions(e.ctx, "approve v2", []devshardtypes.ApprovedVersion{genesis[0], v2, crash})
		}()

		// host0's versiond is killed while v2's bytes come in, and started
		// again: it must remove the partial file and download anew.
		var partial string
		require.Eventually(t, func() bool {
			partial = downloading(t, victim)
			return partial != ""
		}, 60*time.Second, 50*time.Millisecond, "host0 starts downloading v2")
		time.Sleep(time.Second)
		victim.Kill()
		info, err := os.Stat(partial)
		require.NoError(t, err, "the kill left the partial download behind")
		require.Less(t, info.Size(), nw.Binaries.files["v2"].size(t), "the kill landed mid-download")
		require.NoError(t, victim.Start())
		require.NoError(t, <-proposed)
		require.Eventually(t, func() bool {
			_, err := os.Stat(partial)
			return os.IsNotExist(err)
		}, 30*time.Second, 50*time.Millisecond, "the restarted versiond deletes the partial download")

		// Requests through the gateway from when it serves again after
		// host0's restart (host0 downloads v2 anew) until both hosts serve
		// v2 beside v1: the switch itself fails none. While host0 was
		// down, and while the gateway still skipped it, an escrow whose
		// group drew only host0 could not be served: that is the kill's
		// doing, not the switch's, so the load starts after.
		require.NoError(t, victim.WaitHealthy(e.ctx, 60*time.Second))
		// The gateway skips a member that failed for a while after it
		// returns (an escrow may have drawn only host0): wait until it
		// serves again.
		require.Eventually(t, func() bool {
			_, err := e.client().Chat(e.ctx, ChatRequest{Model: executor.BuiltinModel, MaxTokens: 8,
				Messages: []executor.Message{{Role: "user", Content: "are you back?"}}}, false)
			return err == nil
		}, 60*time.Second, 500*time.Millisecond, "the gateway serves again after host0's restart")
		for _, h := range nw.Hosts {
			t.Logf("%s when the load starts: %v", h.Name, states(runtimeOf(t, h), "v1", "v2"))
		}
		load := e.startLoad(2, "switch")

		for _, h := range nw.Hosts {
			require.Eventually(t, func() bool {
				rt, err := readRuntime(h)
				return err == nil && rt.Preferred == "v2" && strings.Join(states(rt, "v1", "v2"), " ") == "v1=serving v2=serving"
			}, 90*time.Second, 250*time.Millisecond, "%s serves v2 beside v1", h.Name)
			require.Empty(t, downloading(t, h), "%s: no partial download is left", h.Name)
			installed := filepath.Join(h.VersiondDir(), "versions", "v2", v2.Sha256, "devshard")
			sum, err := fileSHA256(installed)
			require.NoError(t, err)
			require.Equal(t, v2.Sha256, sum, "%s: the installed v2 is the approved binary", h.Name)
			require.Equal(t, "v2-test", buildVersion(t, h, "v2"), "%s: the v2 child is the build stamped v2-test", h.Name)
			require.NotEqual(t, "v2-test", buildVersion(t, h, "v1"), "%s: v1 is still the devnet's own build", h.Name)
		}
		time.Sleep(3 * time.Second) // a few requests with both versions up
		ok, total, failed := probes.stop()
		t.Logf("GET /readyz through v1's route during the switch: %d/%d answered 200", ok, total)
		require.Positive(t, total)
		require.Empty(t, failed, "v1's route failed no request during the switch")
		recs := load.stop()
		rep := tallyOf(recs, func(loadRecord) bool { return true })
		t.Logf("requests through the gateway during the switch: %s", rep)
		logFailures(t, recs)
		require.Positive(t, rep.total)
		require.Equal(t, rep.total, rep.ok, "no request failed during the switch")
	})

	t.Run("new escrows go to v2; escrows opened under v1 settle under v1", func(t *testing.T) {
		e.t = t
		// Every host serves v2 now, so the gateway opens new escrows under
		// it (one may have opened already, late in the switch's load); the
		// open ones settle first so that new ones open.
		require.NoError(t, nw.Gateway.Gateway.SettleAll(e.ctx))
		before := escrowsOnChain(t, e)
		require.Positive(t, openedUnderV1)
		v1 := 0
		for i, esc := range before {
			if i < openedUnderV1 {
				require.Equal(t, RuntimeV1, esc.Snapshot.RuntimeVersion, "escrow %d was opened before v2 was approved", esc.Id)
			}
			if esc.Snapshot.RuntimeVersion == RuntimeV1 {
				v1++
				require.Equal(t, devshardtypes.EscrowSettled, esc.Status, "escrow %d, opened under v1, settled", esc.Id)
			}
		}
		require.GreaterOrEqual(t, v1, openedUnderV1)
		e.send(6, 2, "v2")
		after := escrowsOnChain(t, e)
		require.Greater(t, len(after), len(before), "the requests opened a new escrow")
		for _, esc := range after[len(before):] {
			require.Equal(t, "v2", esc.Snapshot.RuntimeVersion, "escrow %d is opened under the newest version every host serves", esc.Id)
		}
	})

	t.Run("removing v1 drains and stops it on every host", func(t *testing.T) {
		e.t = t
		// The gateway settled v1's escrows, so v1's sessions are closed and
		// it drains well before the bound.
		addrs := map[string]string{}
		for _, h := range nw.Hosts {
			addrs[h.Name] = childAddr(t, h, "v1")
		}
		require.NoError(t, nw.ProposeVersions(e.ctx, "retire v1", []devshardtypes.ApprovedVersion{v2}))
		for _, h := range nw.Hosts {
			require.Eventually(t, func() bool {
				rt, err := readRuntime(h)
				return err == nil && rt.Preferred == "v2" && len(states(rt, "v1", "crashy")) == 0
			}, 60*time.Second, 250*time.Millisecond, "%s retires v1 and crashy", h.Name)
			log, err := os.ReadFile(h.LogPath)
			require.NoError(t, err)
			require.Regexp(t, `version left the approved list; draining" version=v1`, string(log), "%s drains v1", h.Name)
			require.Regexp(t, `version retired; its child stopped and its files removed" version=v1`, string(log), "%s retires v1", h.Name)
			_, err = os.Stat(filepath.Join(h.VersiondDir(), "versions", "v1"))
			require.ErrorIs(t, err, os.ErrNotExist, "%s removed v1's files", h.Name)
			kept, err := filepath.Glob(filepath.Join(h.VersiondDir(), "retired", "v1-*", "child.log"))
			require.NoError(t, err)
			require.Len(t, kept, 1, "%s keeps v1's working directory, with its sessions' storage", h.Name)
			_, err = http.Get("http://" + addrs[h.Name] + "/readyz")
			require.Error(t, err, "%s: v1's child is stopped", h.Name)
			resp, err := http.Get(route(h, "v2") + "/readyz")
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode, "%s: v2 serves on", h.Name)
		}
	})
	t.Logf("TestUpgrade took %s", time.Since(began).Round(time.Second))
}

// buildStamped builds ./cmd/devshard into out, its version stamped.
func buildStamped(out, version string) error {
	cmd := exec.Command("go", "build", "-ldflags", "-X github.com/devshard/devshard/internal/buildinfo.version="+version, "-o", out, "../cmd/devshard")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/devshard stamped %s: %v\n%s", version, err, msg)
	}
	return nil
}

// approved is the chain's approved_versions.
func approved(t *testing.T, e *e2e) []devshardtypes.ApprovedVersion {
	res, err := devshardtypes.NewQueryClient(e.nw.Chain.Conn()).Params(e.ctx, &devshardtypes.QueryParamsRequest{})
	require.NoError(t, err)
	return res.Params.ApprovedVersions
}

// runtimeOf reads the host's runtime config from its versiond.
func runtimeOf(t *testing.T, h *Host) versiond.Runtime {
	t.Helper()
	rt, err := readRuntime(h)
	require.NoError(t, err)
	return rt
}

// readRuntime reads the host's runtime config, or says why it cannot (a
// versiond that is starting again does not answer yet).
func readRuntime(h *Host) (versiond.Runtime, error) {
	var rt versiond.Runtime
	resp, err := http.Get(h.PublicURL() + "/devshard/runtime")
	if err != nil {
		return rt, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return rt, fmt.Errorf("GET /devshard/runtime answered %s", resp.Status)
	}
	return rt, json.NewDecoder(resp.Body).Decode(&rt)
}

// states are the runtime's versions among names as name=state, sorted
// by name.
func states(rt versiond.Runtime, names ...string) []string {
	var out []string
	for _, v := range rt.Versions {
		if slices.Contains(names, v.Name) {
			out = append(out, v.Name+"="+string(v.State))
		}
	}
	slices.Sort(out)
	return out
}

// childAddr is the loopback address of the host's child running name.
func childAddr(t *testing.T, h *Host, name string) string {
	t.Helper()
	for _, v := range runtimeOf(t, h).Versions {
		if v.Name == name && v.Address != "" {
			return v.Address
		}
	}
	t.Fatalf("%s runs no child for %s", h.Name, name)
	return ""
}

// buildVersionLabel is the version label of a metric line (not its
// goversion label).
var buildVersionLabel = regexp.MustCompile(`[{,]version="([^"]*)"`)

// buildVersion is the version label of the build_info metric of the
// host's child running name.
func buildVersion(t *testing.T, h *Host, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + childAddr(t, h, name) + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(line, "devshard_host_build_info{") {
			continue
		}
		m := buildVersionLabel.FindStringSubmatch(line)
		require.NotNil(t, m, line)
		return m[1]
	}
	t.Fatalf("%s's %s child reports no devshard_host_build_info", h.Name, name)
	return ""
}

// downloading is the path of a download of v2 in progress in the host's
// versiond directory, past its first megabyte, or "".
func downloading(t *testing.T, h *Host) string {
	t.Helper()
	dir := filepath.Join(h.VersiondDir(), "versions")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".download-v2-") {
			continue
		}
		if info, err := e.Info(); err == nil && info.Size() > 1<<20 {
			return filepath.Join(dir, e.Name())
		}
	}
	return ""
}

// route is the base URL of version name on the host's versiond.
func route(h *Host, name string) string { return h.PublicURL() + "/devshard/" + name }

// httpStatus GETs url and returns its status code.
func httpStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

// statusOf reads GET /devshard/status of the host's versiond (the test
// runs on the host's machine, so it is answered).
func statusOf(t *testing.T, h *Host) versiond.Status {
	t.Helper()
	resp, err := http.Get(h.PublicURL() + "/devshard/status")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var st versiond.Status
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
	return st
}

// lastError is the last error of version name in st, or "".
func lastError(st versiond.Status, name string) string {
	for _, v := range st.Versions {
		if v.Name == name {
			return v.LastError
		}
	}
	return ""
}

// escrowsOnChain are every escrow the chain holds, by id.
func escrowsOnChain(t *testing.T, e *e2e) []devshardtypes.Escrow {
	t.Helper()
	q := devshardtypes.NewQueryClient(e.nw.Chain.Conn())
	var out []devshardtypes.Escrow
	for id := uint64(1); ; id++ {
		res, err := q.Escrow(e.ctx, &devshardtypes.QueryEscrowRequest{Id: id})
		if status.Code(err) == codes.NotFound {
			return out
		}
		require.NoError(t, err)
		out = append(out, res.Escrow)
	}
}

// probes GET /readyz on each host's v1 route in a loop.
type probes struct {
	done   chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	ok     int
	total  int
	failed []string
}

func startProbes(hosts []*Host) *probes {
	p := &probes{done: make(chan struct{})}
	for _, h := range hosts {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			c := &http.Client{Timeout: 5 * time.Second}
			for {
				select {
				case <-p.done:
					return
				case <-time.After(100 * time.Millisecond):
				}
				resp, err := c.Get(route(h, RuntimeV1) + "/readyz")
				p.mu.Lock()
				p.total++
				switch {
				case err != nil:
					p.failed = append(p.failed, err.Error())
				case resp.StatusCode != http.StatusOK:
					p.failed = append(p.failed, fmt.Sprintf("%s: %s", h.Name, resp.Status))
				default:
					p.ok++
				}
				p.mu.Unlock()
				if err == nil {
					resp.Body.Close()
				}
			}
		}()
	}
	return p
}

func (p *probes) stop() (ok, total int, failed []string) {
	close(p.done)
	p.wg.Wait()
	return p.ok, p.total, p.failed
}

// size is the served file's size.
func (f served) size(t *testing.T) int64 {
	info, err := os.Stat(f.path)
	require.NoError(t, err)
	return info.Size()
}
