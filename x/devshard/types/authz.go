package types

import (
	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/session"
)

// GrantTypeURL is the msg type URL a cold account grants (as an x/authz
// generic authorization) to let a warm key sign session messages of kind for
// it. Every session kind maps to MsgSignSession today; ok is false for a kind
// no grant can cover.
func GrantTypeURL(kind session.Kind) (url string, ok bool) {
	switch kind {
	case session.KindDiff, session.KindConfirm, session.KindFinish,
		session.KindValidation, session.KindTimeout, session.KindState:
		return sdk.MsgTypeURL(&MsgSignSession{}), true
	}
	return "", false
}
