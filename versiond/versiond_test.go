package versiond

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
)

// self is this test binary: the bytes every version installs.
var self = sync.OnceValues(func() ([]byte, string) {
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		panic(err)
	}
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
})

// otherSHA is a hash no served file has.
const otherSHA = "0000000000000000000000000000000000000000000000000000000000000001"

// mirror is the TLS server binaries are downloaded from. Every path
// serves this binary; /stall-once serves its first request only in part
// and then hangs, as a download interrupted by a crash would.
type mirror struct {
	*httptest.Server
	ca   string // its certificate as a PEM file
	hits sync.Map
}

func newMirror(t *testing.T) *mirror {
	t.Helper()
	bin, _ := self()
	mr := &mirror{}
	var stalled atomic.Bool
	hang := make(chan struct{})
	mr.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := mr.hits.LoadOrStore(r.URL.Path, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
		if r.URL.Path == "/stall-once" && stalled.CompareAndSwap(false, true) {
			w.Header().Set("Content-Length", fmt.Sprint(len(bin)))
			w.Write(bin[:len(bin)/2])
			w.(http.Flusher).Flush()
			select {
			case <-hang:
			case <-r.Context().Done():
			}
			return
		}
		w.Write(bin)
	}))
	t.Cleanup(func() { close(hang); mr.Close() })
	mr.ca = filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(mr.ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: mr.Certificate().Raw}), 0o644))
	return mr
}

func (mr *mirror) count(path string) int64 {
	n, ok := mr.hits.Load(path)
	if !ok {
		return 0
	}
	return n.(*atomic.Int64).Load()
}

// version is a version served by the mirror at /<name>.
func (mr *mirror) version(name string) Version {
	_, sha := self()
	return Version{Name: name, URL: mr.URL + "/" + name, SHA256: sha}
}

// bundle is one running Manager with its mirror and its public server.
type bundle struct {
	m      *Manager
	mirror *mirror
	dir    string
	reg    *prometheus.Registry
	src    ChanSource
	front  *httptest.Server
}

// setup runs a Manager with fast settings; tune may change them. The
// source is empty until the test sends a list.
func setup(t *testing.T, tune func(*Config)) *bundle {
	t.Helper()
	b := &bundle{mirror: newMirror(t), reg: prometheus.NewRegistry(), src: make(ChanSource, 1)}
	if tune == nil {
		tune = func(*Config) {}
	}
	b.dir = t.TempDir()
	b.start(t, tune)
	return b
}

func (b *bundle) start(t *testing.T, tune func(*Config)) {
	cfg := Config{
		Dir: b.dir, Source: b.src, TrustedCA: b.mirror.ca,
		Command:         []string{"{binary}", "versiond-helper", "{name}", "{listen}"},
		DownloadBackoff: Backoff{Min: 50 * time.Millisecond, Max: 400 * time.Millisecond},
		RestartBackoff:  Backoff{Min: 100 * time.Millisecond, Max: 800 * time.Millisecond},
		ReadyPoll:       20 * time.Millisecond,
		StopTimeout:     2 * time.Second,
		DrainBound:      10 * time.Second,
		MaxWait:         5 * time.Second,
		Registerer:      b.reg,
		Logger:          slog.New(slog.NewTextHandler(testLog{t}, nil)),
	}
	tune(&cfg)
	m, err := New(cfg)
	require.NoError(t, err)
	b.m = m
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- m.Run(ctx) }()
	b.front = httptest.NewServer(m.Handler())
	t.Cleanup(func() {
		b.front.Close()
		cancel()
		select {
		case err := <-ran:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Error("Run did not return 10s after its context ended")
		}
	})
}

func (b *bundle) approve(list ...Version) { b.src <- list }

// version is the status of the named version; ok is false if there is
// none.
func (b *bundle) version(name string) (VersionStatus, bool) {
	for _, v := range b.m.Status().Versions {
		if v.Name == name {
			return v, true
		}
	}
	return VersionStatus{}, false
}

func (b *bundle) waitState(t *testing.T, name string, want State) VersionStatus {
	t.Helper()
	require.Eventually(t, func() bool {
		v, _ := b.version(name)
		return v.State == want
	}, 15*time.Second, 10*time.Millisecond, "version %s never became %s", name, want)
	v, _ := b.version(name)
	return v
}

// get fetches path from the public server: its status and body.
func (b *bundle) get(t *testing.T, path string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(b.front.URL + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(body)
}

// Streams answered to POSTs through versiond are never cut. Once the
// child's answer starts, the server in front would read what is left of
// the request's body itself, while the proxy still sends it to the child;
// the proxy then failed its send, closed its connection to the child and
// cut the stream mid-way ("use of closed network connection"): about one
// stream in 250 on this machine, under load, which a gateway counts against
// the host.
func TestVersiondStreamsToPOSTsAreNeverCut(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.approve(b.mirror.version("v1"))
	b.waitState(t, "v1", StateServing)

	body := bytes.Repeat([]byte("x"), 3000)
	var cut atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 200 {
				resp, err := http.Post(b.front.URL+"/devshard/v1/stream", "application/json", bytes.NewReader(body))
				if err != nil {
					cut.Add(1)
					continue
				}
				got, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || !strings.HasSuffix(string(got), "data: 9\n\n") {
					cut.Add(1)
				}
			}
		})
	}
	wg.Wait()
	require.Zero(t, cut.Load(), "streams cut of 1,600")
}

// A version is downloaded, verified, started and routed to: the prefix
// is stripped, the body and every header (signature headers, the Host,
// X-Forwarded-For) arrive untouched, and a server-sent event stream
// arrives piece by piece.
func TestVersiondInstallsAndRoutes(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.approve(b.mirror.version("v1"))
	b.waitState(t, "v1", StateServing)

	_, sha := self()
	info, err := os.Stat(filepath.Join(b.dir, "versions", "v1", sha, "devshard"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o755), info.Mode().Perm())
	require.Empty(t, tempFiles(b.dir))

	req, err := http.NewRequest(http.MethodPost, b.front.URL+"/devshard/v1/echo?a=1&b=2", strings.NewReader(`{"diff":41}`))
	require.NoError(t, err)
	req.Header.Set("X-Devshard-Signature", "c2lnbmF0dXJl")
	req.Header.Set("X-Forwarded-For", "203.0.113.7")
	req.Host = "host.example:8080"
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var e echo
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&e))
	require.Equal(t, "/echo", e.Path)
	require.Equal(t, "a=1&b=2", e.Query)
	require.Equal(t, `{"diff":41}`, e.Body)
	require.Equal(t, "host.example:8080", e.Host)
	require.Equal(t, "c2lnbmF0dXJl", e.Header.Get("X-Devshard-Signature"))
	require.Equal(t, "203.0.113.7", e.Header.Get("X-Forwarded-For"))

	// The child sends "two" only after /release; reading "one" first
	// shows the proxy held nothing back.
	client := &http.Client{Timeout: 5 * time.Second}
	stream, err := client.Get(b.front.URL + "/devshard/v1/sse")
	require.NoError(t, err)
	defer stream.Body.Close()
	require.Equal(t, "text/event-stream", stream.Header.Get("Content-Type"))
	r := bufio.NewReader(stream.Body)
	line, err := r.ReadString('\n')
	require.NoError(t, err, "the first event did not arrive before the second was sent")
	require.Equal(t, "data: one\n", line)
	rel, _ := b.get(t, "/devshard/v1/release")
	require.Equal(t, http.StatusOK, rel.StatusCode)
	rest, err := io.ReadAll(r)
	require.NoError(t, err)
	require.Equal(t, "\ndata: two\n\n", string(rest))
	require.Equal(t, 1.0, value(b.m.m.downloads.WithLabelValues("ok")))
}

// A download whose bytes do not match the approved sha256 is deleted,
// reported in the log's status and metrics, retried with backoff, and
// never run; the other version serves meanwhile.
func TestVersiondRefusesWrongHash(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	bad := b.mirror.version("bad")
	bad.SHA256 = otherSHA
	b.approve(b.mirror.version("v1"), bad)
	b.waitState(t, "v1", StateServing)

	require.Eventually(t, func() bool {
		return value(b.m.m.hashMismatches.WithLabelValues("bad")) >= 3
	}, 10*time.Second, 10*time.Millisecond, "the download was not retried")
	st, _ := b.version("bad")
	require.Equal(t, StateInstalling, st.State)
	require.False(t, st.Running)
	require.Contains(t, st.LastError, "sha256 mismatch (approved "+otherSHA)
	require.GreaterOrEqual(t, value(b.m.m.downloads.WithLabelValues("hash_mismatch")), 3.0)
	require.NoDirExists(t, filepath.Join(b.dir, "versions", "bad", otherSHA))
	require.Empty(t, tempFiles(b.dir))
	_, err := os.Stat(filepath.Join(b.dir, "versions", "bad", "work", "child.log"))
	require.ErrorIs(t, err, os.ErrNotExist, "a child of the bad version was started")

	resp, body := b.get(t, "/devshard/bad/whoami")
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.NotEmpty(t, resp.Header.Get("Retry-After"))
	require.Contains(t, body, `version "bad" is not ready yet`)
	resp, body = b.get(t, "/devshard/v1/whoami")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "v1", body)

	// Retries back off: with 50ms doubling to 400ms, three tries take
	// at least 50+100ms.
	t0 := b.mirror.count("/bad")
	time.Sleep(400 * time.Millisecond)
	require.LessOrEqual(t, b.mirror.count("/bad")-t0, int64(3), "retries did not back off")
}

// An http:// URL is refused before any byte is fetched.
func TestVersiondRefusesHTTP(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	plain := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		t.Error("an http:// URL was fetched")
	}))
	defer plain.Close()
	v := b.mirror.version("plain")
	v.URL = plain.URL + "/plain"
	b.approve(v)
	require.Eventually(t, func() bool {
		st, _ := b.version("plain")
		return strings.Contains(st.LastError, "version URLs must be https")
	}, 5*time.Second, 10*time.Millisecond)
	require.GreaterOrEqual(t, value(b.m.m.downloads.WithLabelValues("refused")), 1.0)
	st, _ := b.version("plain")
	require.Equal(t, StateInstalling, st.State)
}

// A child that exits at start is restarted with backoff and gets no
// traffic until its /readyz answers; one that never comes up is never
// routed to.
func TestVersiondRestartsCrashedChild(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	began := time.Now()
	b.approve(b.mirror.version("flaky"), b.mirror.version("crash"))
	require.Eventually(t, func() bool { _, ok := b.version("flaky"); return ok }, 5*time.Second, time.Millisecond)
	for {
		resp, _ := b.get(t, "/devshard/flaky/whoami")
		st, _ := b.version("flaky")
		if resp.StatusCode == http.StatusOK {
			// Once it served it stays serving: flaky exits only twice.
			require.Equal(t, StateServing, st.State)
			break
		}
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		require.Less(t, time.Since(began), 15*time.Second, "flaky never served")
		time.Sleep(5 * time.Millisecond)
	}
	// Two exits, then waits of 100ms and 200ms.
	require.GreaterOrEqual(t, time.Since(began), 300*time.Millisecond)
	st, _ := b.version("flaky")
	require.Equal(t, 2, st.Restarts)
	resp, body := b.get(t, "/devshard/flaky/whoami")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "flaky", body)

	require.Eventually(t, func() bool {
		st, _ := b.version("crash")
		return st.Restarts >= 3
	}, 10*time.Second, 10*time.Millisecond)
	st, _ = b.version("crash")
	require.NotEqual(t, StateServing, st.State)
	require.Contains(t, st.LastError, "child exited (exit status 3)")
	resp, _ = b.get(t, "/devshard/crash/whoami")
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.GreaterOrEqual(t, value(b.m.m.restarts.WithLabelValues("crash")), 3.0)
}

// A child that runs but never answers /readyz with 200 is stopped once
// ReadyTimeout passes and started again, and its status says why; it
// never gets traffic.
func TestVersiondRestartsChildNotReadyInTime(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *Config) { c.ReadyTimeout = 300 * time.Millisecond })
	b.approve(b.mirror.version("unready"))
	var first string
	require.Eventually(t, func() bool {
		st, _ := b.version("unready")
		first = st.Address
		return st.Running && first != ""
	}, 10*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool {
		st, _ := b.version("unready")
		return st.Restarts >= 2
	}, 10*time.Second, 10*time.Millisecond)
	st, _ := b.version("unready")
	require.Equal(t, StateStarting, st.State)
	// The last answer is the child's 503, or, on a loaded machine, a
	// refused connection when the child had not bound its port yet.
	require.Contains(t, st.LastError, "version unready: its child did not answer GET /readyz with 200 within 300ms (last: ")
	require.Contains(t, st.LastError, "), so it was stopped; restarting in")
	require.NotEqual(t, first, st.Address, "each start has its own port")
	_, err := http.Get("http://" + first + "/readyz")
	require.Error(t, err, "the first child was stopped")
	resp, _ := b.get(t, "/devshard/unready/whoami")
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.GreaterOrEqual(t, value(b.m.m.restarts.WithLabelValues("unready")), 2.0)
}

// The hash is checked again before every start: a binary changed on disk
// is deleted, downloaded again, and only the approved bytes run.
func TestVersiondChecksHashBeforeEveryStart(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.approve(b.mirror.version("v1"))
	b.waitState(t, "v1", StateServing)
	_, sha := self()
	path := filepath.Join(b.dir, "versions", "v1", sha, "devshard")
	require.NoError(t, os.WriteFile(path+".new", []byte("#!/bin/sh\necho tampered\n"), 0o755))
	require.NoError(t, os.Rename(path+".new", path))

	resp, _ := b.get(t, "/devshard/v1/exit")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Eventually(t, func() bool {
		return value(b.m.m.hashMismatches.WithLabelValues("v1")) == 1
	}, 10*time.Second, 10*time.Millisecond)
	b.waitState(t, "v1", StateServing)
	require.Equal(t, int64(2), b.mirror.count("/v1"), "the tampered binary was not downloaded again")
	require.NoError(t, verify(b.mirror.version("v1"), path))
}

// A download killed with SIGKILL leaves only a temporary file, never a
// runnable one; the next start removes it and downloads again.
func TestVersiondCleansInterruptedDownload(t *testing.T) {
	t.Parallel()
	mr := newMirror(t)
	dir := t.TempDir()
	v := mr.version("v1")
	v.URL = mr.URL + "/stall-once"

	cmd := exec.Command(os.Args[0], "versiond-manager", dir, v.URL, v.SHA256, mr.ca)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	require.NoError(t, cmd.Start())
	require.Eventually(t, func() bool {
		for _, f := range tempFiles(dir) {
			if info, err := os.Stat(f); err == nil && info.Size() > 0 {
				return true
			}
		}
		return false
	}, 10*time.Second, 10*time.Millisecond, "the download never began")
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	require.Len(t, tempFiles(dir), 1)
	require.NoFileExists(t, filepath.Join(dir, "versions", "v1", v.SHA256, "devshard"))

	b := &bundle{mirror: mr, dir: dir, reg: prometheus.NewRegistry(), src: make(ChanSource, 1)}
	b.start(t, func(*Config) {})
	b.approve(v)
	b.waitState(t, "v1", StateServing)
	require.Empty(t, tempFiles(dir))
	require.Equal(t, int64(2), mr.count("/stall-once"))
	resp, body := b.get(t, "/devshard/v1/whoami")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "v1", body)
}

// The runtime config answers at once when it is newer than after=, and
// otherwise waits for the next change or the wait.
func TestVersiondRuntimeLongPoll(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.approve(b.mirror.version("v1"))
	b.waitState(t, "v1", StateServing)

	poll := func(query string) (Runtime, time.Duration) {
		began := time.Now()
		_, body := b.get(t, "/devshard/runtime"+query)
		var rt Runtime
		require.NoError(t, json.Unmarshal([]byte(body), &rt), body)
		return rt, time.Since(began)
	}
	rt, took := poll("")
	require.Less(t, took, time.Second)
	require.Equal(t, "v1", rt.Preferred)
	require.Equal(t, []RuntimeVersion{{Name: "v1", SHA256: rt.Versions[0].SHA256, State: StateServing, Path: "/devshard/v1/", Address: rt.Versions[0].Address}}, rt.Versions)
	require.NotEmpty(t, rt.Versions[0].Address)

	old, took := poll(fmt.Sprintf("?after=%d", rt.Revision-1))
	require.Less(t, took, time.Second, "a newer config did not answer at once")
	require.Equal(t, rt.Revision, old.Revision)

	same, took := poll(fmt.Sprintf("?after=%d&wait=300ms", rt.Revision))
	require.GreaterOrEqual(t, took, 300*time.Millisecond, "an unchanged config answered before its wait")
	require.Equal(t, rt.Revision, same.Revision)

	type answer struct {
		rt   Runtime
		took time.Duration
	}
	got := make(chan answer, 1)
	go func() {
		rt, took := poll(fmt.Sprintf("?after=%d&wait=4s", rt.Revision))
		got <- answer{rt, took}
	}()
	time.Sleep(100 * time.Millisecond)
	b.approve(b.mirror.version("v1"), b.mirror.version("v2"))
	a := <-got
	require.Less(t, a.took, 2*time.Second, "the change did not end the wait")
	require.Greater(t, a.rt.Revision, rt.Revision)

	// v2 is last in the approved list: the newest, preferred once serving.
	b.waitState(t, "v2", StateServing)
	rt, _ = poll("")
	require.Equal(t, "v2", rt.Preferred)

	resp, body := b.get(t, "/devshard/runtime?after=x")
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.Contains(t, body, "is not a revision")
}

// Service discovery lists the children that run, not the approved list.
func TestVersiondServiceDiscovery(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	bad := b.mirror.version("bad")
	bad.SHA256 = otherSHA
	b.approve(b.mirror.version("v1"), bad)
	st := b.waitState(t, "v1", StateServing)

	resp, body := b.get(t, "/devshard/sd")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var sd []SDTarget
	require.NoError(t, json.Unmarshal([]byte(body), &sd))
	require.Equal(t, []SDTarget{{Targets: []string{st.Address}, Labels: map[string]string{"version": "v1", "sha256": st.SHA256, "state": "serving"}}}, sd)

	b.approve(bad)
	require.Eventually(t, func() bool {
		_, body := b.get(t, "/devshard/sd")
		return strings.TrimSpace(body) == "[]"
	}, 15*time.Second, 20*time.Millisecond, "a stopped child stayed listed")
}

// A version that leaves the approved list drains: it keeps serving its
// open traffic, marked draining, until its child reports no open
// sessions; then its child stops and its files are removed. Without the
// report it is stopped at the drain bound.
func TestVersiondRetireDrains(t *testing.T) {
	t.Parallel()
	t.Run("until no session is open", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		b.approve(b.mirror.version("v1"))
		b.waitState(t, "v1", StateServing)
		resp, _ := b.get(t, "/devshard/v1/sessions?open=1")
		require.Equal(t, http.StatusOK, resp.StatusCode)

		b.approve()
		b.waitState(t, "v1", StateDraining)
		time.Sleep(200 * time.Millisecond)
		resp, body := b.get(t, "/devshard/v1/whoami")
		require.Equal(t, http.StatusOK, resp.StatusCode, "a draining version stopped serving its open traffic")
		require.Equal(t, "v1", body)
		require.Equal(t, "", b.m.Status().Preferred)
		require.DirExists(t, filepath.Join(b.dir, "versions", "v1"))

		began := time.Now()
		b.get(t, "/devshard/v1/sessions?open=0")
		require.Eventually(t, func() bool { _, ok := b.version("v1"); return !ok }, 5*time.Second, 10*time.Millisecond)
		require.Less(t, time.Since(began), 5*time.Second)
		require.NoDirExists(t, filepath.Join(b.dir, "versions", "v1"))
		kept, err := filepath.Glob(filepath.Join(b.dir, "retired", "v1-*", "child.log"))
		require.NoError(t, err)
		require.Len(t, kept, 1, "the retired version's working directory (its sessions' storage) is kept")
		resp, body = b.get(t, "/devshard/v1/whoami")
		require.Equal(t, http.StatusNotFound, resp.StatusCode)
		require.Contains(t, body, `version "v1" is not served on this host`)
	})
	t.Run("until the bound", func(t *testing.T) {
		t.Parallel()
		b := setup(t, func(c *Config) { c.DrainBound = 500 * time.Millisecond })
		b.approve(b.mirror.version("v1"))
		st := b.waitState(t, "v1", StateServing)
		b.get(t, "/devshard/v1/sessions?open=1")
		began := time.Now()
		b.approve()
		require.Eventually(t, func() bool { _, ok := b.version("v1"); return !ok }, 5*time.Second, 10*time.Millisecond)
		require.GreaterOrEqual(t, time.Since(began), 500*time.Millisecond)
		require.NoDirExists(t, filepath.Join(b.dir, "versions", "v1"))
		_, err := http.Get("http://" + st.Address + "/readyz")
		require.Error(t, err, "the retired child still answers")
	})
}

// Two versions run side by side, each with its own child and traffic.
func TestVersiondSideBySide(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.approve(b.mirror.version("a"), b.mirror.version("b"))
	sa := b.waitState(t, "a", StateServing)
	sb := b.waitState(t, "b", StateServing)
	require.NotEqual(t, sa.Address, sb.Address)
	for range 3 {
		for _, name := range []string{"a", "b"} {
			resp, body := b.get(t, "/devshard/"+name+"/whoami")
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.Equal(t, name, body)
		}
	}
	resp, body := b.get(t, "/devshard/zz/whoami")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Contains(t, body, `version "zz" is not served on this host`)
	require.Equal(t, 2.0, value(b.m.m.children.WithLabelValues("serving")))
}

// value is a counter's or a gauge's current value.
func value(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// testLog writes a Manager's log to the test's.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// A mirror that stops sending mid-download fails the download after the
// stall bound, and the retry installs the version.
func TestVersiondRetriesStalledDownload(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *Config) { c.DownloadStall = time.Second })
	v := b.mirror.version("v1")
	v.URL = b.mirror.URL + "/stall-once"
	b.approve(v)
	st := b.waitState(t, "v1", StateServing)
	require.Contains(t, st.LastError, "no byte arrived for 1s")
	// Under a loaded machine a retry may stall too; it still ends.
	require.GreaterOrEqual(t, b.mirror.count("/stall-once"), int64(2))
	require.Empty(t, tempFiles(b.dir))
}

// Files of versions no longer approved, left by an earlier run, are
// removed at the first list; those of approved versions stay.
func TestVersiondSweepsUnapprovedFiles(t *testing.T) {
	t.Parallel()
	mr := newMirror(t)
	dir := t.TempDir()
	v := mr.version("v1")
	for _, p := range []string{"old/" + v.SHA256 + "/devshard", "old/work/child.log", "v1/" + otherSHA + "/devshard"} {
		p = filepath.Join(dir, "versions", p)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte("left over"), 0o755))
	}
	b := &bundle{mirror: mr, dir: dir, reg: prometheus.NewRegistry(), src: make(ChanSource, 1)}
	b.start(t, func(*Config) {})
	b.approve(v)
	b.waitState(t, "v1", StateServing)
	require.NoDirExists(t, filepath.Join(dir, "versions", "old"))
	kept, err := filepath.Glob(filepath.Join(dir, "retired", "old-*", "child.log"))
	require.NoError(t, err)
	require.Len(t, kept, 1, "an unapproved version's working directory is kept under retired/")
	require.NoDirExists(t, filepath.Join(dir, "versions", "v1", otherSHA))
	require.FileExists(t, filepath.Join(dir, "versions", "v1", v.SHA256, "devshard"))
}

// A binary larger than the size limit is refused, and nothing of it
// stays on disk.
func TestVersiondRefusesTooLarge(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *Config) { c.MaxDownload = 1 << 10 })
	b.approve(b.mirror.version("v1"))
	require.Eventually(t, func() bool {
		st, _ := b.version("v1")
		return strings.Contains(st.LastError, "download exceeds the limit of 1024 bytes")
	}, 5*time.Second, 10*time.Millisecond)
	require.GreaterOrEqual(t, value(b.m.m.downloads.WithLabelValues("too_large")), 1.0)
	require.Empty(t, tempFiles(b.dir))
	require.NoDirExists(t, filepath.Join(b.dir, "versions", "v1"))
}

// A version that never served, here one whose child crashes at every
// start, leaves the list and is retired at once: it has nothing to drain,
// so it does not keep restarting until the drain bound.
func TestVersiondRetiresNeverServedAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *Config) { c.DrainBound = time.Minute })
	b.approve(b.mirror.version("v1"), b.mirror.version("crash"))
	b.waitState(t, "v1", StateServing)
	require.Eventually(t, func() bool {
		st, _ := b.version("crash")
		return st.Restarts >= 1
	}, 10*time.Second, 10*time.Millisecond)

	began := time.Now()
	b.approve(b.mirror.version("v1"))
	require.Eventually(t, func() bool { _, ok := b.version("crash"); return !ok }, 5*time.Second, 10*time.Millisecond,
		"a version that never served is retired well before its one-minute drain bound")
	require.Less(t, time.Since(began), 5*time.Second)
	require.NoDirExists(t, filepath.Join(b.dir, "versions", "crash"))
	st, ok := b.version("v1")
	require.True(t, ok)
	require.Equal(t, StateServing, st.State, "v1 serves on")
}

// versiond's own /healthz answers while it runs and its /readyz once a
// version serves. GET /devshard/status shows each version's state, child, start time,
// restarts and last error to a client on this machine, and refuses any
// other: its errors name URLs and paths.
func TestVersiondStatusEndpoint(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	resp, body := b.get(t, "/readyz")
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "no version serves yet: %s", body)
	resp, _ = b.get(t, "/healthz")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	began := time.Now()
	b.approve(b.mirror.version("v1"), Version{Name: "bad", URL: b.mirror.URL + "/bad", SHA256: otherSHA})
	b.waitState(t, "v1", StateServing)
	resp, body = b.get(t, "/readyz")
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	require.Eventually(t, func() bool { v, _ := b.version("bad"); return v.LastError != "" }, 15*time.Second, 10*time.Millisecond)

	resp, body = b.get(t, "/devshard/status")
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	var st Status
	require.NoError(t, json.Unmarshal([]byte(body), &st))
	require.Equal(t, "v1", st.Preferred)
	require.Len(t, st.Versions, 2)
	v1, bad := st.Versions[0], st.Versions[1]
	require.Equal(t, StateServing, v1.State)
	require.True(t, v1.Running)
	require.NotEmpty(t, v1.Address)
	require.False(t, v1.Started.Before(began.Add(-time.Second)), "started %s, the test began %s", v1.Started, began)
	require.Equal(t, StateInstalling, bad.State)
	require.True(t, bad.Started.IsZero(), "no child runs for a version still installing")
	require.Contains(t, bad.LastError, "sha256")

	remote := httptest.NewRequest(http.MethodGet, "/devshard/status", nil)
	remote.RemoteAddr = "203.0.113.7:40000"
	rec := httptest.NewRecorder()
	b.m.Handler().ServeHTTP(rec, remote)
	require.Equal(t, http.StatusForbidden, rec.Code)
	require.Contains(t, rec.Body.String(), "clients on this machine only")
}
