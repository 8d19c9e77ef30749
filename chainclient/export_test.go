package chainclient

import (
	"context"
	"sync/atomic"

	"github.com/devshard/devshard/session/sessionpb"
)

// EpochQueries counts the CurrentEpoch queries c sent.
func EpochQueries(c *Client) *atomic.Int64 { return &c.epochQueries }

// SettleTogether sends ms as one batch of c's settle queue, as if all were
// asked for while another tx waited, and returns each one's hash and error.
func SettleTogether(ctx context.Context, c *Client, ms []*sessionpb.Settlement) ([]string, []error) {
	batch := make([]*settleCall, len(ms))
	for i, m := range ms {
		batch[i] = &settleCall{ctx: ctx, m: m, done: make(chan struct{})}
	}
	c.sendSettlements(batch)
	hashes, errs := make([]string, len(ms)), make([]error, len(ms))
	for i, call := range batch {
		<-call.done
		hashes[i], errs[i] = call.hash, call.err
	}
	return hashes, errs
}
