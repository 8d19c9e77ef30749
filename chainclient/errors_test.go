package chainclient

import (
	"errors"
	"fmt"
	"testing"

	sdkerrors "github.com/cosmos/cosmos-sdk/types/errors"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// A refused tx means what its (codespace, code) says, whatever its log.
func TestTxErrorMeansItsCode(t *testing.T) {
	t.Parallel()
	root := devshardtypes.SettlementRejected(&session.SettlementError{Reason: session.ReasonRoot}, "").(*devshardtypes.RejectedSettlement)
	quorum := devshardtypes.SettlementRejected(&session.SettlementError{Reason: session.ReasonQuorum}, "").(*devshardtypes.RejectedSettlement)
	for _, c := range []struct {
		name      string
		err       *TxError
		is, isNot []error
	}{
		{
			name:  "the bank's insufficient funds",
			err:   &TxError{Codespace: sdkerrors.ErrInsufficientFunds.Codespace(), Code: sdkerrors.ErrInsufficientFunds.ABCICode(), Log: "spendable balance 3ushard is smaller than 5ushard"},
			is:    []error{ErrInsufficientFunds},
			isNot: []error{ErrNoEpoch, session.ReasonFunds},
		},
		{
			name:  "a log that says insufficient funds under another code",
			err:   &TxError{Codespace: sdkerrors.ErrInvalidRequest.Codespace(), Code: sdkerrors.ErrInvalidRequest.ABCICode(), Log: "insufficient funds"},
			is:    []error{sdkerrors.ErrInvalidRequest},
			isNot: []error{ErrInsufficientFunds},
		},
		{
			name:  "an epoch that is not active",
			err:   &TxError{Hash: "AB", Codespace: devshardtypes.ErrEpochNotActive.Codespace(), Code: devshardtypes.ErrEpochNotActive.ABCICode()},
			is:    []error{ErrNoEpoch},
			isNot: []error{ErrInsufficientFunds, devshardtypes.ErrSettlement},
		},
		{
			name:  "a root mismatch",
			err:   &TxError{Codespace: root.Codespace(), Code: root.ABCICode(), Log: "settlement of escrow 4 rejected"},
			is:    []error{session.ReasonRoot, root.Code},
			isNot: []error{session.ReasonQuorum, ErrInsufficientFunds},
		},
		{
			name:  "a quorum failure",
			err:   &TxError{Hash: "CD", Included: true, Codespace: quorum.Codespace(), Code: quorum.ABCICode()},
			is:    []error{session.ReasonQuorum},
			isNot: []error{session.ReasonRoot},
		},
		{
			name:  "a code this build does not know",
			err:   &TxError{Codespace: "othermodule", Code: 77, Log: "insufficient funds"},
			isNot: []error{ErrInsufficientFunds, ErrNoEpoch, session.ReasonRoot},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			wrapped := fmt.Errorf("settle escrow 4: %w", c.err) // as the client's calls return it
			for _, want := range c.is {
				require.ErrorIs(t, wrapped, want)
			}
			for _, not := range c.isNot {
				require.False(t, errors.Is(wrapped, not), "%v must not match %v", c.err, not)
			}
			var te *TxError
			require.ErrorAs(t, wrapped, &te)
			require.Equal(t, c.err.Code, te.Code)
		})
	}
}

// The message says where the tx was refused and with which code.
func TestTxErrorText(t *testing.T) {
	t.Parallel()
	require.Equal(t, "the chain refuses the tx (sdk code 5): no coins", (&TxError{Codespace: "sdk", Code: 5, Log: "no coins"}).Error())
	require.Equal(t, "tx AB rejected before inclusion (sdk code 5): no coins", (&TxError{Hash: "AB", Codespace: "sdk", Code: 5, Log: "no coins"}).Error())
	require.Equal(t, "tx AB failed in its block (sdk code 5): no coins", (&TxError{Hash: "AB", Included: true, Codespace: "sdk", Code: 5, Log: "no coins"}).Error())
}
