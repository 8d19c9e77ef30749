package sse

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// readAll reads events until the first error, which it returns too.
func readAll(stream string, maxLine int) ([]Event, error) {
	r := NewReader(strings.NewReader(stream), maxLine)
	var out []Event
	for {
		ev, err := r.Next()
		if err != nil {
			return out, err
		}
		out = append(out, ev)
	}
}

func TestReaderFraming(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, stream string
		want         []Event
	}{
		{"one data line", "data: hi\n\n", []Event{{"message", "hi"}}},
		{"no space after the colon", "data:hi\n\n", []Event{{"message", "hi"}}},
		{"only one leading space is dropped", "data:  hi\n\n", []Event{{"message", " hi"}}},
		{"lines joined by newlines", "data: a\ndata: b\n\n", []Event{{"message", "a\nb"}}},
		{"named event", "event: done\ndata: {}\n\n", []Event{{"done", "{}"}}},
		{"name does not leak into the next event", "event: x\ndata: 1\n\ndata: 2\n\n", []Event{{"x", "1"}, {"message", "2"}}},
		{"comments are skipped", ": keep-alive\n\ndata: a\n: mid\n\n", []Event{{"message", "a"}}},
		{"an event without data is not dispatched", "event: x\n\ndata: a\n\n", []Event{{"message", "a"}}},
		{"id, retry and unknown fields are ignored", "id: 4\nretry: 10\nfoo: bar\ndata: a\n\n", []Event{{"message", "a"}}},
		{"CRLF and lone CR end lines", "data: a\r\n\r\ndata: b\r\rdata: c\n\n", []Event{{"message", "a"}, {"message", "b"}, {"message", "c"}}},
		{"a byte-order mark is dropped", "\ufeffdata: a\n\n", []Event{{"message", "a"}}},
		{"an event cut off by the end is dropped", "data: a\n\ndata: b\n", []Event{{"message", "a"}}},
		{"empty data is an event", "data\n\n", []Event{{"message", ""}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := readAll(tc.stream, 64)
			require.ErrorIs(t, err, io.EOF)
			require.Equal(t, tc.want, got)
		})
	}
}

// An upstream that fails mid-stream says so in an "error" event; a reader
// that looks only at data would skip it and wait for an end that never
// comes, or take a cut answer as whole.
func TestReaderErrorEvent(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ data, want string }{
		{"model crashed", "model crashed"},
		{`{"message":"out of memory"}`, "out of memory"},
		{`{"error":"context too long"}`, "context too long"},
		{`{"error":{"message":"rate limited","type":"server_error"}}`, "rate limited"},
		{`{"code":3}`, `{"code":3}`},
	} {
		got, err := readAll("data: a\n\nevent: error\ndata: "+tc.data+"\n\ndata: b\n\n", 128)
		var e *Error
		require.True(t, errors.As(err, &e), "%q: %v", tc.data, err)
		require.Equal(t, tc.want, e.Message)
		require.Equal(t, []Event{{"message", "a"}}, got)
	}
}

func TestReaderLineBound(t *testing.T) {
	t.Parallel()
	for _, end := range []string{"\n", "\r\n", "\r", ""} {
		// A line of exactly the bound is taken, whatever ends it.
		got, err := readAll("data: "+strings.Repeat("x", 10)+end+end, 16)
		require.ErrorIs(t, err, io.EOF)
		if end != "" {
			require.Equal(t, []Event{{"message", strings.Repeat("x", 10)}}, got)
		}
		// One byte more is refused.
		_, err = readAll("data: "+strings.Repeat("x", 11)+end+end, 16)
		var tl *TooLongError
		require.ErrorAs(t, err, &tl, "end %q", end)
		require.Equal(t, 16, tl.Limit)
	}
	// Far longer lines are refused before they are buffered whole.
	_, err := readAll("data: "+strings.Repeat("x", 1<<20)+"\n\n", 16)
	var tl *TooLongError
	require.ErrorAs(t, err, &tl)
}

// A failed read is the caller's to see, not an end of stream.
func TestReaderPassesReadErrors(t *testing.T) {
	t.Parallel()
	boom := errors.New("connection reset")
	r := NewReader(io.MultiReader(strings.NewReader("data: a\n\n"), errReader{boom}), 64)
	ev, err := r.Next()
	require.NoError(t, err)
	require.Equal(t, "a", ev.Data)
	_, err = r.Next()
	require.ErrorIs(t, err, boom)
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// FuzzReader: any stream ends in an error without panicking, and every
// event dispatched has a name.
func FuzzReader(f *testing.F) {
	f.Add("data: a\n\nevent: error\ndata: {\"error\":{\"message\":\"x\"}}\n\n")
	f.Add(": c\r\ndata\rdata: b\n\n")
	f.Fuzz(func(t *testing.T, stream string) {
		r := NewReader(strings.NewReader(stream), 32)
		for range len(stream) + 1 {
			ev, err := r.Next()
			if err != nil {
				return
			}
			if ev.Name == "" {
				t.Fatalf("event without a name in %q", stream)
			}
		}
		t.Fatalf("more events than bytes in %q", stream)
	})
}
