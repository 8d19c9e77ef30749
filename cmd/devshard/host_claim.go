package main

import (
	"context"
	"log/slog"
	"sync/atomic"

	"github.com/cosmos/cosmos-sdk/crypto/keys/secp256k1"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/chain/txclient"
	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/signing"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// claimer sends MsgClaimRewards for every claimable epoch summary of the
// host's account. It needs the account's own key: a warm key cannot claim
// (the operator claims with the cold key, `devshard chain tx devshard
// claim-rewards`).
type claimer struct {
	c       *chainclient.Client
	tx      *txclient.Client
	key     *secp256k1.PrivKey
	account signing.Address
	log     *slog.Logger
	busy    atomic.Bool // one claim round at a time
}

// newClaimer returns nil when the signer cannot claim for the account.
func newClaimer(ctx context.Context, c *chainclient.Client, signer signing.Signer, account signing.Address, log *slog.Logger) *claimer {
	k, ok := signer.(*signing.PrivKey)
	if !ok || k.Address() != account {
		log.Info("rewards are not claimed automatically: the host signs with a warm or keyring key; claim with the account's key")
		return nil
	}
	chainID, err := c.ChainID(ctx)
	if err != nil {
		log.Warn("rewards are not claimed automatically", "err", err)
		return nil
	}
	return &claimer{c: c, tx: txclient.New(c.Conn(), chainID, chain.MakeEncoding().TxConfig),
		key: &secp256k1.PrivKey{Key: k.Bytes()}, account: account, log: log}
}

// claim claims what can be claimed now. Errors are logged; the next epoch
// change tries again.
func (cl *claimer) claim(ctx context.Context) {
	if cl == nil || !cl.busy.CompareAndSwap(false, true) {
		return
	}
	defer cl.busy.Store(false)
	sums, err := cl.c.Unclaimed(ctx, cl.account)
	if err != nil {
		cl.log.Warn("rewards", "err", err)
		return
	}
	for _, s := range sums {
		msg := &devshardtypes.MsgClaimRewards{Participant: cl.c.Address(cl.account), EpochId: s.EpochId}
		if _, err := cl.tx.Send(ctx, cl.key, msg); err != nil {
			cl.log.Warn("claim rewards", "epoch", s.EpochId, "err", err)
			continue
		}
		cl.log.Info("claimed rewards", "epoch", s.EpochId, "amount", s.Rewarded)
	}
}
