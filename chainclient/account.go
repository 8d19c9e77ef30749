package chainclient

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	sdk "github.com/cosmos/cosmos-sdk/types"
	txtypes "github.com/cosmos/cosmos-sdk/types/tx"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/devshard/devshard/chaincfg"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// send signs msgs with the client's key and waits for their block.
func (c *Client) send(ctx context.Context, msgs ...sdk.Msg) (*sdk.TxResponse, error) {
	if c.key == nil {
		return nil, ErrReadOnly
	}
	s, err := c.txSender(ctx)
	if err != nil {
		return nil, err
	}
	return s.Send(ctx, c.key, msgs...)
}

// txSender is the client's Sender, made at the first send: the chain id it
// signs for may have to be asked of the node, which Dial does not contact.
func (c *Client) txSender(ctx context.Context) (*Sender, error) {
	c.senderMu.Lock()
	defer c.senderMu.Unlock()
	if c.sender != nil {
		return c.sender, nil
	}
	if c.chainID == "" {
		id, err := c.ChainID(ctx)
		if err != nil {
			return nil, err
		}
		c.chainID = id
	}
	c.sender = NewSender(c.conn, c.chainID, chaincfg.MakeEncoding().TxConfig)
	return c.sender, nil
}

// Balance is the spendable balance of the client's account.
func (c *Client) Balance(ctx context.Context) (uint64, error) {
	if c.key == nil {
		return 0, fmt.Errorf("balance: %w", ErrReadOnly)
	}
	res, err := c.bank.Balance(ctx, &banktypes.QueryBalanceRequest{Address: c.account.String(), Denom: chaincfg.Denom})
	if err != nil {
		return 0, fmt.Errorf("query balance of %s: %w", c.account, err)
	}
	if !res.Balance.Amount.IsUint64() {
		return 0, fmt.Errorf("balance of %s does not fit 64 bits", c.account)
	}
	return res.Balance.Amount.Uint64(), nil
}

// CreateEscrow locks amount from the client's account under the chain's
// newest approved runtime version (none while the chain approves none), as
// CreateEscrowUnder does. It suits a tool that does not pick among the
// versions its hosts serve; the gateway picks (gateway.runtimes).
func (c *Client) CreateEscrow(ctx context.Context, amount uint64) (*sessionpb.EscrowSnapshot, error) {
	approved, err := c.ApprovedVersions(ctx)
	if err != nil {
		return nil, err
	}
	newest := ""
	if len(approved) > 0 {
		newest = approved[len(approved)-1].Name
	}
	return c.CreateEscrowUnder(ctx, amount, newest)
}

// CreateEscrowUnder locks amount from the client's account for a session
// served by runtime version runtimeVersion, and returns the new escrow's
// snapshot. An account that cannot lock amount is an error wrapping
// ErrInsufficientFunds; an epoch that is not ACTIVE, one wrapping
// ErrNoEpoch; a version the chain does not approve, one wrapping
// ErrUnapprovedVersion.
func (c *Client) CreateEscrowUnder(ctx context.Context, amount uint64, runtimeVersion string) (*sessionpb.EscrowSnapshot, error) {
	res, err := c.send(ctx, &devshardtypes.MsgCreateEscrow{Creator: c.account.String(), Amount: amount, RuntimeVersion: runtimeVersion})
	if errors.Is(err, ErrInsufficientFunds) {
		return nil, fmt.Errorf("the account %s cannot lock %d: %w", c.account, amount, err)
	}
	if err != nil {
		return nil, fmt.Errorf("create escrow of %d under runtime version %q: %w", amount, runtimeVersion, err)
	}
	id, err := eventUint(res, "devshard.devshard.v1.EventEscrowCreated", "escrow_id")
	if err != nil {
		return nil, err
	}
	esc, err := c.Escrow(ctx, id)
	if err != nil {
		return nil, err
	}
	return &esc.Snapshot, nil
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

// SettleEscrow sends MsgSettleEscrow and returns its tx hash. Settlements
// asked for while another waits for its block share the next tx
// (settleQueue). An escrow the chain already shows as settled is success,
// with the hash of the tx that settled it when the node can find it; one
// that expired is an error wrapping ErrExpired. A settlement the chain
// refuses is an error that errors.Is matches against the session.Reason it
// was refused for.
func (c *Client) SettleEscrow(ctx context.Context, m *sessionpb.Settlement) (string, error) {
	if c.key == nil {
		return "", fmt.Errorf("settle escrow %d: %w", m.EscrowId, ErrReadOnly)
	}
	call := c.settles.add(ctx, m, c.sendSettlements)
	select {
	case <-call.done:
	case <-ctx.Done():
		return "", fmt.Errorf("settle escrow %d: %w", m.EscrowId, context.Cause(ctx))
	}
	if call.err == nil {
		return call.hash, nil
	}
	err := call.err
	// A settlement that landed before a restart is not an error now; an
	// escrow that expired meanwhile can never be settled.
	if closed, hash, cerr := c.Closed(ctx, m.EscrowId); closed || errors.Is(cerr, ErrExpired) {
		return hash, cerr
	}
	return "", fmt.Errorf("settle escrow %d: %w", m.EscrowId, err)
}

// Closed reports whether escrow id is no longer open on chain: true once
// it is settled, with the hash of the tx that settled it ("" if the node
// cannot say); an error wrapping ErrExpired once it expired.
func (c *Client) Closed(ctx context.Context, id uint64) (bool, string, error) {
	esc, err := c.Escrow(ctx, id)
	if err != nil {
		return false, "", err
	}
	switch esc.Status {
	case devshardtypes.EscrowSettled:
		return true, c.settledBy(ctx, id), nil
	case devshardtypes.EscrowExpired:
		return false, "", fmt.Errorf("%w: escrow %d expired on chain before it was settled; its whole amount went back to the creator", ErrExpired, id)
	}
	return false, "", nil
}

// settledBy finds the tx that settled escrow id (this client's, before a
// restart, or another's); "" if the node cannot say.
func (c *Client) settledBy(ctx context.Context, id uint64) string {
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

// HostURL is the API address a participant registered, without a trailing
// slash.
func (c *Client) HostURL(ctx context.Context, addr signing.Address) (string, error) {
	res, err := c.query.Participant(ctx, &devshardtypes.QueryParticipantRequest{Address: c.Address(addr)})
	if status.Code(err) == codes.NotFound {
		return "", fmt.Errorf("group member %s is not a registered participant", c.Address(addr))
	}
	if err != nil {
		return "", fmt.Errorf("query participant %s: %w", c.Address(addr), err)
	}
	return strings.TrimRight(res.Participant.Url, "/"), nil
}

// ClaimRewards claims the client's account's rewards of a CLAIMABLE epoch
// and returns the tx hash. Only the account's own key can claim.
func (c *Client) ClaimRewards(ctx context.Context, epoch uint64) (string, error) {
	res, err := c.send(ctx, &devshardtypes.MsgClaimRewards{Participant: c.account.String(), EpochId: epoch})
	if err != nil {
		return "", fmt.Errorf("claim rewards of epoch %d: %w", epoch, err)
	}
	return res.TxHash, nil
}
