package worker

import (
	"context"
	"sync"

	"github.com/devshard/devshard/hostapi"
)

// stream sends an inference's pieces to the host as they come. One call is
// in flight at a time: pieces that come meanwhile wait and go together in
// the next call, so a fast model is not held to one round trip a piece,
// and a lone piece leaves at once. The pieces still waiting when the run
// ends, and those that came with its result, go with the finish (last):
// a signed call fewer an inference, and for a short answer that came
// whole, no pieces call at all.
type stream struct {
	ctx   context.Context
	host  Host
	lease hostapi.Lease

	mu      sync.Mutex
	waiting []string
	sent    bool // a piece was given: the run cannot start over
	sending bool
	ending  bool // last was called: what waits goes with the finish
	seq     uint64
	err     error
	idle    *sync.Cond // signalled when a call ends
}

func newStream(ctx context.Context, host Host, lease hostapi.Lease) *stream {
	s := &stream{ctx: ctx, host: host, lease: lease}
	s.idle = sync.NewCond(&s.mu)
	return s
}

// add queues pieces and starts a call if none is in flight, unless they
// are the last (the run is over): those wait for the finish, which
// carries them (last). It returns the error of an earlier call, which
// stops the run.
func (s *stream) add(pieces []string, last bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	for _, p := range pieces {
		if p != "" {
			s.waiting = append(s.waiting, p)
			s.sent = true
		}
	}
	if len(s.waiting) > 0 && !last && !s.sending {
		s.sending = true
		go s.send()
	}
	return nil
}

// send makes calls until nothing waits.
func (s *stream) send() {
	s.mu.Lock()
	for len(s.waiting) > 0 && s.err == nil && !s.ending {
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

// last ends the stream for a finish: it waits for the call in flight and
// returns the pieces no call took, with the seq their batch has, for the
// finish to carry; or the first error.
func (s *stream) last() (seq uint64, pieces []string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ending = true
	for s.sending {
		s.idle.Wait()
	}
	pieces, s.waiting = s.waiting, nil
	return s.seq, pieces, s.err
}
