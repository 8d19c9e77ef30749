package chainload

import (
	"context"
	"sync"
	"time"

	"github.com/devshard/devshard/chain/localnet"
)

// pollInterval is how often the watcher asks its node for its height:
// the resolution of every block interval measured.
const pollInterval = 10 * time.Millisecond

// watcher records, for each height, when its node decided the block (its
// block store holds it: CometBFT saves a block before it executes it) and
// when its app committed it: the first time a poll saw each.
type watcher struct {
	nd *localnet.Node

	mu        sync.Mutex
	decided   map[int64]time.Time
	committed map[int64]time.Time
	stored    int64         // highest height decided
	highest   int64         // highest height committed
	changed   chan struct{} // closed and replaced when highest moves
}

func newWatcher(nd *localnet.Node) *watcher {
	return &watcher{nd: nd, decided: map[int64]time.Time{}, committed: map[int64]time.Time{}, changed: make(chan struct{})}
}

// run polls until ctx ends, the block store and the app each on its own
// goroutine: the app answers only between the ABCI calls it is serving
// (CheckTx, a block's execution), and that wait must not delay the
// other poll. A poll that finds several new heights at once gives them
// all its time.
func (w *watcher) run(ctx context.Context) {
	go poll(ctx, func() {
		st, err := w.nd.Status(ctx)
		if err != nil {
			return
		}
		now := time.Now()
		w.mu.Lock()
		defer w.mu.Unlock()
		for ; w.stored < st.SyncInfo.LatestBlockHeight; w.stored++ {
			w.decided[w.stored+1] = now
		}
	})
	poll(ctx, func() {
		h, err := w.nd.Height(ctx)
		if err != nil {
			return
		}
		now := time.Now()
		w.mu.Lock()
		defer w.mu.Unlock()
		if h <= w.highest {
			return
		}
		for at := w.highest + 1; at <= h; at++ {
			w.committed[at] = now
		}
		w.highest = h
		close(w.changed)
		w.changed = make(chan struct{})
	})
}

// poll calls fn every pollInterval until ctx ends.
func poll(ctx context.Context, fn func()) {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		fn()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// next waits for the next height the node commits and returns it.
func (w *watcher) next(ctx context.Context) (int64, error) {
	w.mu.Lock()
	h, changed := w.highest, w.changed
	w.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-changed:
		}
		w.mu.Lock()
		at := w.highest
		changed = w.changed
		w.mu.Unlock()
		if at > h {
			return at, nil
		}
	}
}

// waitFor returns once both polls have seen height h.
func (w *watcher) waitFor(ctx context.Context, h int64) error {
	for {
		w.mu.Lock()
		seen := w.stored >= h && w.highest >= h
		w.mu.Unlock()
		if seen {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollInterval / 2):
		}
	}
}

// at is when height h was first seen committed (zero if it never was).
func (w *watcher) at(h int64) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.committed[h]
}

// exec is how long the node took from deciding block h to committing it:
// executing its txs and writing the state. Zero if either was not seen.
func (w *watcher) exec(h int64) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	d, ok1 := w.decided[h]
	c, ok2 := w.committed[h]
	if !ok1 || !ok2 {
		return 0
	}
	return max(0, c.Sub(d))
}
