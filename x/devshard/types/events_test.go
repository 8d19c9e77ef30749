package types_test

import (
	"testing"

	abci "github.com/cometbft/cometbft/abci/types"
	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/x/devshard/types"
)

// AsEvent builds exactly the event the SDK builds from the typed event by
// reflection, for any field values (strings that need escaping, control
// characters, non-ASCII, the largest integers), and the SDK parses it back
// to the same typed event.
func TestEventsAsTypedEvents(t *testing.T) {
	t.Parallel()
	text := rapid.OneOf(
		rapid.SampledFrom([]string{"", "cosmos1qyqszqgpqyqszqgpqyqszqgpqyqszqgpjnp7du", "host is PUNISHED", `a "quoted" \ <b>&amp;`, "tab\there\nline", "épargne ☃", "\x7f\x00"}),
		rapid.String(),
	)
	num := rapid.OneOf(rapid.Uint64(), rapid.SampledFrom([]uint64{0, 1, 1<<53 + 1, 1<<64 - 1}))
	rapid.Check(t, func(t *rapid.T) {
		for _, ev := range []interface {
			AsEvent() sdk.Event
		}{
			&types.EventEscrowPayout{EscrowId: num.Draw(t, "id"), Address: text.Draw(t, "address"), Amount: num.Draw(t, "amount"),
				Destination: text.Draw(t, "destination"), Reason: text.Draw(t, "reason")},
			&types.EventEscrowSettled{EscrowId: num.Draw(t, "id"), Sender: text.Draw(t, "sender"), Nonce: num.Draw(t, "nonce"),
				Paid: num.Draw(t, "paid"), Refund: num.Draw(t, "refund")},
		} {
			typed := ev.(sdk.Msg)
			want, err := sdk.TypedEventToEvent(typed)
			require.NoError(t, err)
			got := ev.AsEvent()
			require.Equal(t, want, got)
			back, err := sdk.ParseTypedEvent(abci.Event(got))
			require.NoError(t, err)
			require.Equal(t, typed.String(), back.String())
		}
	})
}
