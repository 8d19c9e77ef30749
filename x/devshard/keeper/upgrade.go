package keeper

import (
	"context"
	"fmt"

	"cosmossdk.io/collections"

	"github.com/devshard/devshard/x/devshard/types"
)

// RecordUpgrade notes the height of the upgrade x/upgrade applied last, once.
// It runs in the module's end blocker, every block: an upgrade is applied in
// the pre-blocker of its height, so its height is recorded in that very
// block, before the scheduler runs any accounting due in it.
//
// The module keeps every height rather than asking x/upgrade at accounting
// because x/upgrade answers only for the last upgrade: a fix-up upgrade
// between an epoch's end and its accounting would hide the one that
// disrupted the epoch.
func (k Keeper) RecordUpgrade(ctx context.Context) error {
	_, height, err := k.upgrade.GetLastCompletedUpgrade(ctx)
	if err != nil {
		return fmt.Errorf("reading the last completed upgrade: %w", err)
	}
	if height <= 0 {
		return nil // none applied yet
	}
	if seen, err := k.UpgradeHeights.Has(ctx, height); err != nil || seen {
		return err
	}
	return k.UpgradeHeights.Set(ctx, height)
}

// upgradeProtection returns the height of the upgrade whose protection
// window epoch's span [start_height, accounting_height) meets, if one does.
// Only the last upgrade before the span's end is looked at: an earlier
// upgrade's window ends no later than it. Upgrades recorded at or after
// accounting_height are outside the span, so a retried accounting decides
// the same.
func (k Keeper) upgradeProtection(ctx context.Context, epoch types.Epoch, window uint64) (int64, bool, error) {
	if window == 0 {
		return 0, false, nil
	}
	it, err := k.UpgradeHeights.Iterate(ctx, new(collections.Range[int64]).EndExclusive(epoch.AccountingHeight).Descending())
	if err != nil {
		return 0, false, err
	}
	defer it.Close()
	if !it.Valid() {
		return 0, false, nil
	}
	upgrade, err := it.Key()
	if err != nil {
		return 0, false, err
	}
	return upgrade, types.UpgradeProtected(upgrade, window, epoch.StartHeight, epoch.AccountingHeight), nil
}
