package devnet

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/devshard/devshard/executor"
)

// Latencies are one run's request times, sorted.
type Latencies []time.Duration

// Quantile is the q-th quantile (0..1) by the nearest-rank rule.
func (l Latencies) Quantile(q float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	i := int(q*float64(len(l)) + 0.5)
	return l[min(max(i-1, 0), len(l)-1)]
}

// DirectModel serves the built-in model behind the same OpenAI-style
// route, with nothing else in the way: the baseline the gateway's added
// latency is measured against.
type DirectModel struct {
	URL string
	srv *http.Server
}

// StartDirectModel serves the built-in model on a free loopback port.
func StartDirectModel() (*DirectModel, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/chat/completions", func(w http.ResponseWriter, r *http.Request) {
		var req executor.Request
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		res, err := executor.Builtin{}.Execute(r.Context(), req, func(string) error { return nil })
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"object":  "chat.completion",
			"choices": []any{map[string]any{"index": 0, "message": map[string]string{"role": "assistant", "content": res.Text}, "finish_reason": res.FinishReason}},
			"usage":   map[string]int{"prompt_tokens": res.Usage.PromptTokens, "completion_tokens": res.Usage.CompletionTokens},
		})
	})
	d := &DirectModel{URL: "http://" + ln.Addr().String(), srv: &http.Server{Handler: mux}}
	go func() { _ = d.srv.Serve(ln) }()
	return d, nil
}

// Close stops the server.
func (d *DirectModel) Close() error { return d.srv.Close() }

// Proxy is a plain reverse proxy (net/http/httputil) in front of a model
// server: one more HTTP hop, with no protocol, no escrow and no chain. The
// gateway is also a hop in front of the model, so the latency it adds beyond
// what this proxy adds is the protocol's own cost. Both are measured on the
// same machine in the same run, so their ratio means the same on a fast
// machine and a slow one, where the absolute figure does not.
type Proxy struct {
	URL string
	srv *http.Server
	tr  *http.Transport
}

// StartProxy serves a reverse proxy to target on a free loopback port. It
// keeps as many idle connections to the target as the gateway keeps to each
// host (gateway/peer.go), so the baseline does not pay for reconnecting
// where the gateway would not.
func StartProxy(target string) (*Proxy, error) {
	to, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("proxy target %q: %w", target, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second}
	rp := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(to) },
		Transport: tr,
		// The client sees the failure as a 502; the log would only repeat
		// it, once per client hanging up at the end of a throughput run.
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) },
	}
	p := &Proxy{URL: "http://" + ln.Addr().String(), srv: &http.Server{Handler: rp}, tr: tr}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

// Close stops the proxy and drops its connections to the target.
func (p *Proxy) Close() error {
	err := p.srv.Close()
	p.tr.CloseIdleConnections()
	return err
}

// benchRequest is request i of a benchmark: short prompts, 16 tokens out.
func benchRequest(i int) ChatRequest {
	return ChatRequest{Model: executor.BuiltinModel, MaxTokens: 16,
		Messages: []executor.Message{{Role: "user", Content: fmt.Sprintf("benchmark request %d", i)}}}
}

// MeasureLatency sends n requests one after another and returns their
// latencies.
func MeasureLatency(ctx context.Context, c *Client, n int) (Latencies, error) {
	out := make(Latencies, 0, n)
	for i := range n {
		start := time.Now()
		if _, err := c.Chat(ctx, benchRequest(i), false); err != nil {
			return nil, fmt.Errorf("request %d: %w", i, err)
		}
		out = append(out, time.Since(start))
	}
	slices.Sort(out)
	return out, nil
}

// MeasureThroughput runs workers closed-loop clients for d and returns the
// completed requests per second.
func MeasureThroughput(ctx context.Context, c *Client, workers int, d time.Duration) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var (
		done     atomic.Int64
		firstErr error
		once     sync.Once
		wg       sync.WaitGroup
	)
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				_, err := c.Chat(ctx, benchRequest(w*1_000_000+i), false)
				if err != nil {
					if ctx.Err() == nil {
						once.Do(func() { firstErr = err })
						cancel()
					}
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	return float64(done.Load()) / time.Since(start).Seconds(), nil
}
