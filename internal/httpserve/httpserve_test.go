package httpserve

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// serve runs h behind BodyDeadline(d) on a real listener.
func serve(t *testing.T, h http.Handler, d time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: BodyDeadline(h, d), ReadHeaderTimeout: HeaderTimeout}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// A client that sends its body a byte at a time is cut once the bound has
// passed. Without BodyDeadline the handler read on for as long as the
// client kept sending (here 5 s, then the test's own cut).
func TestSlowBodyIsCut(t *testing.T) {
	t.Parallel()
	const bound = 300 * time.Millisecond
	type outcome struct {
		err  error
		took time.Duration
	}
	got := make(chan outcome, 1)
	addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		began := time.Now()
		_, err := io.ReadAll(r.Body)
		got <- outcome{err, time.Since(began)}
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestTimeout)
		}
	}), bound)

	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	_, err = fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
	require.NoError(t, err)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for range 100 {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := conn.Write([]byte("a")); err != nil {
				return
			}
		}
	}()
	var o outcome
	select {
	case o = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the slow body was not cut")
	}
	require.ErrorIs(t, o.err, ErrSlowBody)
	require.GreaterOrEqual(t, o.took, bound-50*time.Millisecond)
	require.Less(t, o.took, bound+time.Second)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusRequestTimeout, resp.StatusCode)
}

// An answer streamed for longer than the bound, after a body read in time,
// completes, and its request's context is not cancelled.
func TestStreamOutlivesTheBodyBound(t *testing.T) {
	t.Parallel()
	const bound = 200 * time.Millisecond
	addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusOK)
		for i := range 8 { // 800 ms, four times the bound
			select {
			case <-r.Context().Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			fmt.Fprintf(w, "%s %d\n", body, i)
			w.(http.Flusher).Flush()
		}
		fmt.Fprintln(w, "done")
	}), bound)
	resp, err := http.Post("http://"+addr+"/", "text/plain", strings.NewReader("piece"))
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	out, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	require.Len(t, lines, 9, string(out))
	require.Equal(t, "piece 7", lines[7])
	require.Equal(t, "done", lines[8])
}
