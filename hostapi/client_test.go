package hostapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/httpauth"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/signing"
)

const testChain = "hostapi-test"

// bundle is a client and the fake host it calls: the host checks that
// every request is signed by the client's key for it and the chain, then
// answers as serve says.
type bundle struct {
	client *Client
	key    *signing.PrivKey
	host   signing.Address
	url    string
}

func setup(t *testing.T, serve http.HandlerFunc) *bundle {
	t.Helper()
	key, err := signing.GenerateKey(rand.New(rand.NewSource(1)))
	require.NoError(t, err)
	hostKey, err := signing.GenerateKey(rand.New(rand.NewSource(2)))
	require.NoError(t, err)
	b := &bundle{key: key, host: hostKey.Address()}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		who, _, err := httpauth.Verify(r, httpauth.Audience{ChainID: testChain, Host: b.host}, MaxBody, time.Now())
		if err != nil || who != key.Address() {
			w.WriteHeader(http.StatusForbidden)
			_ = json.NewEncoder(w).Encode(ErrorResponse{Error: fmt.Sprintf("not signed for this host: %v", err)})
			return
		}
		serve(w, r)
	}))
	t.Cleanup(srv.Close)
	b.url = srv.URL
	b.client = NewClient(key, testChain, &http.Client{Timeout: 10 * time.Second})
	return b
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Each call goes to its route, signed for the host it names.
func TestClientCallsEachRoute(t *testing.T) {
	t.Parallel()
	var seen []string
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.Method+" "+r.URL.RequestURI())
		switch {
		case r.Method == "POST" && strings.HasSuffix(r.URL.Path, "/diffs"):
			var req DiffRequest
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Diff) == 0 {
				writeJSON(w, http.StatusBadRequest, ErrorResponse{Error: fmt.Sprintf("no diff: %v", err)})
				return
			}
			writeJSON(w, http.StatusOK, DiffResponse{Nonce: 3, Root: "ab", Signatures: [][]byte{}, Mempool: [][]byte{[]byte("tx")}})
		case strings.HasSuffix(r.URL.Path, "/mempool"):
			writeJSON(w, http.StatusOK, MempoolResponse{Txs: [][]byte{[]byte("a"), []byte("b")}})
		case strings.HasSuffix(r.URL.Path, "/gossip"):
			var req GossipRequest
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil || string(req.Tx) != "tx" {
				writeJSON(w, http.StatusBadRequest, ErrorResponse{Error: fmt.Sprintf("not the tx: %v", err)})
				return
			}
			writeJSON(w, http.StatusAccepted, StatusResponse{Status: Pooled})
		case strings.HasSuffix(r.URL.Path, "/diffs"):
			writeJSON(w, http.StatusOK, DiffsResponse{Diffs: []StoredDiff{{Nonce: 4}, {Nonce: 5}}})
		}
	})
	ctx := t.Context()
	body, err := EncodeDiff([]byte{1}, nil)
	require.NoError(t, err)
	resp, err := b.client.PostDiffs(ctx, b.url, b.host, 7, body)
	require.NoError(t, err)
	require.Equal(t, uint64(3), resp.Nonce)
	txs, err := b.client.Mempool(ctx, b.url, b.host, 7)
	require.NoError(t, err)
	require.Len(t, txs, 2)
	require.NoError(t, b.client.Gossip(ctx, b.url, b.host, 7, []byte("tx")))
	diffs, err := b.client.Diffs(ctx, b.url, b.host, 7, 4, 2)
	require.NoError(t, err)
	require.Len(t, diffs, 2)
	require.Equal(t, []string{
		"POST /v1/sessions/7/diffs",
		"GET /v1/sessions/7/mempool",
		"POST /v1/sessions/7/gossip",
		"GET /v1/sessions/7/diffs?from=4&limit=2",
	}, seen)

	// Signed for another host, the same call is refused by this one.
	_, err = b.client.Mempool(ctx, b.url, b.key.Address(), 7)
	var he *Error
	require.ErrorAs(t, err, &he)
	require.Equal(t, Error{URL: b.url, Status: http.StatusForbidden, Message: he.Message}, *he)
	require.Contains(t, he.Message, "not signed for this host")
}

// Self-settlement applies a peer's diffs in order: a page that skips a
// nonce or starts elsewhere is refused, not applied in part.
func TestClientDiffsMustBeConsecutive(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		nonces []uint64
		err    string
	}{
		{"consecutive", []uint64{5, 6, 7}, ""},
		{"none past the end", nil, ""},
		{"a gap", []uint64{5, 7}, "diff 7 where 6 belongs"},
		{"starts late", []uint64{6, 7}, "diff 6 where 5 belongs"},
		{"out of order", []uint64{5, 4}, "diff 4 where 6 belongs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(w http.ResponseWriter, r *http.Request) {
				out := DiffsResponse{Diffs: []StoredDiff{}}
				for _, n := range tc.nonces {
					out.Diffs = append(out.Diffs, StoredDiff{Nonce: n, Data: []byte{byte(n)}})
				}
				writeJSON(w, http.StatusOK, out)
			})
			got, err := b.client.Diffs(t.Context(), b.url, b.host, 7, 5, 10)
			if tc.err == "" {
				require.NoError(t, err)
				require.Len(t, got, len(tc.nonces))
				return
			}
			var he *Error
			require.ErrorAs(t, err, &he)
			require.Equal(t, http.StatusBadGateway, he.Status)
			require.Contains(t, he.Message, tc.err)
		})
	}
}

// Signatures come back decoded; one that does not decode is left out
// rather than costing the caller the others.
func TestClientSignatures(t *testing.T) {
	t.Parallel()
	signer, err := signing.GenerateKey(rand.New(rand.NewSource(3)))
	require.NoError(t, err)
	ss, err := session.SignState(signer, testChain, 7, 9, make([]byte, 32), 2)
	require.NoError(t, err)
	good, err := ss.Marshal()
	require.NoError(t, err)
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.RequestURI() != "/v1/sessions/7/signatures?nonce=9" {
			writeJSON(w, http.StatusNotFound, ErrorResponse{Error: r.URL.RequestURI()})
			return
		}
		writeJSON(w, http.StatusOK, SignaturesResponse{Signatures: [][]byte{{0xff, 0xff}, good}})
	})
	got, err := b.client.Signatures(t.Context(), b.url, b.host, 7, 9)
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, uint32(2), got[0].Slot)
	require.Equal(t, uint64(9), got[0].Nonce)
}

func TestErrorClasses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err                                error
		unreachable, initializing, storage bool
	}{
		{&Error{Status: 0}, true, false, false},
		{&Error{Status: http.StatusServiceUnavailable, Message: Initializing}, true, true, false},
		{&Error{Status: http.StatusServiceUnavailable, Message: Initializing + ": chain unreachable"}, true, true, false},
		{&Error{Status: http.StatusServiceUnavailable, Message: "storage unavailable: postgres down"}, true, false, true},
		{fmt.Errorf("catching up: %w", &Error{Status: http.StatusInternalServerError}), true, false, false},
		{&Error{Status: http.StatusConflict}, false, false, false},
		{errors.New("the app went away"), false, false, false},
	} {
		require.Equal(t, tc.unreachable, IsUnreachable(tc.err), "%v", tc.err)
		require.Equal(t, tc.initializing, IsInitializing(tc.err), "%v", tc.err)
		require.Equal(t, tc.storage, IsStorageFailing(tc.err), "%v", tc.err)
	}
	require.Equal(t, "host http://h unreachable: refused", (&Error{URL: "http://h", Message: "refused"}).Error())
	require.Equal(t, "host http://h answered 409: fork", (&Error{URL: "http://h", Status: 409, Message: "fork"}).Error())
}

// A host's refusal comes back with its sentence; a body that is not an
// ErrorResponse comes back as it was.
func TestClientRefusal(t *testing.T) {
	t.Parallel()
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/mempool") {
			writeJSON(w, http.StatusServiceUnavailable, ErrorResponse{Error: Initializing})
			return
		}
		http.Error(w, "bad gateway upstream", http.StatusBadGateway)
	})
	_, err := b.client.Mempool(t.Context(), b.url, b.host, 7)
	require.True(t, IsInitializing(err))
	require.Equal(t, &Error{URL: b.url, Status: 503, Message: Initializing}, err)
	err = b.client.Gossip(t.Context(), b.url, b.host, 7, []byte("tx"))
	require.Equal(t, &Error{URL: b.url, Status: 502, Message: "bad gateway upstream"}, err)
}

// A run is the one-diff bodies joined: the host decodes it as Diffs.
func TestEncodeRun(t *testing.T) {
	t.Parallel()
	reqs := map[uint64]executor.Request{4: {Model: "m", MaxTokens: 3}}
	one, err := EncodeDiff([]byte{1, 2}, reqs)
	require.NoError(t, err)
	two, err := EncodeDiff([]byte{3}, nil)
	require.NoError(t, err)
	var got DiffRequest
	require.NoError(t, json.Unmarshal(EncodeRun([][]byte{one, two}), &got))
	require.Equal(t, DiffRequest{Diffs: []DiffItem{{Diff: []byte{1, 2}, Requests: reqs}, {Diff: []byte{3}}}}, got)
}

func event(v StreamEvent) string {
	raw, _ := json.Marshal(v)
	return "data: " + string(raw) + "\n\n"
}

func TestClientInference(t *testing.T) {
	t.Parallel()
	usage := &executor.Usage{PromptTokens: 2, CompletionTokens: 3}
	for _, tc := range []struct {
		name, stream string
		status       int // of the *Error; -1: success
		msg          string
	}{
		{"whole", ": hello\n\n" + event(StreamEvent{Text: "a"}) + event(StreamEvent{Text: "b"}) + event(StreamEvent{Done: true, Usage: usage, FinishReason: "stop", Txs: [][]byte{{9}}}), -1, ""},
		{"the host's error", event(StreamEvent{Text: "a"}) + event(StreamEvent{Error: "model crashed"}), 502, "inference failed: model crashed"},
		{"an error event", event(StreamEvent{Text: "a"}) + "event: error\ndata: {\"error\":\"out of memory\"}\n\n", 502, "inference failed: out of memory"},
		{"done without usage", event(StreamEvent{Done: true}), 502, "stream ended without usage"},
		{"undecodable", "data: {\n\n", 502, "undecodable stream event"},
		{"cut off", event(StreamEvent{Text: "a"}), 0, "stream ended before it was done"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(w http.ResponseWriter, r *http.Request) {
				var req InferenceRequest
				if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Nonce != 5 {
					writeJSON(w, http.StatusBadRequest, ErrorResponse{Error: fmt.Sprintf("not inference 5: %v", err)})
					return
				}
				w.Header().Set("Content-Type", "text/event-stream")
				_, _ = io.WriteString(w, tc.stream)
			})
			var text strings.Builder
			res, err := b.client.Inference(t.Context(), b.url, b.host, 7, 5, executor.Request{Model: "m", MaxTokens: 3}, time.Minute, func(s string) error {
				text.WriteString(s)
				return nil
			})
			if tc.status < 0 {
				require.NoError(t, err)
				require.Equal(t, "ab", text.String())
				require.Equal(t, &InferenceResult{Usage: *usage, FinishReason: "stop", Txs: [][]byte{{9}}}, res)
				return
			}
			var he *Error
			require.ErrorAs(t, err, &he)
			require.Equal(t, tc.status, he.Status)
			require.Contains(t, he.Message, tc.msg)
		})
	}
}

// A stream that goes quiet is cut after the stall, as an unreachable host.
func TestClientInferenceStall(t *testing.T) {
	t.Parallel()
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, event(StreamEvent{Text: "a"}))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	_, err := b.client.Inference(t.Context(), b.url, b.host, 7, 5, executor.Request{}, 200*time.Millisecond, func(string) error { return nil })
	require.True(t, IsUnreachable(err), "%v", err)
}

// Every host answer the client reads is bounded; a longer one is refused
// with a sentence saying so, not read into memory.
//
// Checked with the old reads (an unbounded JSON decoder, a 4 MiB stream
// line): the oversized mempool answer was read whole and no error came.
func TestAttackOversizedHostAnswerIsRefused(t *testing.T) {
	t.Parallel()
	huge := strings.Repeat("A", maxAnswer)
	line := strings.Repeat("x", maxStreamEvent+1)
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/mempool"):
			_, _ = w.Write([]byte(`{"txs":["` + huge + `"]}`))
		case strings.HasSuffix(r.URL.Path, "/inference"):
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = w.Write([]byte("data: {\"text\":\"hi\"}\n\ndata: " + line + "\n\n"))
		}
	})

	_, err := b.client.Mempool(t.Context(), b.url, b.host, 7)
	var he *Error
	require.ErrorAs(t, err, &he)
	require.Equal(t, http.StatusBadGateway, he.Status)
	require.Contains(t, he.Message, fmt.Sprintf("longer than the %d bytes a client reads", maxAnswer))

	_, err = b.client.Inference(t.Context(), b.url, b.host, 7, 1, executor.Request{}, time.Minute, func(string) error { return nil })
	require.ErrorAs(t, err, &he)
	require.Equal(t, http.StatusBadGateway, he.Status)
	require.Contains(t, he.Message, fmt.Sprintf("an event is longer than the %d bytes", maxStreamEvent))

	// An answer of exactly the limit is whole.
	all, err := io.ReadAll(bounded(strings.NewReader("abc"), 3))
	require.NoError(t, err)
	require.Equal(t, "abc", string(all))
	_, err = io.ReadAll(bounded(strings.NewReader("abcd"), 3))
	var tl *tooLargeError
	require.ErrorAs(t, err, &tl)
}

func TestRuntimeURL(t *testing.T) {
	t.Parallel()
	require.Equal(t, "http://h:8090", RuntimeURL("http://h:8090", ""), "an escrow without a version goes to the host itself")
	require.Equal(t, "http://h:8090/devshard/v2", RuntimeURL("http://h:8090", "v2"))
	require.Equal(t, "https://h.example/devshard/v2.1-rc_3", RuntimeURL("https://h.example/", "v2.1-rc_3"))
}

// versiond strips /devshard/<version> before the host sees a request, so
// the signature must cover the route the host serves: a call through a
// stripping router verifies, for every route and for a stream.
func TestClientSignsTheRouteBehindARuntimePrefix(t *testing.T) {
	t.Parallel()
	var seen []string
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.Method+" "+r.URL.RequestURI())
		switch {
		case strings.HasSuffix(r.URL.Path, "/mempool"):
			writeJSON(w, http.StatusOK, MempoolResponse{Txs: [][]byte{[]byte("a")}})
		case strings.HasSuffix(r.URL.Path, "/diffs"):
			writeJSON(w, http.StatusOK, DiffsResponse{Diffs: []StoredDiff{{Nonce: 4}}})
		case strings.HasSuffix(r.URL.Path, "/inference"):
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, event(StreamEvent{Done: true, Usage: &executor.Usage{PromptTokens: 1, CompletionTokens: 1}}))
		}
	})
	host := b.url
	router := httptest.NewServer(http.StripPrefix("/devshard/v2", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.URL.Scheme, r.URL.Host, r.RequestURI = "http", strings.TrimPrefix(host, "http://"), ""
		resp, err := http.DefaultTransport.RoundTrip(r)
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	})))
	t.Cleanup(router.Close)
	base := RuntimeURL(router.URL, "v2")

	ctx := t.Context()
	txs, err := b.client.Mempool(ctx, base, b.host, 7)
	require.NoError(t, err)
	require.Len(t, txs, 1)
	_, err = b.client.Diffs(ctx, base, b.host, 7, 4, 1)
	require.NoError(t, err)
	_, err = b.client.Inference(ctx, base, b.host, 7, 1, executor.Request{}, 5*time.Second, func(string) error { return nil })
	require.NoError(t, err)
	require.Equal(t, []string{
		"GET /v1/sessions/7/mempool",
		"GET /v1/sessions/7/diffs?from=4&limit=1",
		"POST /v1/sessions/7/inference",
	}, seen)
}
