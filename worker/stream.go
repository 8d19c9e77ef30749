package worker

import (
	"context"
	"sync"

	"github.com/devshard/devshard/hostapi"
)

// stream sends an inference's pieces to the host as they come. One call is
// in flight at a time: pieces that come meanwhile wait and go together in
// the next call, so a fast model is not held to one round trip a piece,
// and a lone piece leaves at once.
type stream struct {
	ctx   context.Context
	host  Host
	lease hostapi.Lease

	mu      sync.Mutex
	waiting []string
	sent    bool // a piece left (or is leaving) for the host
	sending bool
	seq     uint64
	err     error
	idle    *sync.Cond // signalled when a call ends
}

func newStream(ctx context.Context, host Host, lease hostapi.Lease) *stream {
	s := &stream{ctx: ctx, host: host, lease: lease}
	s.idle = sync.NewCond(&s.mu)
	return s
}

// add queues a piece and starts a call if none is in flight. It returns
// the error of an earlier call, which stops the run.
func (s *stream) add(piece string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	if piece == "" {
		return nil
	}
	s.waiting = append(s.waiting, piece)
	s.sent = true
	if !s.sending {
		s.sending = true
		go s.send()
	}
	return nil
}

// send makes calls until nothing waits.
func (s *stream) send() {
	s.mu.Lock()
	for len(s.waiting) > 0 && s.err == nil {
		batch, seq := s.waiting, s.seq
		s.waiting = nil
		s.mu.Unlock()
		err := s.host.Pieces(s.ctx, s.lease, seq, batch)
		s.mu.Lock()
		if err != nil {
			s.err = err
			break
		}
		s.seq++
	}
	s.sending = false
	s.idle.Broadcast()
	s.mu.Unlock()
}

// empty reports whether no piece has left yet: a run lost with its
// executor may then run again.
func (s *stream) empty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.sent
}

// close waits until every piece has reached the host, and returns the
// first error.
func (s *stream) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.sending {
		s.idle.Wait()
	}
	return s.err
}
