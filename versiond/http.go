package versiond

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Handler serves, on the host's public address:
//
//	/devshard/<name>/...   the version's child, with /devshard/<name> stripped
//	GET /devshard/runtime  the runtime config, a long poll (see Runtime)
//	GET /devshard/sd       Prometheus HTTP service discovery of the children
//	GET /devshard/status   every version's state, child, restarts and last
//	                       error (Status), to loopback clients only
//	GET /healthz           200 while versiond runs
//	GET /readyz            200 while a version serves (there is a preferred
//	                       one), else 503: the host takes new sessions
//
// A version named "runtime", "sd" or "status" is reached below its prefix
// only (/devshard/runtime/...), since the exact paths are versiond's own.
func (m *Manager) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /devshard/runtime", m.serveRuntime)
	mux.HandleFunc("GET /devshard/sd", m.serveSD)
	mux.HandleFunc("GET /devshard/status", m.serveStatus)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", m.serveReady)
	mux.HandleFunc("/devshard/{name}/", m.serveVersion)
	mux.HandleFunc("/devshard/{name}", m.serveVersion)
	return mux
}

// retryAfter is the Retry-After of a version that is not ready, in
// seconds: about one restart's wait.
const retryAfter = "2"

// serveVersion proxies the request to the named version's child.
func (m *Manager) serveVersion(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	m.mu.Lock()
	u := m.units[name]
	m.mu.Unlock()
	if u == nil {
		http.Error(w, fmt.Sprintf("version %q is not served on this host; GET /devshard/runtime lists the versions that are.", name), http.StatusNotFound)
		return
	}
	proxy := u.route()
	if proxy == nil {
		w.Header().Set("Retry-After", retryAfter)
		http.Error(w, fmt.Sprintf("version %q is not ready yet (%s); retry shortly.", name, u.snapshot().State), http.StatusServiceUnavailable)
		return
	}
	u.inflight.Add(1)
	defer u.inflight.Add(-1)
	// The child may answer before the proxy has sent it the whole request
	// body (the proxy reads on to the body's end after sending it). By
	// default the server reads what is left of the body itself once the
	// answer starts, racing the proxy; the proxy's send then fails, it
	// closes its connection to the child, and the answer is cut mid-stream.
	// Full duplex leaves the body to the proxy. A writer that cannot
	// (not a network server) has no such race.
	_ = http.NewResponseController(w).EnableFullDuplex()
	proxy.ServeHTTP(w, r)
}

// newProxy returns a reverse proxy to the child at addr. It strips the
// /devshard/<name> prefix and leaves the body and every end-to-end header
// as they came, the Host and signature headers included; it adds no
// X-Forwarded headers. FlushInterval -1 flushes after every write, so a
// server-sent event reaches the client as soon as the child writes it.
func newProxy(addr string) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			out := pr.Out
			out.URL.Scheme = "http"
			out.URL.Host = addr
			out.URL.Path = stripPrefix(pr.In.URL.Path)
			out.URL.RawPath = ""
			if raw := pr.In.URL.RawPath; raw != "" {
				out.URL.RawPath = stripPrefix(raw)
			}
			out.Host = pr.In.Host
			// ReverseProxy drops these from the outbound request when
			// Rewrite is set; the child sees them as the client sent them.
			for _, h := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
				if vs, ok := pr.In.Header[h]; ok {
					out.Header[h] = vs
				}
			}
		},
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			w.Header().Set("Retry-After", retryAfter)
			http.Error(w, fmt.Sprintf("the version's child did not answer (%v); retry shortly.", err), http.StatusBadGateway)
		},
	}
}

// stripPrefix turns /devshard/<name>/rest into /rest.
func stripPrefix(p string) string {
	rest := strings.TrimPrefix(p, "/devshard/")
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		return rest[i:]
	}
	return "/"
}

// RuntimeVersion is one version in the runtime config.
type RuntimeVersion struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
	// State is installing, starting, serving or draining. Only a serving
	// version takes new sessions; a draining one finishes those it has.
	State State `json:"state"`
	// Path is the version's route on this host: /devshard/<name>/.
	Path string `json:"path"`
	// Address is the child's loopback address, for this host's own tools;
	// clients use Path.
	Address string `json:"address,omitempty"`
}

// Runtime is the body of GET /devshard/runtime.
type Runtime struct {
	// Revision moves on every change; pass it back as after= to wait for
	// the next one.
	Revision uint64 `json:"revision"`
	// Preferred is the version new sessions should use: the newest
	// serving one by the approved list's order. Empty when none serves.
	Preferred string           `json:"preferred"`
	Versions  []RuntimeVersion `json:"versions"`
}

// serveRuntime answers at once when the config's revision is newer than
// after (or after is absent); otherwise it waits up to wait, bounded by
// MaxWait, for the next change, and answers with the config as it is then
// (the same revision if nothing changed).
func (m *Manager) serveRuntime(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var after uint64
	if s := q.Get("after"); s != "" {
		var err error
		if after, err = strconv.ParseUint(s, 10, 64); err != nil {
			http.Error(w, fmt.Sprintf("after=%q is not a revision; pass the revision of the config you hold.", s), http.StatusBadRequest)
			return
		}
	}
	var wait time.Duration
	if s := q.Get("wait"); s != "" {
		var err error
		if wait, err = time.ParseDuration(s); err != nil || wait < 0 {
			http.Error(w, fmt.Sprintf("wait=%q is not a duration such as 30s.", s), http.StatusBadRequest)
			return
		}
	}
	wait = min(wait, m.cfg.MaxWait)

	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		m.mu.Lock()
		st, changed := m.statusLocked(), m.changed
		m.mu.Unlock()
		if st.Revision > after || q.Get("after") == "" {
			writeJSON(w, runtimeOf(st))
			return
		}
		select {
		case <-changed:
		case <-timer.C:
			writeJSON(w, runtimeOf(st))
			return
		case <-r.Context().Done():
			return
		}
	}
}

func runtimeOf(st Status) Runtime {
	rt := Runtime{Revision: st.Revision, Preferred: st.Preferred, Versions: []RuntimeVersion{}}
	for _, v := range st.Versions {
		rt.Versions = append(rt.Versions, RuntimeVersion{
			Name: v.Name, SHA256: v.SHA256, State: v.State,
			Path: "/devshard/" + url.PathEscape(v.Name) + "/", Address: v.Address,
		})
	}
	return rt
}

// SDTarget is one entry of Prometheus' http_sd_config format.
type SDTarget struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// serveSD lists the children that are running now, ready or not, so
// Prometheus scrapes what runs rather than what is approved.
func (m *Manager) serveSD(w http.ResponseWriter, _ *http.Request) {
	out := []SDTarget{}
	for _, v := range m.Status().Versions {
		if !v.Running {
			continue
		}
		out = append(out, SDTarget{
			Targets: []string{v.Address},
			Labels:  map[string]string{"version": v.Name, "sha256": v.SHA256, "state": string(v.State)},
		})
	}
	writeJSON(w, out)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// serveStatus answers Status to a client on this machine. Its last errors
// name download URLs, paths and exit statuses: the operator's business,
// not the network's, so a remote client gets 403.
func (m *Manager) serveStatus(w http.ResponseWriter, r *http.Request) {
	if !fromLoopback(r) {
		http.Error(w, "GET /devshard/status answers clients on this machine only; run `devshard versiond status` on the host.", http.StatusForbidden)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(m.Status())
}

// fromLoopback says whether the request's peer is a loopback address.
func fromLoopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// serveReady answers 200 while some version serves, so a load balancer or
// a supervisor in front of the host sees whether it takes new sessions.
func (m *Manager) serveReady(w http.ResponseWriter, _ *http.Request) {
	if p := m.Status().Preferred; p != "" {
		fmt.Fprintf(w, "ready: %s serves new sessions\n", p)
		return
	}
	w.Header().Set("Retry-After", retryAfter)
	http.Error(w, "not ready: no runtime version serves yet; GET /devshard/runtime says where each one is.", http.StatusServiceUnavailable)
}
