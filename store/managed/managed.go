// Package managed wraps any store with epoch retention: it keeps the last N
// epochs (default 3) and prunes older ones when the chain's epoch changes,
// with a periodic catch-up (default every 30s) for hosts that see no epoch
// change for a while, or whose last prune failed.
package managed

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/store"
)

// Defaults.
const (
	DefaultKeep     = 3
	DefaultInterval = 30 * time.Second
)

// Options configure retention.
type Options struct {
	// Keep is how many epochs are kept, the current one included
	// (default 3).
	Keep uint64
	// Interval is the period of the catch-up pass (default 30s).
	Interval time.Duration
	// Current, if set, is asked for the chain's current epoch at each
	// catch-up pass, so a host that missed an epoch change still prunes.
	Current func(ctx context.Context) (uint64, error)
	// OnError receives the errors of background passes (a prune that
	// failed, an epoch source that did not answer). They are retried at the
	// next pass.
	OnError func(error)
	// Unsettled, if set, reports whether epoch still has escrows the host
	// holds that are open on chain. Such an epoch is neither pruned nor
	// refused, whatever the clock says: its sessions are what the host
	// settles from, and a prune that races a storage outage must not take
	// them. An error counts as "yes": the guard fails safe, and the epoch
	// is looked at again at the next pass.
	Unsettled func(ctx context.Context, epoch uint64) (bool, error)
}

// Store is a store with epoch retention. It embeds the wrapped store; only
// CreateSession and Close behave differently. Prune(ctx, epoch) still
// prunes one epoch by hand.
type Store struct {
	store.Store
	opts Options

	mu      sync.Mutex
	current uint64 // latest epoch seen, 0 while unknown
	cursor  uint64 // every epoch below cursor is pruned

	pruneMu sync.Mutex // one prune pass at a time
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
}

// New wraps s and starts the catch-up loop. Close stops it and closes s.
func New(s store.Store, opts Options) *Store {
	if opts.Keep == 0 {
		opts.Keep = DefaultKeep
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	m := &Store{Store: s, opts: opts, stop: make(chan struct{}), done: make(chan struct{})}
	go m.loop()
	return m
}

// SetEpoch records the chain's current epoch, creates the next epoch's
// storage ahead of its first session, and prunes the epochs that fell out of
// the window. An epoch lower than one already seen is ignored.
func (m *Store) SetEpoch(ctx context.Context, epoch uint64) error {
	m.mu.Lock()
	if epoch > m.current {
		m.current = epoch
	}
	m.mu.Unlock()
	if err := m.Store.PrepareEpoch(ctx, epoch+1); err != nil {
		return fmt.Errorf("prepare epoch %d ahead: %w", epoch+1, err)
	}
	return m.Retain(ctx)
}

// Window returns the epochs kept, [first, current]; ok is false while the
// current epoch is unknown.
func (m *Store) Window() (first, current uint64, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.first(), m.current, m.current > 0
}

// first is the oldest epoch kept. m.mu must be held.
func (m *Store) first() uint64 {
	if m.current < m.opts.Keep {
		return 0
	}
	return m.current - m.opts.Keep + 1
}

// Cursor is the prune cursor: every epoch below it has been pruned. It
// advances only when a prune succeeded.
func (m *Store) Cursor() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cursor
}

// Retain runs one prune pass: it prunes, oldest first, every live epoch
// below the window, and stops at the first failure, so the cursor never
// passes an epoch that still has data.
func (m *Store) Retain(ctx context.Context) error {
	m.pruneMu.Lock()
	defer m.pruneMu.Unlock()
	m.mu.Lock()
	first, known := m.first(), m.current > 0
	m.mu.Unlock()
	if !known {
		return nil
	}
	epochs, err := m.Store.Epochs(ctx)
	if err != nil {
		return fmt.Errorf("prune: list epochs: %w", err)
	}
	for _, e := range epochs {
		if e >= first {
			break
		}
		if m.unsettled(ctx, e) {
			// The cursor stops here: later epochs are pruned once this
			// one's escrows have settled.
			return nil
		}
		if err := m.Store.Prune(ctx, e); err != nil {
			return fmt.Errorf("prune epoch %d (keeping %d..): %w", e, first, err)
		}
		m.advance(e + 1)
	}
	m.advance(first)
	return nil
}

// unsettled asks the guard whether epoch still has open escrows.
func (m *Store) unsettled(ctx context.Context, epoch uint64) bool {
	if m.opts.Unsettled == nil {
		return false
	}
	open, err := m.opts.Unsettled(ctx, epoch)
	return open || err != nil
}

func (m *Store) advance(to uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cursor = max(m.cursor, to)
}

// CreateSession refuses an escrow whose epoch is pruned, or about to be,
// then creates it in the wrapped store. An epoch below the window that the
// guard says still has open escrows is not about to be pruned, so it is
// served.
func (m *Store) CreateSession(ctx context.Context, snap *sessionpb.EscrowSnapshot) error {
	if snap != nil {
		m.mu.Lock()
		first, current, cursor := m.first(), m.current, m.cursor
		m.mu.Unlock()
		pruning := snap.Epoch < first && !m.unsettled(ctx, snap.Epoch)
		if pruning || snap.Epoch < cursor {
			return store.Errorf(store.ErrEpochPruned,
				"escrow %d belongs to epoch %d, which this host has pruned or is pruning (it keeps epochs %d..%d)",
				snap.EscrowId, snap.Epoch, max(first, cursor), current)
		}
	}
	return m.Store.CreateSession(ctx, snap)
}

// CatchUp runs one catch-up pass: it asks Current for the epoch, if set,
// and prunes.
func (m *Store) CatchUp(ctx context.Context) error {
	if m.opts.Current != nil {
		epoch, err := m.opts.Current(ctx)
		if err != nil {
			return fmt.Errorf("catch-up: read the current epoch: %w", err)
		}
		return m.SetEpoch(ctx, epoch)
	}
	return m.Retain(ctx)
}

func (m *Store) loop() {
	defer close(m.done)
	t := time.NewTicker(m.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), max(m.opts.Interval, time.Minute))
		if err := m.CatchUp(ctx); err != nil && m.opts.OnError != nil {
			m.opts.OnError(err)
		}
		cancel()
	}
}

// Close stops the catch-up loop and closes the wrapped store.
func (m *Store) Close() error {
	m.once.Do(func() { close(m.stop) })
	<-m.done
	return m.Store.Close()
}
