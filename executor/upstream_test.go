package executor

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// An upstream that fails after it began streaming says so in an "error"
// event, or in an error chunk; the run fails with the server's message.
// Skipping it, as the reader once did, took the text so far for the
// answer's start and waited for a [DONE] that a failed server never sends,
// or one sent anyway ended a cut answer as whole.
func TestUpstreamErrorMidStreamFailsTheRun(t *testing.T) {
	t.Parallel()
	for name, failure := range map[string]string{
		"error event": "event: error\ndata: {\"error\":{\"message\":\"CUDA out of memory\"}}\n\n",
		"error chunk": "data: {\"error\":{\"message\":\"CUDA out of memory\",\"type\":\"server_error\"}}\n\n",
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := fakeUpstream(t, func(_ http.ResponseWriter, chunk string) string {
				if strings.Contains(chunk, "finish_reason\":\"") {
					return failure
				}
				return chunk
			})
			defer srv.Close()
			var emitted []string
			_, err := (&Upstream{BaseURL: srv.URL, APIKey: "k"}).Execute(context.Background(), request("hello there", 20), func(s string) error {
				emitted = append(emitted, s)
				return nil
			})
			require.ErrorIs(t, err, ErrUpstream)
			require.ErrorContains(t, err, "the server failed mid-stream: CUDA out of memory")
			require.NotEmpty(t, emitted, "the failure came after text")
		})
	}
}
