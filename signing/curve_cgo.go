//go:build libsecp256k1_sdk

package signing

import (
	"github.com/decred/dcrd/dcrec/secp256k1/v4"

	sdksecp256k1 "github.com/cosmos/cosmos-sdk/crypto/keys/secp256k1"
)

// Backend names the secp256k1 implementation of this build. Signing stays
// in pure Go in both builds: it is faster there than through the SDK's C
// binding (45 against 58 µs here), and RFC 6979 makes the same bytes.
const Backend = "libsecp256k1 checks (cgo: the Cosmos SDK's, -tags libsecp256k1_sdk); keys checked often through precomputed tables; pure-Go signing"

// verifyCurve checks a signature Verify has found well formed (sizes, range,
// low-S) with the C libsecp256k1 the Cosmos SDK bundles: the same signatures
// pass as in the pure-Go build, since libsecp256k1 also wants low-S and
// Verify has checked everything else already.
func verifyCurve(_ *secp256k1.PublicKey, _, _ *secp256k1.ModNScalar, pub, msg, sig []byte) bool {
	return (&sdksecp256k1.PubKey{Key: pub}).VerifySignature(msg, sig)
}
