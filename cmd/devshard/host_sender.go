package main

import (
	"context"
	"sync"

	"github.com/cosmos/cosmos-sdk/crypto/keys/secp256k1"
	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/chain/txclient"
	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/host"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// txSender sends the host account's txs with the account's own key over
// the chain client's connection. It stands in until the chain client
// sends them itself (a sending key in chainclient.Config); then this file
// goes, and the chain client is the daemon's sender.
type txSender struct {
	c       *chainclient.Client
	key     *secp256k1.PrivKey
	account signing.Address

	mu sync.Mutex
	tx *txclient.Client // made at the first send: txs name the chain, asked of the node then
}

var _ host.ChainSender = (*txSender)(nil)

func newTxSender(c *chainclient.Client, key *signing.PrivKey) *txSender {
	return &txSender{c: c, key: &secp256k1.PrivKey{Key: key.Bytes()}, account: key.Address()}
}

// SettleEscrow implements host.ChainSender.
func (s *txSender) SettleEscrow(ctx context.Context, m *sessionpb.Settlement) (string, error) {
	return s.send(ctx, &devshardtypes.MsgSettleEscrow{Sender: s.c.Address(s.account), Settlement: m})
}

// ClaimRewards implements host.ChainSender.
func (s *txSender) ClaimRewards(ctx context.Context, epoch uint64) (string, error) {
	return s.send(ctx, &devshardtypes.MsgClaimRewards{Participant: s.c.Address(s.account), EpochId: epoch})
}

func (s *txSender) send(ctx context.Context, msg sdk.Msg) (string, error) {
	s.mu.Lock()
	if s.tx == nil {
		chainID, err := s.c.ChainID(ctx)
		if err != nil {
			s.mu.Unlock()
			return "", err
		}
		s.tx = txclient.New(s.c.Conn(), chainID, chain.MakeEncoding().TxConfig)
	}
	tx := s.tx
	s.mu.Unlock()
	res, err := tx.Send(ctx, s.key, msg)
	if err != nil {
		return "", err
	}
	return res.TxHash, nil
}
