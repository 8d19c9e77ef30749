package gateway

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/cosmos/cosmos-sdk/crypto/keys/secp256k1"
	sdk "github.com/cosmos/cosmos-sdk/types"
	txtypes "github.com/cosmos/cosmos-sdk/types/tx"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/chain/txclient"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// Chain is what the gateway needs of the chain. The production one speaks
// gRPC to a node; tests may use it against an in-process node.
type Chain interface {
	// CurrentEpoch is the chain's current epoch and its state.
	CurrentEpoch(ctx context.Context) (id uint64, state devshardtypes.EpochState, err error)
	// CreateEscrow locks amount from the gateway's account and returns the
	// new escrow's snapshot.
	CreateEscrow(ctx context.Context, amount uint64) (*sessionpb.EscrowSnapshot, error)
	// Settle sends MsgSettleEscrow and returns its tx hash. An escrow the
	// chain already shows as settled is success, with the hash of the tx
	// that settled it when the node can find it; one that expired is an
	// error wrapping ErrExpired.
	Settle(ctx context.Context, m *sessionpb.Settlement) (string, error)
	// Closed reports whether escrow id is no longer open on chain: true
	// once it is settled, with the hash of the tx that settled it ("" if
	// the node cannot say); an error wrapping ErrExpired once it expired.
	// The gateway asks before and while it settles, because the hosts
	// settle an escrow themselves once its deadline has passed.
	Closed(ctx context.Context, id uint64) (bool, string, error)
	// HostURL is the API address a participant registered.
	HostURL(ctx context.Context, addr signing.Address) (string, error)
	// Balance is the gateway account's spendable balance.
	Balance(ctx context.Context) (uint64, error)
}

// ErrFunds means the gateway's account cannot lock another escrow.
var ErrFunds = errors.New("insufficient funds")

// ErrExpired means the escrow expired on chain before it was settled.
var ErrExpired = errors.New("escrow expired")

// ErrNoEpoch means no epoch is ACTIVE, so no escrow can be created.
var ErrNoEpoch = errors.New("no active epoch")

// GRPCChain is Chain over a node's gRPC, signing with the gateway's key.
type GRPCChain struct {
	q       devshardtypes.QueryClient
	bank    banktypes.QueryClient
	tx      *txclient.Client
	txs     txtypes.ServiceClient
	key     *secp256k1.PrivKey
	address sdk.AccAddress
}

// NewGRPCChain returns a Chain that queries and sends over conn.
func NewGRPCChain(conn grpc.ClientConnInterface, chainID string, key *signing.PrivKey) *GRPCChain {
	chain.SetAddressPrefixes()
	ck := &secp256k1.PrivKey{Key: key.Bytes()}
	return &GRPCChain{
		q:       devshardtypes.NewQueryClient(conn),
		bank:    banktypes.NewQueryClient(conn),
		tx:      txclient.New(conn, chainID, chain.MakeEncoding().TxConfig),
		txs:     txtypes.NewServiceClient(conn),
		key:     ck,
		address: sdk.AccAddress(ck.PubKey().Address()),
	}
}

// CurrentEpoch implements Chain.
func (c *GRPCChain) CurrentEpoch(ctx context.Context) (uint64, devshardtypes.EpochState, error) {
	res, err := c.q.CurrentEpoch(ctx, &devshardtypes.QueryCurrentEpochRequest{})
	if err != nil {
		return 0, 0, fmt.Errorf("query current epoch: %w", err)
	}
	return res.Epoch.Id, res.Epoch.State, nil
}

// CreateEscrow implements Chain.
func (c *GRPCChain) CreateEscrow(ctx context.Context, amount uint64) (*sessionpb.EscrowSnapshot, error) {
	res, err := c.tx.Send(ctx, c.key, &devshardtypes.MsgCreateEscrow{Creator: c.address.String(), Amount: amount})
	if err != nil {
		if strings.Contains(err.Error(), "insufficient funds") {
			return nil, fmt.Errorf("%w: the gateway account %s cannot lock %d: %v", ErrFunds, c.address, amount, err)
		}
		return nil, fmt.Errorf("create escrow of %d: %w", amount, err)
	}
	id, err := eventUint(res, "devshard.devshard.v1.EventEscrowCreated", "escrow_id")
	if err != nil {
		return nil, err
	}
	q, err := c.q.Escrow(ctx, &devshardtypes.QueryEscrowRequest{Id: id})
	if err != nil {
		return nil, fmt.Errorf("query escrow %d: %w", id, err)
	}
	snap := q.Escrow.Snapshot
	return &snap, nil
}

// eventUint reads a numeric attribute of a typed event in a tx result.
func eventUint(res *sdk.TxResponse, typ, key string) (uint64, error) {
	for _, ev := range res.Events {
		if ev.Type != typ {
			continue
		}
		for _, a := range ev.Attributes {
			if a.Key == key {
				return strconv.ParseUint(strings.Trim(a.Value, `"`), 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("tx %s has no %s.%s", res.TxHash, typ, key)
}

// Settle implements Chain.
func (c *GRPCChain) Settle(ctx context.Context, m *sessionpb.Settlement) (string, error) {
	res, err := c.tx.Send(ctx, c.key, &devshardtypes.MsgSettleEscrow{Sender: c.address.String(), Settlement: m})
	if err == nil {
		return res.TxHash, nil
	}
	// A settlement that landed before a restart is not an error now; an
	// escrow that expired meanwhile can never be settled.
	if closed, hash, cerr := c.Closed(ctx, m.EscrowId); closed || errors.Is(cerr, ErrExpired) {
		return hash, cerr
	}
	return "", fmt.Errorf("settle escrow %d: %w", m.EscrowId, err)
}

// Closed implements Chain.
func (c *GRPCChain) Closed(ctx context.Context, id uint64) (bool, string, error) {
	q, err := c.q.Escrow(ctx, &devshardtypes.QueryEscrowRequest{Id: id})
	if err != nil {
		return false, "", fmt.Errorf("query escrow %d: %w", id, err)
	}
	switch q.Escrow.Status {
	case devshardtypes.EscrowSettled:
		return true, c.settledBy(ctx, id), nil
	case devshardtypes.EscrowExpired:
		return false, "", fmt.Errorf("%w: escrow %d expired on chain before it was settled; its whole amount went back to the creator", ErrExpired, id)
	}
	return false, "", nil
}

// settledBy finds the tx that settled escrow id (this gateway's, before a
// restart, or a host's after the deadline); "" if the node cannot say.
func (c *GRPCChain) settledBy(ctx context.Context, id uint64) string {
	// Typed events carry their values as JSON, where a uint64 is a quoted
	// string; the bare form is tried too.
	for _, v := range []string{fmt.Sprintf(`"%d"`, id), fmt.Sprint(id)} {
		query := fmt.Sprintf("devshard.devshard.v1.EventEscrowSettled.escrow_id='%s'", v)
		res, err := c.txs.GetTxsEvent(ctx, &txtypes.GetTxsEventRequest{Query: query, Limit: 1})
		if err == nil && len(res.TxResponses) > 0 {
			return res.TxResponses[0].TxHash
		}
	}
	return ""
}

// HostURL implements Chain.
func (c *GRPCChain) HostURL(ctx context.Context, addr signing.Address) (string, error) {
	res, err := c.q.Participant(ctx, &devshardtypes.QueryParticipantRequest{Address: sdk.AccAddress(addr[:]).String()})
	if status.Code(err) == codes.NotFound {
		return "", fmt.Errorf("group member %s is not a registered participant", sdk.AccAddress(addr[:]))
	}
	if err != nil {
		return "", fmt.Errorf("query participant %s: %w", sdk.AccAddress(addr[:]), err)
	}
	return strings.TrimRight(res.Participant.Url, "/"), nil
}

// Balance implements Chain.
func (c *GRPCChain) Balance(ctx context.Context) (uint64, error) {
	res, err := c.bank.Balance(ctx, &banktypes.QueryBalanceRequest{Address: c.address.String(), Denom: chain.Denom})
	if err != nil {
		return 0, fmt.Errorf("query balance of %s: %w", c.address, err)
	}
	if !res.Balance.Amount.IsUint64() {
		return 0, fmt.Errorf("balance of %s does not fit 64 bits", c.address)
	}
	return res.Balance.Amount.Uint64(), nil
}

// Address is the gateway's account.
func (c *GRPCChain) Address() sdk.AccAddress { return c.address }
