package devnet

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"
)

// The demo client reads a gateway's chat stream the way an app's SDK
// does: chunks to [DONE], and a failure, whichever way it is sent, as an
// *APIError carrying the gateway's message.
func TestClientReadsChatStream(t *testing.T) {
	t.Parallel()
	const chunks = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n" +
		": keep-alive\n\n" +
		"data: {\"choices\":[{\"delta\":{\"content\":\"hel\"}}]}\n\n" +
		"data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n"
	for _, tc := range []struct {
		name, stream string
		want         *ChatResult
		err          string
	}{
		{"whole", chunks + "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n" +
			"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
			&ChatResult{Text: "hello", PromptTokens: 3, CompletionTokens: 2, FinishReason: "stop"}, ""},
		{"error chunk", chunks + "data: {\"error\":{\"message\":\"no host answered\",\"type\":\"server_error\"}}\n\ndata: [DONE]\n\n", nil, "no host answered"},
		{"error event", chunks + "event: error\ndata: {\"message\":\"no host answered\"}\n\n", nil, "no host answered"},
		{"cut off", chunks, nil, "stream ended without [DONE]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				_, _ = io.WriteString(w, tc.stream)
			}))
			t.Cleanup(srv.Close)
			var pieces string
			c := NewClient(srv.URL, "k")
			c.OnText = func(s string) { pieces += s }
			got, err := c.Chat(t.Context(), ChatRequest{Model: "m"}, true)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				if tc.name != "cut off" {
					var ae *APIError
					require.ErrorAs(t, err, &ae)
				}
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
			require.Equal(t, "hello", pieces)
		})
	}
}
