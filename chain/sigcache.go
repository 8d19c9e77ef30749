package chain

import (
	sdk "github.com/cosmos/cosmos-sdk/types"
	txsigning "github.com/cosmos/cosmos-sdk/types/tx/signing"
	authsigning "github.com/cosmos/cosmos-sdk/x/auth/signing"

	"github.com/devshard/devshard/internal/recent"
)

// txSigCacheSize is how many txs a node remembers having verified: a full
// mempool (5,000 txs) and more.
const txSigCacheSize = 1 << 14

// txSigCache remembers the txs whose signatures this node verified when
// they entered its mempool, so that the block carrying one does not verify
// them again: the SDK's signature check is skipped for it, every other
// check (the sequence, the fee, the gas charged for the signatures) still
// runs. Verification is a pure function of what the key binds:
//
//   - the tx bytes, which hold the body, the auth info (signer infos with
//     their sequences, the fee) and the signatures;
//   - the chain id;
//   - each signer's account number and public key, which the chain never
//     changes for an address once the account exists (a tx whose signer
//     has no account fails before it is remembered).
//
// That holds only for SIGN_MODE_DIRECT, whose signed bytes are the tx's
// body and auth info with the chain id and account number; other modes
// (textual renders state) are verified every time. A hit repeats a check
// that passed on this node, so a block's outcome is the same on a node
// that remembers the tx and on one that does not.
type txSigCache struct{ set *recent.Set }

func newTxSigCache() txSigCache { return txSigCache{set: recent.New(txSigCacheSize)} }

// skipVerified returns ctx set to skip the SDK's signature check when ctx
// executes a tx (in a block) that this node verified in its mempool.
func (c txSigCache) skipVerified(ctx sdk.Context, tx sdk.Tx, simulate bool) sdk.Context {
	if ctx.IsCheckTx() || simulate || !ctx.IsSigverifyTx() || !directOnly(tx) {
		return ctx
	}
	if c.set.Has(txSigKey(ctx)) {
		return ctx.WithIsSigverifyTx(false)
	}
	return ctx
}

// remember records a tx whose signatures the SDK's checks just verified
// for the mempool. A recheck (after a block) does not verify signatures,
// so it records nothing.
func (c txSigCache) remember(ctx sdk.Context, tx sdk.Tx, simulate bool) {
	if !ctx.IsCheckTx() || ctx.IsReCheckTx() || simulate || !ctx.IsSigverifyTx() || !directOnly(tx) {
		return
	}
	c.set.Add(txSigKey(ctx))
}

// directOnly reports whether every signature of tx is a single key's in
// SIGN_MODE_DIRECT.
func directOnly(tx sdk.Tx) bool {
	sigTx, ok := tx.(authsigning.SigVerifiableTx)
	if !ok {
		return false
	}
	sigs, err := sigTx.GetSignaturesV2()
	if err != nil || len(sigs) == 0 {
		return false
	}
	for _, sig := range sigs {
		single, ok := sig.Data.(*txsigning.SingleSignatureData)
		if !ok || single.SignMode != txsigning.SignMode_SIGN_MODE_DIRECT {
			return false
		}
	}
	return true
}

// txSigKey binds the chain id and the tx bytes.
func txSigKey(ctx sdk.Context) [32]byte { return recent.KeyOf([]byte(ctx.ChainID()), ctx.TxBytes()) }
