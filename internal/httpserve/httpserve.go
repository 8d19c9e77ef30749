// Package httpserve builds the HTTP servers of the host and the gateway.
// Request headers must arrive within HeaderTimeout and a request body
// within BodyTimeout, so slow clients cannot hold connections open; a
// streamed answer, once the body is read, may take as long as it takes.
//
// The body's bound is a read deadline set on the connection when the
// handler starts and lifted once the body has been read to its end, so the
// server's background read that watches for the client going away (and
// cancels the handler's context when it fails) never meets it while an
// answer streams. net/http clears the deadline itself when it starts that
// read; lifting it here keeps the rule in one visible place, and a read
// past the bound fails with ErrSlowBody, which servers answer with 408.
package httpserve

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

const (
	// HeaderTimeout bounds reading a request's headers.
	HeaderTimeout = 10 * time.Second
	// BodyTimeout bounds reading a request's body: 4 MiB, the largest body
	// the host takes, at 140 KB/s.
	BodyTimeout = 30 * time.Second
)

// ErrSlowBody is a request body that did not arrive within its bound.
var ErrSlowBody = errors.New("request body did not arrive in time")

// Server returns a server for h with both bounds.
func Server(h http.Handler) *http.Server {
	return &http.Server{Handler: BodyDeadline(h, BodyTimeout), ReadHeaderTimeout: HeaderTimeout}
}

// BodyDeadline bounds the time h's requests take to deliver their bodies
// to d. A read past it fails with an error wrapping ErrSlowBody, and the
// connection is closed after the answer.
func BodyDeadline(h http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			h.ServeHTTP(w, r)
			return
		}
		rc := http.NewResponseController(w)
		if err := rc.SetReadDeadline(time.Now().Add(d)); err != nil {
			h.ServeHTTP(w, r) // a writer without deadlines: not a network server
			return
		}
		r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc, limit: d}
		h.ServeHTTP(w, r)
	})
}

// deadlineBody lifts the connection's read deadline once the body has been
// read to its end.
type deadlineBody struct {
	io.ReadCloser
	rc     *http.ResponseController
	limit  time.Duration
	lifted bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == nil || b.lifted {
		return n, err
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return n, fmt.Errorf("%w (within %s): %w", ErrSlowBody, b.limit, err)
	}
	if err == io.EOF {
		// The server now reads on in the background to notice the client
		// going away; without a deadline, so a long answer may stream.
		b.lifted = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}
