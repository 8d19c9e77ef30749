package host

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// Chain is what the host daemon reads from the chain: the escrows it serves
// and settles, the epochs it prunes storage and claims rewards by, the warm
// keys members sign with, where its peers serve, and its account's rewards.
// *chainclient.Client is the production one, and each method has its
// signature. Every method is called from several goroutines at once.
type Chain interface {
	// ChainID is the id of the chain the node runs; signed requests and
	// txs name it.
	ChainID(ctx context.Context) (string, error)
	// CurrentEpoch is the epoch whose window holds the latest block.
	CurrentEpoch(ctx context.Context) (uint64, error)
	// FollowEpochs calls fn with the current epoch once it learns it, then
	// at every change, until ctx ends; it returns ctx's error. poll bounds
	// how long a change goes unnoticed while the node pushes no blocks.
	FollowEpochs(ctx context.Context, poll time.Duration, fn func(epoch uint64)) error
	// Escrow is an escrow as the chain holds it. One the chain does not
	// know is an error wrapping chainclient.ErrNoEscrow.
	Escrow(ctx context.Context, id uint64) (*devshardtypes.Escrow, error)
	// NextEscrowID is the id the chain gives the next escrow it creates;
	// an escrow the node does not know but whose id is this or just past
	// it may be in a block the node has not applied yet.
	NextEscrowID(ctx context.Context) (uint64, error)
	// Participant is a registered participant, with the URL its host
	// registered.
	Participant(ctx context.Context, a signing.Address) (*devshardtypes.Participant, error)
	// Unclaimed lists account's epoch summaries whose rewards can be
	// claimed now.
	Unclaimed(ctx context.Context, account signing.Address) ([]devshardtypes.EpochPerformanceSummary, error)
	// LatestBlock is the height and time of the chain's latest block; one
	// older than chain.stall_after means the chain makes no blocks.
	LatestBlock(ctx context.Context) (height int64, at time.Time, err error)
	// Authorizer says which warm keys may sign for a member.
	Authorizer() session.Authorizer
	// Address renders an account the way the chain writes it (bech32).
	Address(a signing.Address) string
}

// ChainSender sends the host account's own txs, signed with the account's
// key (AccountKey). Each call returns once a block has included the tx, or
// with the error that kept it out; the daemon logs errors and tries again
// in a later round.
type ChainSender interface {
	// SettleEscrow sends MsgSettleEscrow carrying m from the account.
	SettleEscrow(ctx context.Context, m *sessionpb.Settlement) (txHash string, err error)
	// ClaimRewards sends MsgClaimRewards for the account's summary of
	// epoch.
	ClaimRewards(ctx context.Context, epoch uint64) (txHash string, err error)
}

// AccountKey is the key that may send account's txs: key itself when it is
// a key held in memory whose address is account. A warm key signs the
// account's sessions (its x/authz grants), not its txs, and a keyring key
// does not hand its bytes to the tx signer; with either, the host neither
// claims nor settles by itself, and the operator claims with the account's
// own key.
func AccountKey(key signing.Signer, account signing.Address) (*signing.PrivKey, bool) {
	k, ok := key.(*signing.PrivKey)
	if !ok || k.Address() != account {
		return nil, false
	}
	return k, true
}

// chainEscrows answers the engine's escrow questions from the chain.
type chainEscrows struct{ c Chain }

// EscrowSnapshot implements Escrows.
func (e chainEscrows) EscrowSnapshot(ctx context.Context, id uint64) (*sessionpb.EscrowSnapshot, error) {
	esc, err := e.c.Escrow(ctx, id)
	if errors.Is(err, chainclient.ErrNoEscrow) {
		return nil, fmt.Errorf("%w: the chain has no escrow %d", ErrUnknownEscrow, id)
	}
	if err != nil {
		return nil, err
	}
	snap := esc.Snapshot
	return &snap, nil
}

// NextEscrowID implements EscrowSeq.
func (e chainEscrows) NextEscrowID(ctx context.Context) (uint64, error) {
	return e.c.NextEscrowID(ctx)
}
