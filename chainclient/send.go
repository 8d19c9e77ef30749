package chainclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	errorsmod "cosmossdk.io/errors"

	"github.com/cosmos/cosmos-sdk/client"
	"github.com/cosmos/cosmos-sdk/client/grpc/cmtservice"
	clienttx "github.com/cosmos/cosmos-sdk/client/tx"
	cryptotypes "github.com/cosmos/cosmos-sdk/crypto/types"
	sdk "github.com/cosmos/cosmos-sdk/types"
	sdkerrors "github.com/cosmos/cosmos-sdk/types/errors"
	txtypes "github.com/cosmos/cosmos-sdk/types/tx"
	"github.com/cosmos/cosmos-sdk/types/tx/signing"
	authsigning "github.com/cosmos/cosmos-sdk/x/auth/signing"
	authtypes "github.com/cosmos/cosmos-sdk/x/auth/types"
)

// Sender signs txs with secp256k1 keys (sign mode direct), sends them to
// one node over gRPC and waits until a block includes them. It is safe for
// concurrent use; sends are serialized, because a signer's sequence number
// must advance in order. A Client sends through one with its own key; a
// test node sends with many keys through its own.
type Sender struct {
	conn     grpc.ClientConnInterface
	chainID  string
	txConfig client.TxConfig
	// inclusion bounds the wait for a sent tx's block (txInclusion).
	inclusion time.Duration
	// resendEvery is how often a tx no block holds yet is sent again
	// (txResend).
	resendEvery time.Duration

	mu sync.Mutex
}

const (
	// gasAdjustment scales the simulated gas to get the gas limit: state
	// can change between the simulation and the block.
	gasAdjustment = 1.5
	// pollInterval is how often a sent tx is looked for in a block.
	pollInterval = 100 * time.Millisecond
	// txResend is how often a sent tx that no block holds yet is sent
	// again, to learn whether the node still means to include it (resend).
	txResend = 2 * time.Second
	// txInclusion bounds the wait for a sent tx's block. A live chain
	// includes a valid tx in the next block or two, seconds apart; a tx
	// still missing after a minute sits in the mempool of a node that went
	// away, or the chain is making no blocks, and the caller is told so
	// instead of waiting for ever.
	txInclusion = time.Minute
)

// NewSender returns a Sender over conn (a gRPC connection to a node) for
// the chain chainID. txConfig is the chain's (chaincfg.MakeEncoding's, or
// the app's for messages of other modules).
func NewSender(conn grpc.ClientConnInterface, chainID string, txConfig client.TxConfig) *Sender {
	return &Sender{conn: conn, chainID: chainID, txConfig: txConfig, inclusion: txInclusion, resendEvery: txResend}
}

// Send signs msgs with key, broadcasts the tx and waits until a block
// includes it, ctx ends, or a minute has passed (an error wrapping
// ErrNotIncluded). Fees are zero, which a devshard node's default minimum
// gas price accepts. A tx the chain refuses, in simulation, in CheckTx or
// in its block, is a *TxError.
func (s *Sender) Send(ctx context.Context, key cryptotypes.PrivKey, msgs ...sdk.Msg) (*sdk.TxResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	addr := sdk.AccAddress(key.PubKey().Address())
	info, err := authtypes.NewQueryClient(s.conn).AccountInfo(ctx, &authtypes.QueryAccountInfoRequest{Address: addr.String()})
	if status.Code(err) == codes.NotFound {
		return nil, fmt.Errorf("account %s does not exist on chain %s yet; fund it before sending from it", addr, s.chainID)
	}
	if err != nil {
		return nil, fmt.Errorf("reading account %s: %w", addr, err)
	}
	signer := authsigning.SignerData{
		Address:       addr.String(),
		ChainID:       s.chainID,
		AccountNumber: info.Info.AccountNumber,
		Sequence:      info.Info.Sequence,
		PubKey:        key.PubKey(),
	}
	gas, err := s.simulate(ctx, key, signer, msgs)
	if err != nil {
		return nil, err
	}
	b, err := s.build(msgs, uint64(float64(gas)*gasAdjustment))
	if err != nil {
		return nil, err
	}
	txBytes, err := signDirect(ctx, s.txConfig, key, signer, b)
	if err != nil {
		return nil, err
	}
	res, err := txtypes.NewServiceClient(s.conn).BroadcastTx(ctx, &txtypes.BroadcastTxRequest{TxBytes: txBytes, Mode: txtypes.BroadcastMode_BROADCAST_MODE_SYNC})
	if err != nil {
		return nil, fmt.Errorf("broadcasting: %w", err)
	}
	if r := res.TxResponse; r.Code != 0 {
		return nil, &TxError{Hash: r.TxHash, Codespace: r.Codespace, Code: r.Code, Log: r.RawLog}
	}
	return s.wait(ctx, res.TxResponse.TxHash, txBytes)
}

func (s *Sender) build(msgs []sdk.Msg, gas uint64) (client.TxBuilder, error) {
	b := s.txConfig.NewTxBuilder()
	if err := b.SetMsgs(msgs...); err != nil {
		return nil, err
	}
	b.SetGasLimit(gas)
	return b, nil
}

// simulate runs the tx with an empty signature to learn its gas. It asks
// through the node's ABCI query rather than the tx service's Simulate,
// because only the ABCI answer keeps the refusal's codespace and code: the
// tx service flattens them into text.
func (s *Sender) simulate(ctx context.Context, key cryptotypes.PrivKey, signer authsigning.SignerData, msgs []sdk.Msg) (uint64, error) {
	b, err := s.build(msgs, 0)
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
	txBytes, err := s.txConfig.TxEncoder()(b.GetTx())
	if err != nil {
		return 0, err
	}
	res, err := cmtservice.NewServiceClient(s.conn).ABCIQuery(ctx, &cmtservice.ABCIQueryRequest{Path: "/app/simulate", Data: txBytes})
	if err != nil {
		return 0, fmt.Errorf("simulating the tx: %w", err)
	}
	if res.Code != 0 {
		return 0, &TxError{Codespace: res.Codespace, Code: res.Code, Log: res.Log}
	}
	// The answer is sdk.SimulationResponse in the SDK's JSON, where a
	// uint64 is a quoted string; the gas is all a sender needs of it.
	var sim struct {
		GasInfo struct {
			GasUsed uint64 `json:"gas_used,string"`
		} `json:"gas_info"`
	}
	if err := json.Unmarshal(res.Value, &sim); err != nil {
		return 0, fmt.Errorf("reading the simulation of the tx: %w", err)
	}
	return sim.GasInfo.GasUsed, nil
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

// errWaited ends a wait for a tx's block that went on too long.
var errWaited = errors.New("waited too long for the tx's block")

// wait polls for the tx until a block holds it, for at most s.inclusion. A
// node that stops answering is not the end of the wait: the next look goes
// to another node, which may have the tx by gossip. Every s.resendEvery the
// tx is sent again (resent), so a tx the mempool dropped at its recheck
// after a block (a settlement of an escrow another host's tx settled)
// ends the wait with the chain's refusal at once, not after a minute; the
// account's next tx waits behind this one.
func (s *Sender) wait(ctx context.Context, hash string, txBytes []byte) (*sdk.TxResponse, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, s.inclusion, errWaited)
	defer cancel()
	svc := txtypes.NewServiceClient(s.conn)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	sent := time.Now()
	var lastErr error // the last look that found no answer, for the message
	for {
		res, err := svc.GetTx(ctx, &txtypes.GetTxRequest{Hash: hash})
		switch code := status.Code(err); {
		case err == nil:
			r := res.TxResponse
			if r.Code != 0 {
				return r, &TxError{Hash: hash, Codespace: r.Codespace, Code: r.Code, Log: r.RawLog, Included: true}
			}
			return r, nil
		case code == codes.Unavailable:
			lastErr = err
		case code == codes.DeadlineExceeded || code == codes.Canceled:
			// The wait's end, told by gRPC a moment before ctx tells it.
		case code != codes.NotFound:
			return nil, fmt.Errorf("looking up tx %s: %w", hash, err)
		case time.Since(sent) >= s.resendEvery:
			sent = time.Now()
			if refused := s.resend(ctx, hash, txBytes); refused != nil {
				return nil, refused
			}
		}
		select {
		case <-ctx.Done():
			if context.Cause(ctx) == errWaited {
				why := "the node that took it may have gone away, or the chain is making no blocks"
				if lastErr != nil {
					why += fmt.Sprintf(" (last look: %v)", lastErr)
				}
				return nil, fmt.Errorf("tx %s was sent, but %w within %s: %s; it may still land, so look it up by its hash before sending it again",
					hash, ErrNotIncluded, s.inclusion, why)
			}
			return nil, fmt.Errorf("tx %s was sent but not seen in a block before giving up: %w", hash, context.Cause(ctx))
		case <-tick.C:
		}
	}
}

// resend sends a tx that no block holds yet again, and returns the
// chain's refusal when the tx can no longer land. The node's answer tells
// where the tx stands:
//   - it is in the node's cache: still in the mempool, or in a block the
//     tx index has not caught up with;
//   - its sequence is past: a block holds it (or another tx of that
//     sequence, which the wait's bound covers);
//   - accepted: the mempool had dropped it while it was still valid, and
//     holds it again;
//   - refused otherwise: it left the mempool at a recheck and can never
//     land as it is.
//
// A node that does not answer tells nothing; the wait goes on.
func (s *Sender) resend(ctx context.Context, hash string, txBytes []byte) *TxError {
	res, err := txtypes.NewServiceClient(s.conn).BroadcastTx(ctx, &txtypes.BroadcastTxRequest{TxBytes: txBytes, Mode: txtypes.BroadcastMode_BROADCAST_MODE_SYNC})
	if err != nil {
		return nil
	}
	r := res.TxResponse
	answered := func(e *errorsmod.Error) bool { return r.Codespace == e.Codespace() && r.Code == e.ABCICode() }
	if r.Code == 0 || answered(sdkerrors.ErrTxInMempoolCache) || answered(sdkerrors.ErrWrongSequence) {
		return nil
	}
	return &TxError{Hash: hash, Codespace: r.Codespace, Code: r.Code, Log: r.RawLog}
}
