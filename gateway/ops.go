package gateway

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/internal/buildinfo"
	"github.com/devshard/devshard/session"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// readyWait bounds each call /readyz makes: to the chain node, and to a
// host's own /readyz.
const readyWait = 2 * time.Second

//go:embed statuspage
var statusPage embed.FS

// opsRoutes adds what an operator's tools read: /readyz, /version, and
// the status page (/status) with its data (/status.json). None needs an
// API key, and none tells more than an operator's dashboard would.
func opsRoutes(mux *http.ServeMux, g *Gateway) {
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if ready, reason := g.readiness(r.Context()); !ready {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": reason})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, struct {
			buildinfo.Info
			Protocol int    `json:"protocol"`
			Address  string `json:"address"`
		}{buildinfo.Read(), session.ProtocolVersion, g.Address().String()})
	})
	mux.HandleFunc("GET /status.json", func(w http.ResponseWriter, r *http.Request) {
		ready, reason := g.readiness(r.Context())
		writeJSON(w, http.StatusOK, g.Status(ready, reason))
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		page, err := statusPage.ReadFile("statuspage/status.html")
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'")
		_, _ = w.Write(page)
	})
}

func (g *Gateway) version() string { return buildinfo.Read().Version }

// readiness says whether the gateway can serve a request now, and if not,
// why: it is not shutting down, the chain node answers and is making
// blocks, and either a lane has an escrow with a host that is ready, or an
// escrow can be opened (an epoch is ACTIVE, the account can lock one, and
// a host serves an approved runtime version).
//
// A stalled chain fails readiness although the open escrows still serve:
// their books are off chain, but no escrow can be opened or settled until
// the chain resumes, so another gateway on a live chain is the better
// choice, and the operator needs to hear of it.
func (g *Gateway) readiness(ctx context.Context) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, readyWait)
	defer cancel()
	g.mu.Lock()
	closed, lanes := g.closed, append([]*escrow(nil), g.lanes...)
	g.mu.Unlock()
	if closed {
		return false, "shutting down"
	}
	epoch, state, err := g.chain.Epoch(ctx)
	if err != nil {
		return false, fmt.Sprintf("the chain node does not answer: %v", err)
	}
	if err := g.chainMoving(ctx); err != nil {
		var stalled *chainclient.StalledError
		if errors.As(err, &stalled) {
			return false, err.Error() + "; requests on open escrows are still served and settlements wait until it resumes"
		}
		return false, fmt.Sprintf("the chain node does not answer: %v", err)
	}
	var notReady []string
	for _, e := range lanes {
		if e == nil {
			continue
		}
		ok, why := g.anyHostReady(ctx, e)
		if ok {
			return true, ""
		}
		notReady = append(notReady, fmt.Sprintf("escrow %d: %s", e.id(), why))
	}
	if len(notReady) > 0 {
		return false, "no host of an open escrow is ready (" + strings.Join(notReady, "; ") + ")"
	}
	if state != devshardtypes.EpochActive {
		return false, fmt.Sprintf("no escrow is open and none can be: epoch %d is %s, and escrows are created only while an epoch is ACTIVE", epoch, state.Short())
	}
	bal, err := g.chain.Balance(ctx)
	if err != nil {
		return false, fmt.Sprintf("the chain node does not answer: %v", err)
	}
	if bal < g.cfg.EscrowAmount {
		return false, fmt.Sprintf("no escrow is open and none can be: the gateway account holds %d and an escrow locks %d", bal, g.cfg.EscrowAmount)
	}
	if _, err := g.runtimeForNewEscrow(ctx); err != nil {
		return false, "no escrow is open and none can be: " + err.Error()
	}
	return true, ""
}

// anyHostReady asks e's members' /readyz in turn until one is ready; if
// none is, it says what each answered.
func (g *Gateway) anyHostReady(ctx context.Context, e *escrow) (bool, string) {
	var answers []string
	for _, m := range e.out.members {
		why := hostReadiness(ctx, m.url)
		if why == "" {
			return true, ""
		}
		answers = append(answers, m.url+": "+why)
	}
	return false, strings.Join(answers, ", ")
}

// hostReadiness is "" if the host at url answers /readyz with 200, and
// what went wrong otherwise.
func hostReadiness(ctx context.Context, url string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(url, "/")+"/readyz", nil)
	if err != nil {
		return err.Error()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return ""
	}
	var body struct{ Status string }
	if json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&body) == nil && body.Status != "" {
		return resp.Status + " (" + body.Status + ")"
	}
	return resp.Status
}
