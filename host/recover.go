package host

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// RecoverAll loads every stored session in parallel workers, logging
// progress, so the first requests after a restart find their sessions warm.
// A request for an escrow not yet reached recovers it at once in its own
// goroutine (the entry lock keeps the work from being done twice), so the
// sessions requests wait for go first. It returns when every session has
// been tried; sessions that fail are logged and left to lazy recovery.
func (e *Engine) RecoverAll(ctx context.Context, workers int) error {
	sessions, err := e.cfg.Store.ListSessions(ctx)
	if err != nil {
		return err
	}
	total := len(sessions)
	e.cfg.Metrics.RecoveryProgress(0, total)
	if total == 0 {
		return nil
	}
	workers = max(1, min(workers, total))
	start := time.Now()
	ids := make(chan uint64)
	var done atomic.Int64
	var wg sync.WaitGroup
	step := max(1, total/10)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				en, err := e.acquire(ctx, id, 0)
				if err != nil {
					e.log.Warn("session not recovered; it will be retried on its first request", "escrow", id, "err", err)
				} else {
					en.mu.Unlock()
				}
				n := int(done.Add(1))
				e.cfg.Metrics.RecoveryProgress(n, total)
				if n%step == 0 || n == total {
					e.log.Info("recovery progress: recovered " + commas(n) + "/" + commas(total) + " sessions")
				}
			}
		}()
	}
	for _, s := range sessions {
		select {
		case ids <- s.EscrowID:
		case <-ctx.Done():
			close(ids)
			wg.Wait()
			return ctx.Err()
		}
	}
	close(ids)
	wg.Wait()
	e.log.Info("recovery done", "sessions", total, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// commas renders 1000 as "1,000".
func commas(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
