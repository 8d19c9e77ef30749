package keeper

import (
	"context"

	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/cosmos/cosmos-sdk/x/authz"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/x/devshard/types"
)

// MayActFor reports whether signer may sign session messages of kind for
// holder: signer is holder, or holder granted signer a generic x/authz
// authorization of MsgSignSession that has not expired. This is how a
// participant's cold account lets an operational (warm) key sign for it.
func (k Keeper) MayActFor(ctx context.Context, holder, signer sdk.AccAddress, kind session.Kind) bool {
	if holder.Equals(signer) {
		return true
	}
	typeURL, ok := types.GrantTypeURL(kind)
	if !ok {
		return false
	}
	grant, _ := k.authz.GetAuthorization(ctx, signer, holder, typeURL)
	_, ok = grant.(*authz.GenericAuthorization)
	return ok
}

// Authorizer binds MayActFor to the state in ctx, for the session package's
// signature checks (settlement verifies host signatures with it).
func (k Keeper) Authorizer(ctx context.Context) session.Authorizer {
	return authorizer{k: k, ctx: ctx}
}

type authorizer struct {
	k   Keeper
	ctx context.Context
}

func (a authorizer) MayActFor(holder, signer signing.Address, kind session.Kind) bool {
	return a.k.MayActFor(a.ctx, holder[:], signer[:], kind)
}
