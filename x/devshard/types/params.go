package types

import (
	"encoding/hex"
	"fmt"
	"net/url"
	"slices"
	"strings"

	sdkmath "cosmossdk.io/math"

	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/session"
)

// DefaultCollateralDenom is the chain's base denom.
const DefaultCollateralDenom = "ushard"

// Limits that keep every height an epoch computes far from int64 overflow.
const (
	MaxEpochLength = 1_000_000_000
	MaxPhaseEpochs = 10_000
)

// MaxUpgradeProtectionWindow bounds upgrade_protection_window: about eleven
// days at one block a second. A longer window would switch the punishment
// of missed inferences off for weeks after every upgrade.
const MaxUpgradeProtectionWindow = 1_000_000

// DefaultParams: 100-block epochs; an epoch settles while the next is active,
// is accounted during the one after, and stays claimable for two more.
func DefaultParams() Params {
	return Params{
		EpochLength:           100,
		SettlingEpochs:        1,
		AccountingEpochs:      1,
		ClaimableEpochs:       2,
		MinCollateral:         sdk.NewCoin(DefaultCollateralDenom, sdkmath.NewInt(1_000_000)),
		MaxConsecutiveInvalid: 10,

		GroupSize:               16,
		MinEscrowAmount:         10_000,
		MaxEscrowAmount:         1_000_000_000_000,
		MaxEscrowsPerEpoch:      500_000,
		MaxNonce:                1_000_000,
		CreationFee:             1_000,
		FeePerNonce:             1,
		TokenPrice:              1,
		SealGraceNonces:         150,
		SealGraceSeconds:        30,
		ExecutionTimeoutSeconds: 120,
		ValidationRateBps:       500,
		ProtocolVersion:         session.ProtocolVersion,
		SettlementWindowEpochs:  1,
		ExpiryEpochs:            2,
		ExpiryBatch:             100,
		MaxMissedRatioBps:       2_000,
		MaxInvalidRatioBps:      1_000,
		ApprovedVersions:        []ApprovedVersion{},
		// About two minutes at one block a second: time for a host to see a
		// stale root settled and answer with its latest.
		SettlementChallengeBlocks: 120,
		// About fifty minutes at one block a second: time for every host to
		// stop, swap its binary and come back after an upgrade halt.
		UpgradeProtectionWindow: 3_000,
	}
}

// AllowedVersionURLSchemes are the URL schemes an approved version may be
// downloaded from.
var AllowedVersionURLSchemes = []string{"https"}

// Validate checks the parameters are usable.
func (p Params) Validate() error {
	switch {
	case p.EpochLength < 1 || p.EpochLength > MaxEpochLength:
		return fmt.Errorf("%w: epoch_length is %d blocks; it must be between 1 and %d", ErrInvalidParams, p.EpochLength, MaxEpochLength)
	case p.SettlingEpochs < 1:
		return fmt.Errorf("%w: settling_epochs is 0; it must be at least 1 so epoch N settles while N+1 is active", ErrInvalidParams)
	case p.ClaimableEpochs < 1:
		return fmt.Errorf("%w: claimable_epochs is 0; it must be at least 1 so rewards can be claimed", ErrInvalidParams)
	case p.SettlingEpochs > MaxPhaseEpochs || p.AccountingEpochs > MaxPhaseEpochs || p.ClaimableEpochs > MaxPhaseEpochs:
		return fmt.Errorf("%w: a phase may last at most %d epochs", ErrInvalidParams, MaxPhaseEpochs)
	}
	if p.UpgradeProtectionWindow > MaxUpgradeProtectionWindow {
		return fmt.Errorf("%w: upgrade_protection_window is %d blocks; it must be at most %d (0 switches the protection off)",
			ErrInvalidParams, p.UpgradeProtectionWindow, MaxUpgradeProtectionWindow)
	}
	if err := p.MinCollateral.Validate(); err != nil {
		return fmt.Errorf("%w: min_collateral: %v", ErrInvalidParams, err)
	}
	if err := p.validateEscrow(); err != nil {
		return err
	}
	return validateVersions(p.ApprovedVersions)
}

// validateEscrow checks the escrow and session parameters. The session
// limits come from the protocol package, so a snapshot taken from valid
// params always passes session.ValidateSnapshot.
func (p Params) validateEscrow() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidParams}, args...)...)
	}
	switch {
	case p.GroupSize < 1 || p.GroupSize > session.MaxGroupSize:
		return bad("group_size is %d; it must be between 1 and %d", p.GroupSize, session.MaxGroupSize)
	case p.MinEscrowAmount == 0 || p.MinEscrowAmount > p.MaxEscrowAmount:
		return bad("escrow amount bounds [%d, %d] are empty or start at 0; min_escrow_amount must be positive and at most max_escrow_amount", p.MinEscrowAmount, p.MaxEscrowAmount)
	case p.CreationFee > p.MinEscrowAmount:
		return bad("creation_fee %d exceeds min_escrow_amount %d; every escrow must cover its creation fee", p.CreationFee, p.MinEscrowAmount)
	case p.MaxEscrowsPerEpoch == 0:
		return bad("max_escrows_per_epoch is 0; no escrow could ever be created")
	case p.MaxNonce == 0 || p.MaxNonce > session.MaxNonceLimit:
		return bad("max_nonce is %d; it must be between 1 and %d", p.MaxNonce, uint64(session.MaxNonceLimit))
	case p.TokenPrice == 0:
		return bad("token_price is 0; it must be positive")
	case p.ValidationRateBps > 10_000:
		return bad("validation_rate_bps is %d; it must be at most 10000", p.ValidationRateBps)
	case p.ProtocolVersion != session.ProtocolVersion:
		return bad("protocol_version is %d; this build runs protocol version %d", p.ProtocolVersion, session.ProtocolVersion)
	case p.SettlementWindowEpochs < 1:
		return bad("settlement_window_epochs is 0; it must be at least 1")
	case p.ExpiryEpochs <= p.SettlementWindowEpochs || p.ExpiryEpochs > MaxPhaseEpochs:
		return bad("expiry_epochs is %d; it must be greater than settlement_window_epochs (%d) and at most %d", p.ExpiryEpochs, p.SettlementWindowEpochs, MaxPhaseEpochs)
	case p.ExpiryBatch == 0:
		return bad("expiry_batch is 0; expired escrows would never be refunded")
	case p.SettlementChallengeBlocks < 1 || p.SettlementChallengeBlocks > MaxEpochLength:
		return bad("settlement_challenge_blocks is %d; it must be between 1 and %d, so a stale root can be answered before it is paid", p.SettlementChallengeBlocks, MaxEpochLength)
	case p.MaxMissedRatioBps > 10_000 || p.MaxInvalidRatioBps > 10_000:
		return bad("punishment thresholds are %d and %d bps; each must be at most 10000", p.MaxMissedRatioBps, p.MaxInvalidRatioBps)
	}
	return nil
}

func validateVersions(vs []ApprovedVersion) error {
	seen := make(map[string]bool, len(vs))
	for i, v := range vs {
		if v.Name == "" {
			return fmt.Errorf("%w: approved_versions[%d] has no name", ErrInvalidParams, i)
		}
		if seen[v.Name] {
			return fmt.Errorf("%w: approved version name %q appears twice; names must be unique", ErrInvalidParams, v.Name)
		}
		seen[v.Name] = true
		if b, err := hex.DecodeString(v.Sha256); err != nil || len(b) != 32 || v.Sha256 != hex.EncodeToString(b) {
			return fmt.Errorf("%w: approved version %q: sha256 %q must be 64 lowercase hex digits", ErrInvalidParams, v.Name, v.Sha256)
		}
		u, err := url.Parse(v.Url)
		if err != nil || u.Host == "" || !slices.Contains(AllowedVersionURLSchemes, u.Scheme) {
			return fmt.Errorf("%w: approved version %q: url %q must be an absolute URL with scheme %v", ErrInvalidParams, v.Name, v.Url, AllowedVersionURLSchemes)
		}
	}
	return nil
}

// CheckRuntimeVersion says whether an escrow may be created under runtime
// version name: one of approved_versions, or "" while that list is empty
// (a chain whose hosts run no versiond). An escrow under a name no host
// runs could never be served, and one without a name on a chain that
// approves versions would be served by whichever runtime a request reached.
func (p Params) CheckRuntimeVersion(name string) error {
	approved := make([]string, len(p.ApprovedVersions))
	for i, v := range p.ApprovedVersions {
		if v.Name == name {
			return nil
		}
		approved[i] = v.Name
	}
	switch {
	case len(approved) == 0 && name == "":
		return nil
	case len(approved) == 0:
		return ErrUnapprovedVersion.Wrapf("runtime version %q is not approved: the chain approves no runtime version, so escrows are created with an empty runtime_version", name)
	case name == "":
		return ErrUnapprovedVersion.Wrapf("an escrow needs a runtime_version: the chain approves %s (newest last)", strings.Join(approved, ", "))
	default:
		return ErrUnapprovedVersion.Wrapf("runtime version %q is not approved; the chain approves %s (newest last)", name, strings.Join(approved, ", "))
	}
}

// UpgradeProtected reports whether an epoch whose work spans the blocks
// [start, end) meets the protection window [upgrade, upgrade + window) of an
// upgrade applied at height upgrade. A window of 0 protects nothing. Heights
// only, so every validator decides the same.
func UpgradeProtected(upgrade int64, window uint64, start, end int64) bool {
	if window == 0 || upgrade >= end {
		return false
	}
	return start < upgrade || uint64(start-upgrade) < window
}
