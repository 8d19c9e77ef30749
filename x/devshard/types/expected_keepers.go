package types

import (
	"context"
	"time"

	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/cosmos/cosmos-sdk/x/authz"

	schedulertypes "github.com/devshard/devshard/x/scheduler/types"
)

// BankKeeper moves collateral between participants and the module account.
type BankKeeper interface {
	SendCoinsFromAccountToModule(ctx context.Context, sender sdk.AccAddress, module string, amt sdk.Coins) error
	SendCoinsFromModuleToAccount(ctx context.Context, module string, recipient sdk.AccAddress, amt sdk.Coins) error
	GetBalance(ctx context.Context, addr sdk.AccAddress, denom string) sdk.Coin
}

// AuthzKeeper answers whether a grant exists; it backs warm keys.
type AuthzKeeper interface {
	GetAuthorization(ctx context.Context, grantee, granter sdk.AccAddress, msgType string) (authz.Authorization, *time.Time)
}

// SchedulerKeeper schedules the tasks that move epochs through their states.
type SchedulerKeeper interface {
	Schedule(ctx context.Context, tasks ...schedulertypes.NewTask) ([]uint64, error)
	Unschedule(ctx context.Context, ids ...uint64) error
}

// DistributionKeeper takes coins into the community pool: unclaimed rewards
// at an epoch's close and the work coins of punished participants.
type DistributionKeeper interface {
	FundCommunityPool(ctx context.Context, amount sdk.Coins, depositor sdk.AccAddress) error
}

// UpgradeKeeper tells which software upgrade x/upgrade applied last. Upgrade
// protection reads it once a block.
type UpgradeKeeper interface {
	// GetLastCompletedUpgrade returns the name and height of the upgrade
	// applied last, or ("", 0, nil) when none has been.
	GetLastCompletedUpgrade(ctx context.Context) (string, int64, error)
}
