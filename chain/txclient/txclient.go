// Package txclient is the old name of chainclient's Sender, kept only for
// callers not yet moved to chainclient.
//
// Deprecated: use chainclient.Client (the account's sends) or
// chainclient.Sender.
package txclient

import (
	"github.com/cosmos/cosmos-sdk/client"
	"google.golang.org/grpc"

	"github.com/devshard/devshard/chainclient"
)

// Client is chainclient.Sender.
type Client = chainclient.Sender

// New is chainclient.NewSender.
func New(conn grpc.ClientConnInterface, chainID string, txConfig client.TxConfig) *Client {
	return chainclient.NewSender(conn, chainID, txConfig)
}
