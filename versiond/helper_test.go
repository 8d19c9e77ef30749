package versiond

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestMain turns the test binary into a child when it is run as one: the
// tests install this very binary as every version's binary, so the child
// is a real process started from a real, verified download.
//
//	<binary> versiond-helper <name> <listen>   a version's child
//	<binary> versiond-manager <dir> <url> <sha256> <ca>   a Manager alone
func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "versiond-helper":
			os.Exit(helperChild(os.Args[2], os.Args[3]))
		case "versiond-manager":
			os.Exit(helperManager(os.Args[2], os.Args[3], os.Args[4], os.Args[5]))
		}
	}
	os.Exit(m.Run())
}

// helperChild is a version's child. Its behaviour follows its name:
// "crash..." exits at every start; "flaky..." exits at its first two
// starts and then serves; "unready..." answers /readyz with 503 for ever;
// any other name serves at once.
func helperChild(name, listen string) int {
	unready := strings.HasPrefix(name, "unready")
	switch {
	case len(name) >= 5 && name[:5] == "crash":
		fmt.Println("crashing at start, as asked")
		return 3
	case len(name) >= 5 && name[:5] == "flaky":
		b, _ := os.ReadFile("starts")
		n, _ := strconv.Atoi(string(b))
		_ = os.WriteFile("starts", []byte(strconv.Itoa(n+1)), 0o644)
		if n < 2 {
			return 3
		}
	}
	var open atomic.Int64
	release := make(chan struct{})
	var releaseOnce sync.Once
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if unready {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("/whoami", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, name) })
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		_ = json.NewEncoder(w).Encode(echo{Path: r.URL.Path, Query: r.URL.RawQuery, Host: r.Host, Header: r.Header, Body: string(body)})
	})
	// /sse sends its second event only once /release was called, so a
	// client that reads the first one before calling it proves the first
	// was not held back.
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-time.After(10 * time.Second):
			io.WriteString(w, "data: timeout\n\n")
			return
		}
		io.WriteString(w, "data: two\n\n")
	})
	// /stream reads the body, then streams ten events a millisecond
	// apart, as a host streams an inference.
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 10 {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(time.Millisecond)
		}
	})
	mux.HandleFunc("/release", func(http.ResponseWriter, *http.Request) { releaseOnce.Do(func() { close(release) }) })
	mux.HandleFunc("/sessions", func(_ http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("open"))
		open.Store(int64(n))
	})
	mux.HandleFunc("/devshard/open-sessions", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, `{"open_sessions": %d}`, open.Load())
	})
	mux.HandleFunc("/exit", func(w http.ResponseWriter, _ *http.Request) {
		w.(http.Flusher).Flush()
		time.AfterFunc(50*time.Millisecond, func() { os.Exit(1) })
	})
	if err := http.ListenAndServe(listen, mux); err != nil {
		fmt.Println(err)
		return 1
	}
	return 0
}

// echo is what the child's /echo saw of a request.
type echo struct {
	Path   string      `json:"path"`
	Query  string      `json:"query"`
	Host   string      `json:"host"`
	Header http.Header `json:"header"`
	Body   string      `json:"body"`
}

// helperManager runs a Manager with one version until it is killed.
func helperManager(dir, url, sha, ca string) int {
	m, err := New(Config{
		Dir: dir, TrustedCA: ca,
		Source: StaticSource{{Name: "v1", URL: url, SHA256: sha}},
	})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	_ = m.Run(context.Background())
	return 0
}

// tempFiles lists the interrupted downloads in dir's versions directory.
func tempFiles(dir string) []string {
	out, _ := filepath.Glob(filepath.Join(dir, "versions", tempPrefix+"*"))
	return out
}
