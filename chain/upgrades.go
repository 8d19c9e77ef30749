package chain

import (
	"context"
	"fmt"
	"time"

	upgradetypes "cosmossdk.io/x/upgrade/types"

	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/cosmos/cosmos-sdk/types/module"
	"github.com/cosmos/cosmos-sdk/x/authz"

	"github.com/devshard/devshard/session"
	devshardkeeper "github.com/devshard/devshard/x/devshard/keeper"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// UpgradeEscrows is the first named upgrade: escrows, settlement and
// rewards. See MigrateEscrows for what it changes.
const UpgradeEscrows = "v2-escrows"

// The limits UpgradeEscrows raises MaxEscrowsPerEpoch and MaxNonce to (never
// lowers them).
const (
	UpgradeMaxEscrowsPerEpoch = 1_000_000
	UpgradeMaxNonce           = 2_000_000
)

// UpgradeSessionV2 moves the chain to session protocol 2 (validation bound
// to sampling, thresholds a minority cannot decide, the chain id in every
// signed layout) and the settlement challenge window. See MigrateSessionV2.
const UpgradeSessionV2 = "v3-session-v2"

// UpgradeRuntimeVersions brings escrows tied to a runtime version (an
// escrow names the approved version it was created under) and the upgrade
// protection window. See MigrateRuntimeVersions.
const UpgradeRuntimeVersions = "v4-runtime-versions"

// UpgradeSettlementCost moves a chain to this build's settlement costs: a
// settlement is checked when its tx enters the mempool, and paying it
// writes each host's ledger but not its participant record (unless the
// host's invalid streak or status moves), and reads the epoch and params
// once, so it uses less gas. Blocks of the new build differ from the old
// one's in gas used and in the app hash, so the switch is an upgrade; the
// state is kept as it is.
const UpgradeSettlementCost = "v5-settlement-cost"

// AuthzKeeper is what the upgrade needs of x/authz.
type AuthzKeeper interface {
	IterateGrants(ctx context.Context, handler func(granter, grantee sdk.AccAddress, grant authz.Grant) bool)
	GetAuthorization(ctx context.Context, grantee, granter sdk.AccAddress, msgType string) (authz.Authorization, *time.Time)
	SaveGrant(ctx context.Context, grantee, granter sdk.AccAddress, authorization authz.Authorization, expiration *time.Time) error
}

func (app *App) registerUpgrades() {
	app.UpgradeKeeper.SetUpgradeHandler(UpgradeEscrows,
		func(ctx context.Context, _ upgradetypes.Plan, vm module.VersionMap) (module.VersionMap, error) {
			if err := MigrateEscrows(sdk.UnwrapSDKContext(ctx), app.DevshardKeeper, app.AuthzKeeper); err != nil {
				return nil, err
			}
			return app.ModuleManager.RunMigrations(ctx, app.configurator, vm)
		})
	app.UpgradeKeeper.SetUpgradeHandler(UpgradeSessionV2,
		func(ctx context.Context, _ upgradetypes.Plan, vm module.VersionMap) (module.VersionMap, error) {
			if err := MigrateSessionV2(sdk.UnwrapSDKContext(ctx), app.DevshardKeeper); err != nil {
				return nil, err
			}
			return app.ModuleManager.RunMigrations(ctx, app.configurator, vm)
		})
	app.UpgradeKeeper.SetUpgradeHandler(UpgradeRuntimeVersions,
		func(ctx context.Context, _ upgradetypes.Plan, vm module.VersionMap) (module.VersionMap, error) {
			if err := MigrateRuntimeVersions(sdk.UnwrapSDKContext(ctx), app.DevshardKeeper); err != nil {
				return nil, err
			}
			return app.ModuleManager.RunMigrations(ctx, app.configurator, vm)
		})
	app.UpgradeKeeper.SetUpgradeHandler(UpgradeSettlementCost,
		func(ctx context.Context, _ upgradetypes.Plan, vm module.VersionMap) (module.VersionMap, error) {
			return app.ModuleManager.RunMigrations(ctx, app.configurator, vm)
		})
}

// MigrateRuntimeVersions is UpgradeRuntimeVersions' state change. The
// previous version had no upgrade_protection_window, so its state reads 0,
// which would leave this very upgrade unprotected: the param takes its
// default (3,000 blocks). The approved list is kept as governance set it
// (an empty list keeps escrows unnamed, and hosts run directly). Escrows
// open at the upgrade name no version and settle as before. Run once by
// x/upgrade; a window governance sets to 0 later stays 0.
func MigrateRuntimeVersions(ctx sdk.Context, k devshardkeeper.Keeper) error {
	p, err := k.Params.Get(ctx)
	if err != nil {
		return err
	}
	p = withEscrowDefaults(p)
	if p.UpgradeProtectionWindow == 0 {
		p.UpgradeProtectionWindow = devshardtypes.DefaultParams().UpgradeProtectionWindow
	}
	if err := p.Validate(); err != nil {
		return fmt.Errorf("upgrade %s: params after migration: %w", UpgradeRuntimeVersions, err)
	}
	return k.Params.Set(ctx, p)
}

// MigrateSessionV2 is UpgradeSessionV2's state change, idempotent: the
// protocol_version param becomes this build's session.ProtocolVersion, and
// settlement_challenge_blocks, new in this version, takes its default when
// unset. New escrows snapshot both. Escrows open at the upgrade keep their
// version-1 snapshot, which this build cannot settle (their signatures name
// no chain id): they expire and refund their creators in full, so operators
// let gateways settle before the upgrade height (docs/chain.md).
func MigrateSessionV2(ctx sdk.Context, k devshardkeeper.Keeper) error {
	p, err := k.Params.Get(ctx)
	if err != nil {
		return err
	}
	p = withEscrowDefaults(p)
	p.ProtocolVersion = session.ProtocolVersion
	if err := p.Validate(); err != nil {
		return fmt.Errorf("upgrade %s: params after migration: %w", UpgradeSessionV2, err)
	}
	return k.Params.Set(ctx, p)
}

// MigrateEscrows is UpgradeEscrows' state change. It is idempotent: a
// second run changes nothing.
//
//  1. Params: every escrow parameter the previous version did not have
//     (zero) takes its default, then max_escrows_per_epoch and max_nonce are
//     raised to at least UpgradeMaxEscrowsPerEpoch and UpgradeMaxNonce.
//  2. Warm keys: every cold -> warm pair with a live (unexpired) generic
//     grant of MsgSignSession also gets a generic grant of MsgClaimRewards,
//     the message this version adds to what a warm key may send (through
//     `tx authz exec`), with the same expiration. A pair that already has
//     it, an expired grant, and a pair without the source grant are left
//     alone.
func MigrateEscrows(ctx sdk.Context, k devshardkeeper.Keeper, az AuthzKeeper) error {
	p, err := k.Params.Get(ctx)
	if err != nil {
		return err
	}
	p = withEscrowDefaults(p)
	p.MaxEscrowsPerEpoch = max(p.MaxEscrowsPerEpoch, UpgradeMaxEscrowsPerEpoch)
	p.MaxNonce = max(p.MaxNonce, UpgradeMaxNonce)
	if err := p.Validate(); err != nil {
		return fmt.Errorf("upgrade %s: params after migration: %w", UpgradeEscrows, err)
	}
	if err := k.Params.Set(ctx, p); err != nil {
		return err
	}

	source := sdk.MsgTypeURL(&devshardtypes.MsgSignSession{})
	target := sdk.MsgTypeURL(&devshardtypes.MsgClaimRewards{})
	type pair struct {
		granter, grantee sdk.AccAddress
		expiration       *time.Time
	}
	var pairs []pair
	az.IterateGrants(ctx, func(granter, grantee sdk.AccAddress, g authz.Grant) bool {
		a, err := g.GetAuthorization()
		if err != nil || a.MsgTypeURL() != source {
			return false
		}
		if g.Expiration != nil && !g.Expiration.After(ctx.BlockTime()) {
			return false // expired: nothing to copy
		}
		pairs = append(pairs, pair{granter, grantee, g.Expiration})
		return false
	})
	for _, pr := range pairs {
		if existing, _ := az.GetAuthorization(ctx, pr.grantee, pr.granter, target); existing != nil {
			continue
		}
		if err := az.SaveGrant(ctx, pr.grantee, pr.granter, authz.NewGenericAuthorization(target), pr.expiration); err != nil {
			return fmt.Errorf("upgrade %s: granting %s from %s to %s: %w", UpgradeEscrows, target, pr.granter, pr.grantee, err)
		}
	}
	return nil
}

// withEscrowDefaults fills the escrow parameters a previous version's state
// lacks (zero values) with their defaults.
func withEscrowDefaults(p devshardtypes.Params) devshardtypes.Params {
	d := devshardtypes.DefaultParams()
	fill := func(v *uint64, def uint64) {
		if *v == 0 {
			*v = def
		}
	}
	fill32 := func(v *uint32, def uint32) {
		if *v == 0 {
			*v = def
		}
	}
	fill32(&p.GroupSize, d.GroupSize)
	fill(&p.MinEscrowAmount, d.MinEscrowAmount)
	fill(&p.MaxEscrowAmount, d.MaxEscrowAmount)
	fill(&p.MaxEscrowsPerEpoch, d.MaxEscrowsPerEpoch)
	fill(&p.MaxNonce, d.MaxNonce)
	fill(&p.TokenPrice, d.TokenPrice)
	fill(&p.SealGraceNonces, d.SealGraceNonces)
	fill(&p.SealGraceSeconds, d.SealGraceSeconds)
	fill(&p.ExecutionTimeoutSeconds, d.ExecutionTimeoutSeconds)
	fill32(&p.ProtocolVersion, d.ProtocolVersion)
	fill32(&p.SettlementWindowEpochs, d.SettlementWindowEpochs)
	fill32(&p.ExpiryEpochs, d.ExpiryEpochs)
	fill32(&p.ExpiryBatch, d.ExpiryBatch)
	if p.SettlementChallengeBlocks == 0 {
		p.SettlementChallengeBlocks = d.SettlementChallengeBlocks
	}
	if p.CreationFee == 0 && p.FeePerNonce == 0 && p.ValidationRateBps == 0 && p.MaxMissedRatioBps == 0 && p.MaxInvalidRatioBps == 0 {
		// All five unset: the previous version. (Each may legitimately be
		// 0 afterwards, so they are filled only together.)
		p.CreationFee, p.FeePerNonce, p.ValidationRateBps = d.CreationFee, d.FeePerNonce, d.ValidationRateBps
		p.MaxMissedRatioBps, p.MaxInvalidRatioBps = d.MaxMissedRatioBps, d.MaxInvalidRatioBps
	}
	if p.ApprovedVersions == nil {
		p.ApprovedVersions = []devshardtypes.ApprovedVersion{}
	}
	return p
}
