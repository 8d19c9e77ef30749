package chainclient

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session/sessionpb"
)

// A tx takes at most MaxSettlementsPerTx settlements, at most one per
// escrow, in the order they were asked for; a call whose caller left is
// finished with its caller's error and never sent; an empty queue goes
// idle.
func TestSettleQueueTakes(t *testing.T) {
	q := &settleQueue{sending: true}
	call := func(ctx context.Context, id uint64) *settleCall {
		c := &settleCall{ctx: ctx, m: &sessionpb.Settlement{EscrowId: id}, done: make(chan struct{})}
		q.pending = append(q.pending, c)
		return c
	}
	gone, leave := context.WithCancelCause(context.Background())
	leave(errors.New("the gateway stopped"))
	left := call(gone, 1)
	again := call(context.Background(), 2)
	call(context.Background(), 2) // the same escrow, asked for again
	for id := range uint64(MaxSettlementsPerTx + 5) {
		call(context.Background(), 100+id)
	}

	first := q.take()
	require.Len(t, first, MaxSettlementsPerTx)
	require.Same(t, again, first[0], "in the order asked for")
	ids := map[uint64]bool{}
	for _, c := range first {
		require.False(t, ids[c.m.EscrowId], "escrow %d twice in one tx", c.m.EscrowId)
		ids[c.m.EscrowId] = true
	}
	<-left.done
	require.ErrorContains(t, left.err, "the gateway stopped")

	second := q.take()
	require.Equal(t, uint64(2), second[0].m.EscrowId, "the second settlement of escrow 2 goes in the next tx")
	require.Len(t, second, 1+5+1)
	require.Nil(t, q.take())
	require.False(t, q.sending, "an empty queue is idle, so the next add sends")
}

// The message a refused tx names is read from its log, only from a
// refusal by the chain.
func TestFailedMessage(t *testing.T) {
	i, ok := failedMessage(&TxError{Code: 5, Log: "failed to execute message; message index: 12: escrow 3 is closed"})
	require.True(t, ok)
	require.Equal(t, 12, i)
	_, ok = failedMessage(&TxError{Code: 5, Log: "out of gas"})
	require.False(t, ok)
	_, ok = failedMessage(fmt.Errorf("broadcasting: message index: 3"))
	require.False(t, ok, "only the chain's refusal names a message")
}
