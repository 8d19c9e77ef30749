//go:build libsecp256k1_sdk

package signing

import (
	"github.com/decred/dcrd/dcrec/secp256k1/v4"

	sdksecp256k1 "github.com/cosmos/cosmos-sdk/crypto/keys/secp256k1"
)

// Backend names the implementation of the curve check in this build.
const Backend = "libsecp256k1 (cgo, the Cosmos SDK's libsecp256k1_sdk build)"

// verifyCurve checks a signature Verify has found well formed (sizes, range,
// low-S) with the C libsecp256k1 the Cosmos SDK bundles: the same signatures
// pass as in the pure-Go build, since libsecp256k1 also wants low-S and
// Verify has checked everything else already.
func verifyCurve(_ *secp256k1.PublicKey, _, _ *secp256k1.ModNScalar, pub, msg, sig []byte) bool {
	return (&sdksecp256k1.PubKey{Key: pub}).VerifySignature(msg, sig)
}
