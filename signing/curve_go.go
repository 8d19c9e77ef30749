//go:build !libsecp256k1_sdk

package signing

import "github.com/decred/dcrd/dcrec/secp256k1/v4"

// Backend names the secp256k1 implementation of this build.
const Backend = "pure Go (decred secp256k1); keys checked often through precomputed tables"

// verifyCurve checks a signature Verify has found well formed (sizes, range,
// low-S): the pure-Go build.
func verifyCurve(key *secp256k1.PublicKey, r, s *secp256k1.ModNScalar, _, msg, _ []byte) bool {
	return verifyPureGo(key, r, s, msg)
}
