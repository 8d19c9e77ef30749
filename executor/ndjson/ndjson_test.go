package ndjson

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
)

func request(content string, maxTokens int) executor.Request {
	return executor.Request{Model: executor.BuiltinModel, MaxTokens: maxTokens, Messages: []executor.Message{{Role: "user", Content: content}}}
}

// served is Serve running executor.Builtin on pipes: the test writes
// request lines to in and reads answers from out.
type served struct {
	in   *io.PipeWriter
	out  *Decoder
	done chan error
}

func setup(t *testing.T, limitedTo int) *served {
	t.Helper()
	return serve(t, executor.Builtin{}, limitedTo)
}

// serve is Serve running exec on pipes, read up to its ready line.
func serve(t *testing.T, exec executor.Executor, limitedTo int) *served {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	s := &served{in: inW, out: NewDecoder(outR, MaxLine), done: make(chan error, 1)}
	go func() { s.done <- Serve(context.Background(), inR, outW, exec, limitedTo); outW.Close() }()
	t.Cleanup(func() { inW.Close(); outR.Close() })
	var ready Ready
	s.read(t, &ready)
	require.True(t, ready.Ready)
	require.Equal(t, []string{executor.BuiltinModel}, ready.Models)
	return s
}

func (s *served) send(t *testing.T, line string) {
	t.Helper()
	_, err := io.WriteString(s.in, line+"\n")
	require.NoError(t, err)
}

func (s *served) read(t *testing.T, v any) {
	t.Helper()
	line, err := s.out.Line()
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(line, v), "line %s", line)
}

// final reads answers until id's final line, returning its pieces too.
func (s *served) final(t *testing.T, id string) (Answer, string) {
	t.Helper()
	var text strings.Builder
	for {
		var a Answer
		s.read(t, &a)
		require.Equal(t, id, a.ID)
		if a.Final() {
			return a, text.String()
		}
		require.NotNil(t, a.Piece, "a line that is neither piece nor final")
		text.WriteString(*a.Piece)
	}
}

func line(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

func TestExecutorServedAnswersAsBuiltinDoes(t *testing.T) {
	t.Parallel()
	s := setup(t, 2)
	req := request("what is a diff?", 1000)
	want, err := executor.Builtin{}.Execute(context.Background(), req, func(string) error { return nil })
	require.NoError(t, err)
	for _, kind := range []Kind{KindInference, KindValidation} {
		s.send(t, line(t, Request{ID: "a-" + string(kind), Task: Task{Kind: kind, Request: req}}))
		a, pieces := s.final(t, "a-"+string(kind))
		require.Empty(t, a.Error)
		require.Equal(t, Output{Text: want.Text, Usage: want.Usage, FinishReason: want.FinishReason}, *a.Output)
		require.Equal(t, want.Text, pieces, "pieces concatenate to the text")
	}
	s.in.Close()
	require.NoError(t, <-s.done, "closing stdin ends Serve cleanly")
}

// TestExecutorServeSurvivesBadLines: each bad line is refused as the protocol
// says, and the request after it is still answered.
func TestExecutorServeSurvivesBadLines(t *testing.T) {
	t.Parallel()
	s := setup(t, 1)
	good := line(t, Request{ID: "ok", Task: Task{Kind: KindInference, Request: request("hello", 5)}})

	s.send(t, `not json at all`) // no id: logged, skipped
	s.send(t, `{"task":{"kind":"inference"}}`)
	s.send(t, `{"id":"m","task":{"kind":"inference","request":{"max_tokens":"ten"}}}`)
	a, _ := s.final(t, "m")
	require.Equal(t, ClassBadRequest, a.Class)
	require.Contains(t, a.Error, "malformed request")

	s.send(t, `{"id":"k","task":{"kind":"training","request":{}}}`)
	a, _ = s.final(t, "k")
	require.Equal(t, ClassBadRequest, a.Class)
	require.Contains(t, a.Error, `got "training"`)

	s.send(t, line(t, Request{ID: "b", Task: Task{Kind: KindInference, Request: request("hello", 0)}}))
	a, _ = s.final(t, "b")
	require.Equal(t, ClassBadRequest, a.Class, "a request the executor refuses as bad is class bad_request")
	require.Contains(t, a.Error, "max_tokens must be positive")

	s.send(t, `{"id":"long","pad":"`+strings.Repeat("x", MaxLine)+`"}`)
	s.send(t, good)
	a, pieces := s.final(t, "ok")
	require.NotNil(t, a.Output, "the request after an over-long line is answered: %s", a.Error)
	require.Equal(t, a.Output.Text, pieces)
}

func TestExecutorLinesOverTheLimitSkipped(t *testing.T) {
	t.Parallel()
	in := "short\n" + strings.Repeat("y", 100) + "\nafter\r\n" + strings.Repeat("z", 11) + "\nexactly10!\nlast"
	d := NewDecoder(strings.NewReader(in), 10)
	d.r = bufio.NewReaderSize(strings.NewReader(in), 16) // the smallest buffer, so lines cross reads
	var got []string
	tooLong := 0
	for {
		l, err := d.Line()
		if err == io.EOF {
			break
		}
		if _, ok := err.(*LineTooLongError); ok {
			tooLong++
			continue
		}
		require.NoError(t, err)
		got = append(got, string(l))
	}
	require.Equal(t, []string{"short", "after", "exactly10!", "last"}, got)
	require.Equal(t, 2, tooLong)
}

func TestExecutorLinesOverTheLimitNotWritten(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	e := NewEncoder(&b, 30)
	require.NoError(t, e.Encode(Ready{Ready: true}))
	var tooLong *LineTooLongError
	require.ErrorAs(t, e.Encode(Ready{Ready: true, Models: []string{"a-rather-long-model-name"}}), &tooLong)
	require.Equal(t, "{\"ready\":true,\"models\":null}\n", b.String(), "only the line in the limit was written")
}

func TestExecutorServeEndsWithItsContext(t *testing.T) {
	t.Parallel()
	inR, inW := io.Pipe()
	t.Cleanup(func() { inW.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, inR, io.Discard, executor.Builtin{ThinkTime: time.Hour}, 1) }()
	_, err := io.WriteString(inW, line(t, Request{ID: "slow", Task: Task{Kind: KindInference, Request: request("hi", 5)}})+"\n")
	require.NoError(t, err)
	cancel()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not end with its context")
	}
}

// FuzzExecutorLines: whatever the input, the decoder ends, never returns a line
// over its limit or one holding a newline, and returns every short line.
func FuzzExecutorLines(f *testing.F) {
	f.Add("a\nbb\r\nccc", 2)
	f.Add(strings.Repeat("x", 40)+"\n\ny", 16)
	f.Fuzz(func(t *testing.T, in string, limit int) {
		limit = 1 + abs(limit)%64
		d := NewDecoder(strings.NewReader(in), limit)
		d.r = bufio.NewReaderSize(strings.NewReader(in), 16)
		var got []string
		for range len(in) + 2 {
			l, err := d.Line()
			if err == io.EOF {
				break
			}
			if _, ok := err.(*LineTooLongError); ok {
				continue
			}
			require.NoError(t, err)
			require.LessOrEqual(t, len(l), limit)
			require.NotContains(t, string(l), "\n")
			got = append(got, string(l))
		}
		var want []string
		for i, l := range strings.Split(in, "\n") {
			if i == strings.Count(in, "\n") && l == "" {
				break // no line after a final newline
			}
			if l = strings.TrimSuffix(l, "\r"); len(l) <= limit {
				want = append(want, l)
			}
		}
		require.Equal(t, want, got)
	})
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

// LineBuffered tells whether the next Line is already read: true while
// whole lines wait in the buffer, false before a read would wait (none,
// or only part of a line).
func TestLineBuffered(t *testing.T) {
	t.Parallel()
	d := NewDecoder(strings.NewReader("one\ntwo\npart"), MaxLine)
	require.False(t, d.LineBuffered(), "nothing is read before the first Line")
	line, err := d.Line()
	require.NoError(t, err)
	require.Equal(t, "one", string(line))
	require.True(t, d.LineBuffered())
	line, err = d.Line()
	require.NoError(t, err)
	require.Equal(t, "two", string(line))
	require.False(t, d.LineBuffered(), "only part of a line waits")
}
