// Package txclient signs devshard chain txs with a secp256k1 key, sends them
// over gRPC and waits until a block includes them.
package txclient

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cosmos/cosmos-sdk/client"
	clienttx "github.com/cosmos/cosmos-sdk/client/tx"
	cryptotypes "github.com/cosmos/cosmos-sdk/crypto/types"
	sdk "github.com/cosmos/cosmos-sdk/types"
	txtypes "github.com/cosmos/cosmos-sdk/types/tx"
	"github.com/cosmos/cosmos-sdk/types/tx/signing"
	authsigning "github.com/cosmos/cosmos-sdk/x/auth/signing"
	authtypes "github.com/cosmos/cosmos-sdk/x/auth/types"
)

// Client sends txs to one chain. It is safe for concurrent use; sends are
// serialized, because each signer's sequence number must advance in order.
type Client struct {
	conn     grpc.ClientConnInterface
	chainID  string
	txConfig client.TxConfig
	opts     options

	mu sync.Mutex
}

type options struct {
	gasPrice      sdk.DecCoin
	gasAdjustment float64
	pollInterval  time.Duration
}

// Option changes a Client's defaults.
type Option func(*options)

// WithGasPrice pays fees of price per unit of gas (default zero, which a
// local devshard node accepts).
func WithGasPrice(price sdk.DecCoin) Option { return func(o *options) { o.gasPrice = price } }

// WithGasAdjustment scales the simulated gas to get the gas limit (default 1.5).
func WithGasAdjustment(f float64) Option { return func(o *options) { o.gasAdjustment = f } }

// WithPollInterval sets how often Send asks whether its tx is in a block
// (default 100ms).
func WithPollInterval(d time.Duration) Option { return func(o *options) { o.pollInterval = d } }

// New returns a client over conn (a gRPC connection to a node) for the chain
// chainID. txConfig is the chain's (chain.MakeEncoding().TxConfig).
func New(conn grpc.ClientConnInterface, chainID string, txConfig client.TxConfig, opts ...Option) *Client {
	o := options{gasAdjustment: 1.5, pollInterval: 100 * time.Millisecond}
	for _, opt := range opts {
		opt(&o)
	}
	return &Client{conn: conn, chainID: chainID, txConfig: txConfig, opts: o}
}

// TxError is a tx the chain rejected, in CheckTx or in its block.
type TxError struct {
	Hash      string
	Codespace string
	Code      uint32
	Log       string
	// Included is set when the tx was in a block (and paid its fee) but failed.
	Included bool
}

func (e *TxError) Error() string {
	where := "rejected before inclusion"
	if e.Included {
		where = "failed in its block"
	}
	return fmt.Sprintf("tx %s %s: %s code %d: %s", e.Hash, where, e.Codespace, e.Code, e.Log)
}

// Send signs msgs with key (sign mode direct), broadcasts the tx and waits
// until a block includes it or ctx ends. A tx the chain rejects or that
// fails is a *TxError. The gas limit is the simulated gas times the
// adjustment.
func (c *Client) Send(ctx context.Context, key cryptotypes.PrivKey, msgs ...sdk.Msg) (*sdk.TxResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()

	addr := sdk.AccAddress(key.PubKey().Address())
	info, err := authtypes.NewQueryClient(c.conn).AccountInfo(ctx, &authtypes.QueryAccountInfoRequest{Address: addr.String()})
	if status.Code(err) == codes.NotFound {
		return nil, fmt.Errorf("account %s does not exist on chain %s yet; fund it before sending from it", addr, c.chainID)
	}
	if err != nil {
		return nil, fmt.Errorf("reading account %s: %w", addr, err)
	}
	signer := authsigning.SignerData{
		Address:       addr.String(),
		ChainID:       c.chainID,
		AccountNumber: info.Info.AccountNumber,
		Sequence:      info.Info.Sequence,
		PubKey:        key.PubKey(),
	}

	gas, err := c.simulate(ctx, key, signer, msgs)
	if err != nil {
		return nil, err
	}
	txBytes, err := c.sign(ctx, key, signer, msgs, gas)
	if err != nil {
		return nil, err
	}
	res, err := txtypes.NewServiceClient(c.conn).BroadcastTx(ctx, &txtypes.BroadcastTxRequest{TxBytes: txBytes, Mode: txtypes.BroadcastMode_BROADCAST_MODE_SYNC})
	if err != nil {
		return nil, fmt.Errorf("broadcasting: %w", err)
	}
	if r := res.TxResponse; r.Code != 0 {
		return nil, &TxError{Hash: r.TxHash, Codespace: r.Codespace, Code: r.Code, Log: r.RawLog}
	}
	return c.wait(ctx, res.TxResponse.TxHash)
}

func (c *Client) build(msgs []sdk.Msg, gas uint64) (client.TxBuilder, error) {
	b := c.txConfig.NewTxBuilder()
	if err := b.SetMsgs(msgs...); err != nil {
		return nil, err
	}
	b.SetGasLimit(gas)
	if !c.opts.gasPrice.Amount.IsNil() && c.opts.gasPrice.IsPositive() {
		fee := c.opts.gasPrice.Amount.MulInt64(int64(min(gas, math.MaxInt64))).Ceil().TruncateInt()
		b.SetFeeAmount(sdk.NewCoins(sdk.NewCoin(c.opts.gasPrice.Denom, fee)))
	}
	return b, nil
}

// simulate runs the tx with an empty signature to learn its gas.
func (c *Client) simulate(ctx context.Context, key cryptotypes.PrivKey, signer authsigning.SignerData, msgs []sdk.Msg) (uint64, error) {
	b, err := c.build(msgs, 0)
	if err != nil {
		return 0, err
	}
	if err := b.SetSignatures(signing.SignatureV2{
		PubKey:   key.PubKey(),
		Data:     &signing.SingleSignatureData{SignMode: signing.SignMode_SIGN_MODE_DIRECT},
		Sequence: signer.Sequence,
	}); err != nil {
		return 0, err
	}
	txBytes, err := c.txConfig.TxEncoder()(b.GetTx())
	if err != nil {
		return 0, err
	}
	res, err := txtypes.NewServiceClient(c.conn).Simulate(ctx, &txtypes.SimulateRequest{TxBytes: txBytes})
	if err != nil {
		return 0, fmt.Errorf("simulating the tx (it would fail): %w", err)
	}
	return uint64(float64(res.GasInfo.GasUsed) * c.opts.gasAdjustment), nil
}

func (c *Client) sign(ctx context.Context, key cryptotypes.PrivKey, signer authsigning.SignerData, msgs []sdk.Msg, gas uint64) ([]byte, error) {
	b, err := c.build(msgs, gas)
	if err != nil {
		return nil, err
	}
	return signDirect(ctx, c.txConfig, key, signer, b)
}

// SignOffline signs msgs into tx bytes without asking a node anything: the
// caller gives the account number, sequence and gas limit. Genesis txs are
// signed this way, with account number 0 and sequence 0.
func SignOffline(txConfig client.TxConfig, key cryptotypes.PrivKey, chainID string, accountNumber, sequence, gas uint64, msgs ...sdk.Msg) ([]byte, error) {
	b := txConfig.NewTxBuilder()
	if err := b.SetMsgs(msgs...); err != nil {
		return nil, err
	}
	b.SetGasLimit(gas)
	return signDirect(context.Background(), txConfig, key, authsigning.SignerData{
		Address:       sdk.AccAddress(key.PubKey().Address()).String(),
		ChainID:       chainID,
		AccountNumber: accountNumber,
		Sequence:      sequence,
		PubKey:        key.PubKey(),
	}, b)
}

func signDirect(ctx context.Context, txConfig client.TxConfig, key cryptotypes.PrivKey, signer authsigning.SignerData, b client.TxBuilder) ([]byte, error) {
	mode := signing.SignMode_SIGN_MODE_DIRECT
	// The signer info (with an empty signature) is part of the signed bytes,
	// so it is set before signing.
	if err := b.SetSignatures(signing.SignatureV2{
		PubKey:   key.PubKey(),
		Data:     &signing.SingleSignatureData{SignMode: mode},
		Sequence: signer.Sequence,
	}); err != nil {
		return nil, err
	}
	sig, err := clienttx.SignWithPrivKey(ctx, mode, signer, b, key, txConfig, signer.Sequence)
	if err != nil {
		return nil, err
	}
	if err := b.SetSignatures(sig); err != nil {
		return nil, err
	}
	return txConfig.TxEncoder()(b.GetTx())
}

// wait polls for the tx until a block holds it.
func (c *Client) wait(ctx context.Context, hash string) (*sdk.TxResponse, error) {
	svc := txtypes.NewServiceClient(c.conn)
	tick := time.NewTicker(c.opts.pollInterval)
	defer tick.Stop()
	for {
		res, err := svc.GetTx(ctx, &txtypes.GetTxRequest{Hash: hash})
		switch {
		case err == nil:
			r := res.TxResponse
			if r.Code != 0 {
				return r, &TxError{Hash: hash, Codespace: r.Codespace, Code: r.Code, Log: r.RawLog, Included: true}
			}
			return r, nil
		case status.Code(err) != codes.NotFound:
			return nil, fmt.Errorf("looking up tx %s: %w", hash, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("tx %s was sent but not seen in a block before giving up: %w", hash, context.Cause(ctx))
		case <-tick.C:
		}
	}
}

// IsCode reports whether err is a *TxError from codespace with code, such as
// an sdkerrors value's Codespace() and ABCICode().
func IsCode(err error, codespace string, code uint32) bool {
	var te *TxError
	return errors.As(err, &te) && te.Codespace == codespace && te.Code == code
}
