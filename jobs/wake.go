package jobs

import (
	"slices"
	"sync"
)

// wakeups tells waiting claimers (ClaimWait) that a job became ready.
//
// An enqueue wakes one waiter that takes the job's kind, not all of them:
// with many idle claim loops, waking all made each look (a claim, which on
// a durable queue is a statement) for the one job only one of them gets.
// No wake-up is lost to this: a waiter registers before it claims, so an
// enqueue that lands during its claim still finds it; and a woken waiter
// that gets nothing from its next claim, or leaves without claiming, or
// got its wake while it was claiming a job already, passes the wake on to
// the next waiter that was already waiting when the job was enqueued. So
// every waiter waiting at the enqueue gets a look, one at a time, until
// one gets a job, and a wake never goes round forever (a waiter that looks
// again registers anew, after the enqueue).
//
// A change that may make jobs of several kinds ready at once (a rescue, a
// reset, another process's enqueue) wakes every waiter, as before.
type wakeups struct {
	mu      sync.Mutex
	seq     uint64    // the last waiter's number
	waiting []*waiter // oldest first
}

// waiter is one ClaimWait's wait.
type waiter struct {
	seq   uint64
	kinds []Kind        // what it claims; none: any kind
	ch    chan wakeCall // holds at most one wake; it leaves the list when woken
}

// wakeCall is a wake for job (of kind), for the waiters numbered up to
// horizon (those waiting when it was enqueued). all wakes were sent to
// every waiter and are not passed on.
type wakeCall struct {
	job     string
	kind    Kind
	horizon uint64
	all     bool
}

func (w *waiter) takes(k Kind) bool { return len(w.kinds) == 0 || slices.Contains(w.kinds, k) }

// add registers a waiter for kinds; it must be removed (remove) or woken.
func (ws *wakeups) add(kinds []Kind) *waiter {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.seq++
	w := &waiter{seq: ws.seq, kinds: kinds, ch: make(chan wakeCall, 1)}
	ws.waiting = append(ws.waiting, w)
	return w
}

// remove takes w off the list and returns the wake it got, if any.
func (ws *wakeups) remove(w *waiter) (wakeCall, bool) {
	ws.mu.Lock()
	if i := slices.Index(ws.waiting, w); i >= 0 {
		ws.waiting = slices.Delete(ws.waiting, i, i+1)
	}
	ws.mu.Unlock()
	select {
	case c := <-w.ch:
		return c, true
	default:
		return wakeCall{}, false
	}
}

// one wakes the oldest waiter that takes kind, for job.
func (ws *wakeups) one(kind Kind, job string) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.wakeLocked(wakeCall{job: job, kind: kind, horizon: ws.seq})
}

// pass hands a wake its waiter could not use to the next waiter it was
// meant for. Wakes sent to all are not passed.
func (ws *wakeups) pass(c wakeCall) {
	if c.all {
		return
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.wakeLocked(c)
}

func (ws *wakeups) wakeLocked(c wakeCall) {
	i := slices.IndexFunc(ws.waiting, func(w *waiter) bool { return w.seq <= c.horizon && w.takes(c.kind) })
	if i < 0 {
		return
	}
	w := ws.waiting[i]
	ws.waiting = slices.Delete(ws.waiting, i, i+1)
	w.ch <- c // off the list, so it gets no other wake: never blocks
}

// all wakes every waiter.
func (ws *wakeups) all() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for _, w := range ws.waiting {
		w.ch <- wakeCall{all: true}
	}
	ws.waiting = nil
}
