package host

import (
	"context"
	"log/slog"
	"sync/atomic"

	"github.com/devshard/devshard/signing"
)

// claimer claims the rewards of every claimable epoch summary of the
// host's account, through a sender holding the account's own key
// (AccountKey): a warm key cannot claim, and its operator claims with the
// cold key (`devshard chain tx devshard claim-rewards`).
type claimer struct {
	chain   Chain
	send    ChainSender
	account signing.Address
	log     *slog.Logger
	busy    atomic.Bool // one claim round at a time
}

// newClaimer returns nil, which claims nothing, without a sender.
func newClaimer(c Chain, send ChainSender, account signing.Address, log *slog.Logger) *claimer {
	if send == nil {
		return nil
	}
	return &claimer{chain: c, send: send, account: account, log: log}
}

// claim claims what can be claimed now. Errors are logged; the next epoch
// change tries again.
func (cl *claimer) claim(ctx context.Context) {
	if cl == nil || !cl.busy.CompareAndSwap(false, true) {
		return
	}
	defer cl.busy.Store(false)
	sums, err := cl.chain.Unclaimed(ctx, cl.account)
	if err != nil {
		cl.log.Warn("rewards", "err", err)
		return
	}
	for _, s := range sums {
		if _, err := cl.send.ClaimRewards(ctx, s.EpochId); err != nil {
			cl.log.Warn("claim rewards", "epoch", s.EpochId, "err", err)
			continue
		}
		cl.log.Info("claimed rewards", "epoch", s.EpochId, "amount", s.Rewarded)
	}
}
