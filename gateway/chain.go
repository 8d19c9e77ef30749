package gateway

import (
	"context"
	"time"

	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/versiond"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// Chain is what the gateway needs of the chain: *chainclient.Client over a
// node in production, a fake in memory in tests.
type Chain interface {
	// Epoch is the chain's current epoch and its state.
	Epoch(ctx context.Context) (id uint64, state devshardtypes.EpochState, err error)
	// CreateEscrowUnder locks amount from the gateway's account for a
	// session under runtime version runtimeVersion and returns the new
	// escrow's snapshot. An account that cannot lock amount is an error
	// wrapping ErrFunds.
	CreateEscrowUnder(ctx context.Context, amount uint64, runtimeVersion string) (*sessionpb.EscrowSnapshot, error)
	// ApprovedVersions is the runtime versions the chain approves, oldest
	// first.
	ApprovedVersions(ctx context.Context) ([]versiond.Version, error)
	// CandidateURLs is the registered URL of every host a new escrow may
	// be grouped with.
	CandidateURLs(ctx context.Context) ([]string, error)
	// SettleEscrow sends MsgSettleEscrow and returns its tx hash. An escrow
	// the chain already shows as settled is success, with the hash of the
	// tx that settled it when the node can find it; one that expired is an
	// error wrapping ErrExpired.
	SettleEscrow(ctx context.Context, m *sessionpb.Settlement) (string, error)
	// Closed reports whether escrow id is no longer open on chain: true
	// once it is settled, with the hash of the tx that settled it ("" if
	// the node cannot say); an error wrapping ErrExpired once it expired.
	// The gateway asks before and while it settles, because the hosts
	// settle an escrow themselves once its deadline has passed.
	Closed(ctx context.Context, id uint64) (bool, string, error)
	// HostURL is the API address a participant registered.
	HostURL(ctx context.Context, addr signing.Address) (string, error)
	// Balance is the gateway account's spendable balance.
	Balance(ctx context.Context) (uint64, error)
	// LatestBlock is the height and time of the chain's latest block. One
	// older than Config.ChainStallAfter means the chain is making no
	// blocks: no tx can land, and no escrow can be opened.
	LatestBlock(ctx context.Context) (height int64, at time.Time, err error)
}

var _ Chain = (*chainclient.Client)(nil)

// The chain's answers the gateway tells apart; they are chainclient's, so
// a refusal from the chain and the gateway's own check match alike.
var (
	// ErrFunds means the gateway's account cannot lock another escrow.
	ErrFunds = chainclient.ErrInsufficientFunds
	// ErrExpired means the escrow expired on chain before it was settled.
	ErrExpired = chainclient.ErrExpired
	// ErrNoEpoch means no epoch is ACTIVE, so no escrow can be created.
	ErrNoEpoch = chainclient.ErrNoEpoch
	// ErrNotIncluded means a tx was sent but no block included it in
	// time: the node that took it went away, or the chain makes no blocks.
	ErrNotIncluded = chainclient.ErrNotIncluded
)
