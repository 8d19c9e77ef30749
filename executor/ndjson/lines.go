package ndjson

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// MaxLine bounds one line either way. A request carries a whole prompt and
// an output a whole answer, so it is generous; it is there so that a
// runaway peer costs an error, not the worker's memory.
const MaxLine = 16 << 20

// LineTooLongError is a line over the reader's or writer's limit. A
// Decoder that returns it has skipped the rest of that line, so the next
// call reads the line after it.
type LineTooLongError struct {
	Limit int
}

func (e *LineTooLongError) Error() string {
	return fmt.Sprintf("line longer than the limit of %d bytes; skipped", e.Limit)
}

// Decoder reads lines of at most a limit.
type Decoder struct {
	r     *bufio.Reader
	limit int
	line  []byte
}

// NewDecoder reads r in lines of at most limit bytes, not counting the
// newline.
func NewDecoder(r io.Reader, limit int) *Decoder {
	return &Decoder{r: bufio.NewReaderSize(r, 64<<10), limit: limit}
}

// LineBuffered reports whether a whole line is already read and waiting,
// so that the next Line returns without waiting for its reader: a reader
// that hands on what it decodes can tell the lines that came together.
func (d *Decoder) LineBuffered() bool {
	n := d.r.Buffered()
	if n == 0 {
		return false
	}
	b, _ := d.r.Peek(n) // buffered already: never waits
	return bytes.IndexByte(b, '\n') >= 0
}

// Line returns the next line without its newline (and without a trailing
// carriage return). The slice is the Decoder's own and is overwritten by
// the next call. A line over the limit is skipped whole and reported as a
// *LineTooLongError; the Decoder can be read on. A last line without a
// newline is returned as a line; then io.EOF.
func (d *Decoder) Line() ([]byte, error) {
	d.line = d.line[:0]
	tooLong := false
	for {
		chunk, err := d.r.ReadSlice('\n')
		if !tooLong {
			if len(d.line)+len(chunk) > d.limit+2 { // +2: "\r\n"
				tooLong = true
				d.line = d.line[:0]
			} else {
				d.line = append(d.line, chunk...)
			}
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err != nil && (len(d.line) == 0 || tooLong):
			if tooLong && errors.Is(err, io.EOF) {
				return nil, &LineTooLongError{Limit: d.limit}
			}
			return nil, err
		}
		if tooLong {
			return nil, &LineTooLongError{Limit: d.limit}
		}
		line := bytes.TrimSuffix(d.line, []byte("\n"))
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) > d.limit {
			return nil, &LineTooLongError{Limit: d.limit}
		}
		return line, nil
	}
}

// Encoder writes values as lines. It is safe for concurrent use: each line
// is one Write under a lock, so lines never interleave mid-line.
type Encoder struct {
	mu    sync.Mutex
	w     io.Writer
	limit int
}

// NewEncoder writes lines of at most limit bytes to w.
func NewEncoder(w io.Writer, limit int) *Encoder {
	return &Encoder{w: w, limit: limit}
}

// Encode writes v as one line of JSON. A value whose line would be over
// the limit is not written and is refused with a *LineTooLongError, since
// the reader would only skip it.
func (e *Encoder) Encode(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > e.limit {
		return &LineTooLongError{Limit: e.limit}
	}
	b = append(b, '\n')
	e.mu.Lock()
	defer e.mu.Unlock()
	_, err = e.w.Write(b)
	return err
}
