package gateway

import (
	"sort"
	"sync"
	"time"
)

// statusMinutes is how many minutes of requests /status shows.
const statusMinutes = 10

// Status is what GET /status.json answers and the status page and
// 'devshard gateway status' show: the escrows, the hosts, and the
// requests of the last minutes.
type Status struct {
	Address  string `json:"address"`
	Version  string `json:"version"`
	Ready    bool   `json:"ready"`
	Reason   string `json:"reason,omitempty"` // why not ready
	InFlight int    `json:"requests_in_flight"`
	// Chain is the chain's latest block as the gateway last saw it; nil
	// until the chain first answered.
	Chain   *ChainStatus `json:"chain,omitempty"`
	Escrows []EscrowView `json:"escrows"`
	Hosts   []HostStatus `json:"hosts"`
	// Minutes are the last minutes, oldest first; the last one is the
	// minute under way.
	Minutes []MinuteStatus `json:"minutes"`
}

// ChainStatus is the chain's latest block as the gateway last saw it.
type ChainStatus struct {
	Height    int64     `json:"height"`
	BlockTime time.Time `json:"block_time"`
	// AgeSeconds is how old the block was when the status was read; past
	// chain.stall_after the chain counts as stalled.
	AgeSeconds float64 `json:"age_seconds"`
}

// HostStatus is a host of the gateway's escrows as the gateway saw it.
type HostStatus struct {
	URL     string `json:"url"`
	Address string `json:"address"`
	// State: up (its last stream answered), failing (its last stream
	// failed), down (skipped for now after a failure), idle (not asked
	// to execute yet).
	State string `json:"state"`
	// LatencyMS is how long its last stream took, start to end.
	LatencyMS int64  `json:"latency_ms"`
	Requests  int    `json:"requests"`
	Failures  int    `json:"failures"`
	LastError string `json:"last_error,omitempty"`
}

// MinuteStatus counts the requests of one minute.
type MinuteStatus struct {
	Start    time.Time `json:"start"`
	Requests int       `json:"requests"`
	Errors   int       `json:"errors"` // answered with a status of 400 or more
}

// Status reads the gateway's status; ready and reason are readyz's.
func (g *Gateway) Status(ready bool, reason string) Status {
	s := Status{Address: g.Address().String(), Version: g.version(), Ready: ready, Reason: reason,
		Escrows: g.Escrows(), Minutes: g.metrics.recent.read(time.Now())}
	s.InFlight = int(gaugeValue(g.metrics.inFlight))
	if b := g.block.Load(); b != nil {
		s.Chain = &ChainStatus{Height: b.height, BlockTime: b.at.UTC(), AgeSeconds: time.Since(b.at).Round(time.Second).Seconds()}
	}
	s.Hosts = g.hostStatus(time.Now())
	return s
}

// hostStatus lists the members of every unsettled escrow, once each, by
// URL.
func (g *Gateway) hostStatus(now time.Time) []HostStatus {
	g.mu.Lock()
	es := make([]*escrow, 0, len(g.all))
	for _, e := range g.all {
		es = append(es, e)
	}
	g.mu.Unlock()
	byURL := map[string]*HostStatus{}
	for _, e := range es {
		for i, m := range e.out.members {
			h, ok := byURL[m.url]
			if !ok {
				h = &HostStatus{URL: m.url, Address: m.addr.String(), State: "idle"}
				g.metrics.hosts.fill(h)
				byURL[m.url] = h
			}
			if e.out.isDown(i, now) {
				h.State = "down"
			}
		}
	}
	out := make([]HostStatus, 0, len(byURL))
	for _, h := range byURL {
		out = append(out, *h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].URL < out[j].URL })
	return out
}

// balance is what the escrow has left to pay with.
func (e *escrow) balance() uint64 {
	e.seq.mu.Lock()
	defer e.seq.mu.Unlock()
	return e.seq.replica.Balance()
}

// window counts requests and errors per minute over the last minutes.
type window struct {
	mu      sync.Mutex
	minutes []MinuteStatus // a ring, by minute since the epoch modulo its length
}

func newWindow(n int) *window { return &window{minutes: make([]MinuteStatus, n)} }

func (w *window) slot(at time.Time) *MinuteStatus {
	start := at.Truncate(time.Minute)
	m := &w.minutes[int(start.Unix()/60)%len(w.minutes)]
	if !m.Start.Equal(start) {
		*m = MinuteStatus{Start: start}
	}
	return m
}

func (w *window) add(at time.Time, failed bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.slot(at)
	m.Requests++
	if failed {
		m.Errors++
	}
}

// read lists the window's minutes up to now's, oldest first, with the
// quiet ones at zero.
func (w *window) read(now time.Time) []MinuteStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]MinuteStatus, len(w.minutes))
	for i := range out {
		out[i] = *w.slot(now.Add(-time.Duration(len(out)-1-i) * time.Minute))
	}
	return out
}

// hostLog keeps, per host URL, how its streams went.
type hostLog struct {
	mu    sync.Mutex
	byURL map[string]*HostStatus
}

func newHostLog() *hostLog { return &hostLog{byURL: map[string]*HostStatus{}} }

func (l *hostLog) add(url string, took time.Duration, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	h, ok := l.byURL[url]
	if !ok {
		h = &HostStatus{}
		l.byURL[url] = h
	}
	h.Requests++
	h.LatencyMS = took.Milliseconds()
	h.State, h.LastError = "up", ""
	if err != nil {
		h.Failures++
		h.State, h.LastError = "failing", err.Error()
	}
}

// fill copies what is known of h's URL into h.
func (l *hostLog) fill(h *HostStatus) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if seen, ok := l.byURL[h.URL]; ok {
		h.State, h.LatencyMS, h.Requests, h.Failures, h.LastError = seen.State, seen.LatencyMS, seen.Requests, seen.Failures, seen.LastError
	}
}
