package chainclient

import (
	"context"
	"errors"
	"regexp"
	"strconv"
	"sync"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/session/sessionpb"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// MaxSettlementsPerTx is the most settlements one tx carries. A tx's
// messages land together or not at all, so a larger tx loses more work to
// one settlement that fails in its block; 32 of the largest groups (64
// slots, about 0.9M gas each) stay far within a block's gas.
const MaxSettlementsPerTx = 32

// settleQueue sends a client's settlements, several to a tx: a settlement
// asked for while the client's previous settlement tx waits for its block
// goes in the next tx, with every other settlement asked for meanwhile.
// One account's txs land one after another (each waits for its block, so
// its sequence number is right), so without it a gateway settled one
// escrow per block however many were due; with it, up to
// MaxSettlementsPerTx per block, each paying the SDK's cost of a tx (its
// decoding, fee, signature and sequence checks) once per tx, not once per
// settlement. A lone settlement goes at once, as before.
type settleQueue struct {
	mu      sync.Mutex
	pending []*settleCall
	sending bool // a goroutine is sending what is pending
}

// settleCall is one settlement asked for, and how it ended.
type settleCall struct {
	ctx  context.Context // the caller's: a call whose caller left is not sent
	m    *sessionpb.Settlement
	done chan struct{}
	hash string
	err  error
}

func (call *settleCall) finish(hash string, err error) {
	call.hash, call.err = hash, err
	close(call.done)
}

// add queues m, and starts sending when nothing is being sent.
func (q *settleQueue) add(ctx context.Context, m *sessionpb.Settlement, send func([]*settleCall)) *settleCall {
	call := &settleCall{ctx: ctx, m: m, done: make(chan struct{})}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.pending = append(q.pending, call)
	if !q.sending {
		q.sending = true
		go q.drain(send)
	}
	return call
}

// drain sends what is pending, a tx at a time, until nothing is.
func (q *settleQueue) drain(send func([]*settleCall)) {
	for {
		batch := q.take()
		if batch == nil {
			return
		}
		send(batch)
	}
}

// take removes the next tx's settlements from the queue: up to
// MaxSettlementsPerTx, in the order they were asked for, at most one per
// escrow (two settlements of one escrow in a tx would fail it whole: the
// second finds the escrow settled). A call whose caller left is finished
// with its caller's error and not sent. With nothing left it returns nil
// and marks the queue idle, under the same lock add takes, so a call is
// never left unsent.
func (q *settleQueue) take() []*settleCall {
	q.mu.Lock()
	defer q.mu.Unlock()
	var batch, rest []*settleCall
	escrows := map[uint64]bool{}
	for _, call := range q.pending {
		switch {
		case call.ctx.Err() != nil:
			call.finish("", context.Cause(call.ctx))
		case len(batch) == MaxSettlementsPerTx || escrows[call.m.EscrowId]:
			rest = append(rest, call)
		default:
			escrows[call.m.EscrowId] = true
			batch = append(batch, call)
		}
	}
	q.pending = rest
	if len(batch) == 0 {
		q.sending = false
		return nil
	}
	return batch
}

// sendSettlements sends batch in one tx and finishes each call. A
// settlement the chain refuses by its message index (in simulation, in
// CheckTx or in its block) is finished with that refusal, and the others
// go again in a new tx; a refusal that names no message sends each alone,
// so one bad settlement never fails the others.
func (c *Client) sendSettlements(batch []*settleCall) {
	ctx, cancel := callersContext(batch)
	defer cancel()
	for len(batch) > 0 {
		msgs := make([]sdk.Msg, len(batch))
		for i, call := range batch {
			msgs[i] = &devshardtypes.MsgSettleEscrow{Sender: c.account.String(), Settlement: call.m}
		}
		res, err := c.send(ctx, msgs...)
		if err == nil {
			for _, call := range batch {
				call.finish(res.TxHash, nil)
			}
			return
		}
		i, named := failedMessage(err)
		switch {
		case len(batch) == 1:
			batch[0].finish("", err)
			return
		case named && i < len(batch):
			batch[i].finish("", err)
			batch = append(batch[:i:i], batch[i+1:]...)
		default:
			for _, call := range batch {
				c.sendSettlements([]*settleCall{call})
			}
			return
		}
	}
}

// messageIndex is how the chain names the message that failed a tx of
// several: the SDK's "failed to execute message; message index: N", which
// the settlement check of the mempool also uses.
var messageIndex = regexp.MustCompile(`message index: (\d+)`)

// failedMessage is the index of the message a refused tx names as the one
// that failed it.
func failedMessage(err error) (int, bool) {
	var refused *TxError
	if !errors.As(err, &refused) {
		return 0, false
	}
	m := messageIndex.FindStringSubmatch(refused.Log)
	if m == nil {
		return 0, false
	}
	i, err := strconv.Atoi(m[1])
	return i, err == nil
}

// callersContext is a context that ends once every call's caller has left:
// a tx is worth waiting for while anyone waits for it.
func callersContext(batch []*settleCall) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	left := len(batch)
	stops := make([]func() bool, len(batch))
	for i, call := range batch {
		stops[i] = context.AfterFunc(call.ctx, func() {
			mu.Lock()
			defer mu.Unlock()
			if left--; left == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}
