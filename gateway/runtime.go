package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/devshard/devshard/versiond"
)

// runtimes follows which runtime versions each host serves, from the
// runtime config of the versiond in front of it (GET /devshard/runtime, a
// long poll), so that the gateway creates new escrows under a version the
// group can serve (choose). One follower runs per host URL while that host
// may be drawn into a new escrow's group.
type runtimes struct {
	ctx    context.Context // ends every follower
	client *http.Client
	wait   time.Duration // of one long poll
	// firstWait bounds how long choose waits for a host's first answer.
	firstWait time.Duration
	// retry is the first wait after a failed poll, doubling up to
	// maxRetry; maxRetry is also how often a host that is not behind
	// versiond is asked again.
	retry, maxRetry time.Duration
	// minGap is the least time between two polls of one host: a host that
	// answers every long poll at once (a new revision each time) is asked
	// no faster than this, so it cannot keep the gateway polling flat out.
	minGap time.Duration
	log    *slog.Logger

	mu     sync.Mutex
	hosts  map[string]*hostRuntime // by registered URL
	closed bool                    // no follower starts once close began
	wg     sync.WaitGroup          // the followers
}

// hostRuntime is what one host last said of its runtime versions.
type hostRuntime struct {
	stop     context.CancelFunc
	answered chan struct{} // closed once the first poll ended, well or not
	once     sync.Once

	// Under runtimes.mu.
	state   hostRuntimeState
	serving []string // versions in state serving, when state is behindVersiond
	err     error    // why the last poll failed, when state is unreachable
}

type hostRuntimeState int

const (
	// unreachable: no answer yet, or the last poll failed.
	unreachable hostRuntimeState = iota
	// behindVersiond: the runtime config answered.
	behindVersiond
	// noVersiond: the host answered 404: it runs one runtime and serves
	// only escrows that name no version.
	noVersiond
)

// Defaults of runtimes' timings.
const (
	runtimePollWait  = 30 * time.Second
	runtimeFirstWait = 3 * time.Second
	runtimeRetry     = time.Second
	runtimeMaxRetry  = 30 * time.Second
	runtimeMinGap    = 200 * time.Millisecond
)

func newRuntimes(ctx context.Context, log *slog.Logger) *runtimes {
	return &runtimes{
		ctx: ctx, client: &http.Client{}, wait: runtimePollWait, firstWait: runtimeFirstWait,
		retry: runtimeRetry, maxRetry: runtimeMaxRetry, minGap: runtimeMinGap, log: log, hosts: map[string]*hostRuntime{},
	}
}

// ErrNoRuntime means no host a new escrow may be grouped with serves a
// runtime version the chain approves, so no escrow could be served.
var ErrNoRuntime = errors.New("no host serves an approved runtime version")

// choose is the runtime version a new escrow is created under, given the
// chain's approved versions (oldest first) and the URLs of the hosts the
// chain may draw into its group:
//
//   - none while the chain approves none (its hosts run no versiond);
//   - else the approved version that the most of those hosts serve (in
//     state serving), the newest among equals. While every host that
//     answers serves a common version, that is the newest version they all
//     serve; a host that does not answer counts for none, and a host that
//     serves none of them (not behind versiond, or still installing) keeps
//     no one from the versions the others share.
//
// It refuses (ErrNoRuntime) when no host that answers serves any approved
// version: every request of such an escrow would fail. It waits for the
// hosts' first answers at most firstWait, or until ctx ends, and counts
// those that have answered by then; it stops following hosts that are no
// longer listed.
func (r *runtimes) choose(ctx context.Context, approved, hosts []string) (string, error) {
	if len(approved) == 0 {
		return "", nil
	}
	followed := r.follow(hosts)
	timer := time.NewTimer(r.firstWait)
	defer timer.Stop()
wait:
	for _, h := range followed {
		select {
		case <-h.answered:
		case <-timer.C:
			break wait // the hosts that have not answered count for none
		case <-ctx.Done():
			break wait
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	best, most := "", 0
	for _, name := range approved { // oldest first: a later version wins a tie
		n := 0
		for _, h := range followed {
			if h.state == behindVersiond && slices.Contains(h.serving, name) {
				n++
			}
		}
		if n > 0 && n >= most {
			best, most = name, n
		}
	}
	if best == "" {
		return "", fmt.Errorf("%w: the chain approves %s, and of the %d hosts a new escrow may be grouped with, none serves one (%s)",
			ErrNoRuntime, strings.Join(approved, ", "), len(hosts), r.describe(hosts))
	}
	return best, nil
}

// describe says what each host last told of its runtimes, for a refusal.
// Call with mu held.
func (r *runtimes) describe(hosts []string) string {
	var parts []string
	for _, u := range hosts {
		h := r.hosts[u]
		switch {
		case h == nil || h.state == unreachable && h.err == nil:
			parts = append(parts, u+" has not answered yet")
		case h.state == unreachable:
			parts = append(parts, fmt.Sprintf("%s did not answer: %v", u, h.err))
		case h.state == noVersiond:
			parts = append(parts, u+" runs no versiond")
		case len(h.serving) == 0:
			parts = append(parts, u+" serves no version yet")
		default:
			parts = append(parts, fmt.Sprintf("%s serves %s", u, strings.Join(h.serving, ", ")))
		}
	}
	return strings.Join(parts, "; ")
}

// follow starts a follower for every host of urls that has none, stops
// those of hosts not listed, and returns the listed hosts' records.
func (r *runtimes) follow(urls []string) []*hostRuntime {
	r.mu.Lock()
	defer r.mu.Unlock()
	listed := make(map[string]bool, len(urls))
	out := make([]*hostRuntime, 0, len(urls))
	for _, u := range urls {
		listed[u] = true
		h, ok := r.hosts[u]
		if !ok {
			ctx, stop := context.WithCancel(r.ctx)
			h = &hostRuntime{stop: stop, answered: make(chan struct{})}
			if r.closed { // the gateway halts: the host counts for none
				stop()
				close(h.answered)
				out = append(out, h)
				continue
			}
			r.hosts[u] = h
			r.wg.Add(1)
			go r.run(ctx, u, h)
		}
		out = append(out, h)
	}
	for u, h := range r.hosts {
		if !listed[u] {
			h.stop()
			delete(r.hosts, u)
		}
	}
	return out
}

// close stops every follower and waits for them.
func (r *runtimes) close() {
	r.mu.Lock()
	r.closed = true
	for u, h := range r.hosts {
		h.stop()
		delete(r.hosts, u)
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// run follows host base's runtime config until ctx ends: a long poll that
// answers at each change, a 404 that is asked again every maxRetry, and a
// failure retried after a doubling wait.
func (r *runtimes) run(ctx context.Context, base string, h *hostRuntime) {
	defer r.wg.Done()
	defer h.once.Do(func() { close(h.answered) }) // stopped before any answer: none will come
	var (
		after uint64
		have  bool // after is a revision this host gave
		retry = r.retry
	)
	for ctx.Err() == nil {
		began := time.Now()
		rt, err := r.poll(ctx, base, after, have)
		if ctx.Err() != nil {
			return
		}
		pause := r.minGap - time.Since(began)
		r.mu.Lock()
		switch {
		case errors.Is(err, errNoVersiond):
			h.state, h.serving, h.err = noVersiond, nil, nil
			have, pause = false, r.maxRetry
		case err != nil:
			if h.state != unreachable {
				r.log.Info("a host's runtime versions are unknown until it answers again", "host", base, "err", err)
			}
			h.state, h.serving, h.err = unreachable, nil, err
			have, pause = false, retry
			retry = min(2*retry, r.maxRetry)
		default:
			h.state, h.serving, h.err = behindVersiond, servingOf(rt), nil
			after, have, retry = rt.Revision, true, r.retry
		}
		r.mu.Unlock()
		h.once.Do(func() { close(h.answered) })
		if pause > 0 {
			select {
			case <-time.After(pause):
			case <-ctx.Done():
				return
			}
		}
	}
}

// errNoVersiond is a host that answers 404 at /devshard/runtime.
var errNoVersiond = errors.New("no versiond")

// poll asks host base for its runtime config: at once without a revision,
// else waiting up to r.wait for one newer than after.
func (r *runtimes) poll(ctx context.Context, base string, after uint64, have bool) (*versiond.Runtime, error) {
	q := url.Values{"wait": {r.wait.String()}}
	if have {
		q.Set("after", strconv.FormatUint(after, 10))
	}
	ctx, cancel := context.WithTimeout(ctx, r.wait+10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/devshard/runtime?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, errNoVersiond
	default:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("GET /devshard/runtime answered %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	var rt versiond.Runtime
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&rt); err != nil {
		return nil, fmt.Errorf("GET /devshard/runtime answered what is not a runtime config: %w", err)
	}
	return &rt, nil
}

// servingOf lists the versions of rt in state serving: only those take
// new sessions.
func servingOf(rt *versiond.Runtime) []string {
	var out []string
	for _, v := range rt.Versions {
		if v.State == versiond.StateServing {
			out = append(out, v.Name)
		}
	}
	return out
}

// retireUnapproved settles the lanes' escrows whose runtime version the
// chain no longer approves. Hosts drain a version that leaves the list
// and then stop it (docs/versiond.md): an escrow kept taking requests
// under it would keep that version's sessions open through the whole
// drain, and then find its hosts gone. The next request opens an escrow
// under a version that is still approved.
func (g *Gateway) retireUnapproved() {
	g.mu.Lock()
	var named []*escrow
	for _, e := range g.lanes {
		if e != nil && e.snap.RuntimeVersion != "" {
			named = append(named, e)
		}
	}
	g.mu.Unlock()
	if len(named) == 0 {
		return // nothing to ask the chain about
	}
	approved, err := g.chain.ApprovedVersions(g.loopCx)
	if err != nil {
		return // asked again at the next poll
	}
	for _, e := range named {
		if slices.ContainsFunc(approved, func(v versiond.Version) bool { return v.Name == e.snap.RuntimeVersion }) {
			continue
		}
		g.log.Info("runtime version no longer approved; settling escrow", "escrow", e.id(), "runtime", e.snap.RuntimeVersion)
		g.retire(e)
	}
}
