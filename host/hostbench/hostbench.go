// Package hostbench holds the host daemon's benchmark workloads, so that
// `go test -bench` in host/ and `devshard bench host` measure the same
// thing: the host-side cost of one diff (decode, verify, persist, sign)
// against the protocol's pure apply, and a daemon's startup over stored
// sessions (see startup.go).
package hostbench

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/host"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionbench"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/store"
)

// Escrows serves escrow snapshots from a map, standing in for the chain.
type Escrows map[uint64]*sessionpb.EscrowSnapshot

// EscrowSnapshot implements host.Escrows.
func (e Escrows) EscrowSnapshot(_ context.Context, id uint64) (*sessionpb.EscrowSnapshot, error) {
	snap, ok := e[id]
	if !ok {
		return nil, fmt.Errorf("%w: %d", host.ErrUnknownEscrow, id)
	}
	return snap, nil
}

// Apply workload: one escrow's first ApplyDiffs steady-state diffs
// (sessionbench.NewPipeline: each starts an inference and confirms and
// finishes the previous one, three signatures per diff).
const (
	ApplyEscrow = 21
	ApplyDiffs  = 1000
)

// ApplyWorkload posts a pre-signed session to a host engine, diff by diff,
// as a gateway would.
type ApplyWorkload struct {
	p *sessionbench.Pipeline
}

// NewApplyWorkload signs the workload's diffs.
func NewApplyWorkload() (*ApplyWorkload, error) {
	p, err := sessionbench.NewPipeline(ApplyEscrow, ApplyDiffs)
	if err != nil {
		return nil, err
	}
	return &ApplyWorkload{p: p}, nil
}

// Len is the number of diffs in one pass.
func (w *ApplyWorkload) Len() int { return len(w.p.Raw) }

// newEngine is a host holding slot 0 of the workload's escrow, over st.
// The gateway posts no request payloads, so the host re-runs nothing: what
// is measured is decode, protocol checks, persistence (the diff, a state
// signature, a snapshot every K nonces) and signing. Its warnings about
// validations it cannot run are discarded.
func (w *ApplyWorkload) newEngine(st store.Store) *host.Engine {
	f := w.p.Fixture
	e := host.New(host.Config{Key: f.SlotKey(0), Store: st, Escrows: Escrows{ApplyEscrow: f.Snapshot},
		Executor: executor.Builtin{}, Logger: slog.New(slog.DiscardHandler)})
	e.MarkReady()
	return e
}

// Host applies every diff through a fresh engine over st, which must be
// empty, and returns the time the pass took. The first diff creates the
// session, as on a real host.
func (w *ApplyWorkload) Host(ctx context.Context, st store.Store) (time.Duration, error) {
	e := w.newEngine(st)
	start := time.Now()
	for i, raw := range w.p.Raw {
		if _, err := e.ApplyDiff(ctx, ApplyEscrow, raw, nil); err != nil {
			return 0, fmt.Errorf("host apply of diff %d: %w", i+1, err)
		}
	}
	took := time.Since(start)
	e.Wait()
	return took, nil
}

// Pure applies every diff to a fresh session with session.Apply alone (the
// diffs already decoded) and returns the time the pass took.
func (w *ApplyWorkload) Pure() (time.Duration, error) {
	s, err := session.New(w.p.Fixture.Snapshot, nil)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	for _, d := range w.p.Diffs {
		if _, err := s.Apply(d); err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// BenchHost is Host as a benchmark: one diff per iteration, a fresh store
// from open (off the clock) after every pass.
func (w *ApplyWorkload) BenchHost(b *testing.B, open func(*testing.B) store.Store) {
	ctx := context.Background()
	var e *host.Engine
	var st store.Store
	i := w.Len()
	for b.Loop() {
		if i == w.Len() {
			b.StopTimer()
			if st != nil {
				e.Wait()
				st.Close()
			}
			st = open(b)
			e = w.newEngine(st)
			i = 0
			b.StartTimer()
		}
		if _, err := e.ApplyDiff(ctx, ApplyEscrow, w.p.Raw[i], nil); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.StopTimer()
	e.Wait()
	st.Close()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "diffs/s")
}

// BenchPure is Pure as a benchmark: one diff per iteration, a fresh session
// (off the clock) after every pass.
func (w *ApplyWorkload) BenchPure(b *testing.B) {
	var s *session.Session
	i := len(w.p.Diffs)
	for b.Loop() {
		if i == len(w.p.Diffs) {
			b.StopTimer()
			var err error
			if s, err = session.New(w.p.Fixture.Snapshot, nil); err != nil {
				b.Fatal(err)
			}
			i = 0
			b.StartTimer()
		}
		if _, err := s.Apply(w.p.Diffs[i]); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "diffs/s")
}
