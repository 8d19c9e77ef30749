// Package sse reads server-sent event streams: a host's inference stream,
// an OpenAI-compatible model server's completion stream, a gateway's chat
// stream. It follows the WHATWG event-stream format: "field: value" lines,
// comment lines starting with a colon, and a blank line that dispatches the
// event gathered so far. Every stream here comes from a party the reader
// does not trust to keep its lines short, so a line has a bound.
//
// An event named "error" is not handed to the caller as data: it ends the
// stream as an *Error carrying the sender's message, so no reader can skip
// it by only looking at data.
package sse

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Event is one dispatched event.
type Event struct {
	// Name is the event's type: the last "event:" field, or "message"
	// when the sender named none.
	Name string
	// Data is the event's "data:" lines joined by newlines.
	Data string
}

// Error is an event named "error": the sender says the stream failed.
type Error struct {
	// Message is the sender's sentence: the "message" or "error" of a JSON
	// data payload, or the data as it came.
	Message string
}

func (e *Error) Error() string { return "the stream reported an error: " + e.Message }

// TooLongError is a line longer than the reader's bound.
type TooLongError struct{ Limit int }

func (e *TooLongError) Error() string {
	return fmt.Sprintf("a line of the stream is longer than the %d bytes read", e.Limit)
}

// Reader reads events from a stream, one Next at a time.
type Reader struct {
	sc    *bufio.Scanner
	limit int
	first bool
}

// NewReader reads events from r, refusing any line longer than maxLine
// bytes (its terminator aside).
func NewReader(r io.Reader, maxLine int) *Reader {
	sc := bufio.NewScanner(r)
	// Room for the line and a CRLF: a line of exactly maxLine is taken.
	sc.Buffer(make([]byte, 0, min(maxLine+2, 64<<10)), maxLine+2)
	sc.Split(splitLine)
	return &Reader{sc: sc, limit: maxLine, first: true}
}

// Next returns the next event. A clean end of the stream is io.EOF; an
// event cut off by the end, with no blank line after it, is dropped, as
// the format says. An "error" event is an *Error, a line over the bound a
// *TooLongError; a failed read is returned as it came.
func (r *Reader) Next() (Event, error) {
	var (
		name    string
		data    strings.Builder
		hasData bool
	)
	for r.sc.Scan() {
		line := r.sc.Bytes()
		if r.first {
			line = bytes.TrimPrefix(line, []byte("\ufeff"))
			r.first = false
		}
		if len(line) > r.limit {
			return Event{}, &TooLongError{Limit: r.limit}
		}
		if len(line) == 0 {
			if !hasData {
				name = "" // an event with no data is not dispatched
				continue
			}
			ev := Event{Name: name, Data: data.String()}
			if ev.Name == "" {
				ev.Name = "message"
			}
			if ev.Name == "error" {
				return Event{}, &Error{Message: message(ev.Data)}
			}
			return ev, nil
		}
		if line[0] == ':' {
			continue // a comment, such as a keep-alive
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "event":
			name = string(value)
		case "data":
			if hasData {
				data.WriteByte('\n')
			}
			data.Write(value)
			hasData = true
		}
		// id and retry steer a browser's reconnection; no reader here
		// reconnects, so they are ignored, as are unknown fields.
	}
	err := r.sc.Err()
	switch {
	case err == nil:
		return Event{}, io.EOF
	case errors.Is(err, bufio.ErrTooLong):
		return Event{}, &TooLongError{Limit: r.limit}
	}
	return Event{}, err
}

// message is the sentence of an error event's data: servers send a bare
// sentence, {"message": …}, {"error": "…"} or {"error": {"message": …}}.
func message(data string) string {
	var body struct {
		Message string          `json:"message"`
		Error   json.RawMessage `json:"error"`
	}
	if json.Unmarshal([]byte(data), &body) != nil {
		return strings.TrimSpace(data)
	}
	if body.Message != "" {
		return body.Message
	}
	var s string
	if json.Unmarshal(body.Error, &s) == nil && s != "" {
		return s
	}
	var nested struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body.Error, &nested) == nil && nested.Message != "" {
		return nested.Message
	}
	return strings.TrimSpace(data)
}

// splitLine splits at "\n", "\r\n" or a lone "\r", the three line ends the
// format allows.
func splitLine(data []byte, atEOF bool) (int, []byte, error) {
	i := bytes.IndexAny(data, "\r\n")
	switch {
	case i < 0 && atEOF && len(data) > 0:
		return len(data), data, nil
	case i < 0:
		return 0, nil, nil
	case data[i] == '\n':
		return i + 1, data[:i], nil
	case i+1 < len(data) && data[i+1] == '\n':
		return i + 2, data[:i], nil
	case i+1 < len(data) || atEOF:
		return i + 1, data[:i], nil
	}
	return 0, nil, nil // a "\r" at the end of what has come: "\n" may follow
}
