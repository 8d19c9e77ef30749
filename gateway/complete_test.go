package gateway

import (
	"errors"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessiontest"
)

// emitted is an answer whose emitted pieces are recorded in got.
func emitted(got *[]string) *answer {
	return &answer{emit: func(s string) error { *got = append(*got, s); return nil }}
}

// storedWith is a start's write that already reported err.
func storedWith(err error) <-chan error {
	c := make(chan error, 1)
	c <- err
	return c
}

// The app sees nothing of an attempt's answer before the diff that started
// it is stored; what came meanwhile follows, in order.
func TestAnswerHoldsTextUntilTheStartIsStored(t *testing.T) {
	t.Parallel()
	var got []string
	a := emitted(&got)
	stored := make(chan error, 1)
	a.begin(stored)
	require.NoError(t, a.forward("Hel"))
	require.NoError(t, a.forward("lo"))
	require.Empty(t, got, "the start is not stored yet")
	stored <- nil
	require.NoError(t, a.forward(" world"))
	require.Equal(t, []string{"Hel", "lo", " world"}, got)
	require.Equal(t, "Hello world", string(a.text))
}

// A failed write of the start ends the attempt with the app having seen
// nothing of it.
func TestAnswerOfAnUnstoredStartIsNotEmitted(t *testing.T) {
	t.Parallel()
	var got []string
	a := emitted(&got)
	a.begin(storedWith(errors.New("disk full")))
	require.ErrorContains(t, a.forward("Hel"), "disk full")
	_, err := a.written(true)
	require.ErrorContains(t, err, "disk full")
	require.Empty(t, got)
}

// A retry must repeat what the app already has: the repeated text is
// checked, not emitted again, and only what is new goes on. A retry that
// says something else is refused.
func TestAnswerRetryEmitsOnlyWhatIsNew(t *testing.T) {
	t.Parallel()
	var got []string
	a := emitted(&got)
	a.begin(storedWith(nil))
	require.NoError(t, a.forward("Hello"))

	a.begin(storedWith(nil)) // the executor died; another one retries
	require.NoError(t, a.forward("Hel"))
	require.NoError(t, a.forward("lo wor"))
	require.NoError(t, a.forward("ld"))
	require.Equal(t, []string{"Hello", " wor", "ld"}, got)

	a.begin(storedWith(nil))
	require.ErrorIs(t, a.forward("Help"), errDiverged)
	require.Equal(t, []string{"Hello", " wor", "ld"}, got, "nothing of a diverging retry is emitted")
}

// A request whose reservation does not fit in a uint64 is the app's
// mistake, answered 400 with the reason, and nothing is sequenced for it.
// Priced by multiplying without a check, (prompt + max_tokens) × 2^62
// wraps to 0 for a multiple of 4 tokens and the request was taken.
func TestReservationOverflowIsARequestError(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOptions) {
		o.session = func(so *sessiontest.Options) { so.TokenPrice = 1 << 62 }
	})
	req := ask(0)
	in := executor.PromptTokens(req.Messages)
	req.MaxTokens = 8 - in%4 // prompt + max_tokens: a multiple of 4
	_, err := b.gw.Complete(t.Context(), normalized(t, b.gw, req), func(string) error { return nil })
	require.ErrorIs(t, err, ErrRequest)
	require.ErrorIs(t, err, session.ReasonOverflow)
	require.Contains(t, err.Error(), "overflows")
	status, _, _ := classify(err)
	require.Equal(t, http.StatusBadRequest, status)
	for _, v := range b.gw.Escrows() {
		require.Zero(t, v.Nonce, "no diff was sequenced for the request")
	}
}
