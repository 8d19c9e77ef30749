package hostapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Error is a host's answer other than success, or no answer: which host,
// its status and its sentence. Status 0 means the host was not reached, or
// its answer broke off.
type Error struct {
	// URL is the host's base URL.
	URL     string
	Status  int
	Message string
}

func (e *Error) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("host %s unreachable: %s", e.URL, e.Message)
	}
	return fmt.Sprintf("host %s answered %d: %s", e.URL, e.Status, e.Message)
}

// IsUnreachable reports whether err means the host is down (no answer, or
// a 5xx) rather than that it refused the request: a caller tries another
// host, or the same one later.
func IsUnreachable(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.Status == 0 || e.Status >= 500)
}

// IsInitializing reports whether err is a host's answer that its storage
// is not ready yet (503): it answers once it is.
func IsInitializing(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusServiceUnavailable && strings.HasPrefix(e.Message, Initializing)
}

// IsStorageFailing reports whether err is a host's answer that its storage
// is failing (503, not Initializing): it is up, but serves no session until
// its storage is back, so a caller goes to another host.
func IsStorageFailing(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusServiceUnavailable && !strings.HasPrefix(e.Message, Initializing)
}

// maxErrorBody bounds the refusal a client reads: a sentence.
const maxErrorBody = 64 << 10

// readError is the *Error of a host's non-2xx answer: the sentence of its
// ErrorResponse, or the body as it came.
func readError(baseURL string, resp *http.Response) *Error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var body ErrorResponse
	if json.Unmarshal(raw, &body) != nil || body.Error == "" {
		body.Error = strings.TrimSpace(string(raw))
	}
	return &Error{URL: baseURL, Status: resp.StatusCode, Message: body.Error}
}

// tooLargeError is a host answer longer than a client reads.
type tooLargeError struct{ limit int64 }

func (e *tooLargeError) Error() string {
	return fmt.Sprintf("the host's answer is longer than the %d bytes a client reads", e.limit)
}

// boundedReader reads at most limit bytes of r, and fails with a
// *tooLargeError rather than cut an answer that goes on.
type boundedReader struct {
	r     io.Reader
	left  int64
	limit int64
}

func bounded(r io.Reader, limit int64) *boundedReader {
	return &boundedReader{r: r, left: limit, limit: limit}
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// At the limit: an answer that ends here is whole.
		var one [1]byte
		if n, err := b.r.Read(one[:]); n == 0 {
			return 0, err
		}
		return 0, &tooLargeError{limit: b.limit}
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	return n, err
}
