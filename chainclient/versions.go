package chainclient

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cosmos/cosmos-sdk/client/grpc/cmtservice"
	"github.com/cosmos/cosmos-sdk/types/query"

	"github.com/devshard/devshard/versiond"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// ErrCatchingUp is a node still syncing blocks (CometBFT's catching_up):
// what it answers is the state of a block the chain has long passed.
var ErrCatchingUp = errors.New("the chain node is still catching up (syncing blocks), so its state may be old")

// ApprovedVersions is the runtime versions the chain approves, x/devshard's
// approved_versions param, in the chain's order: governance appends, so
// the last one is the newest.
func (c *Client) ApprovedVersions(ctx context.Context) ([]versiond.Version, error) {
	resp, err := c.query.Params(ctx, &devshardtypes.QueryParamsRequest{})
	if err != nil {
		return nil, fmt.Errorf("query devshard params: %w", err)
	}
	out := make([]versiond.Version, 0, len(resp.Params.ApprovedVersions))
	for _, v := range resp.Params.ApprovedVersions {
		out = append(out, versiond.Version{Name: v.Name, URL: v.Url, SHA256: v.Sha256})
	}
	return out, nil
}

// CandidateURLs is the registered URL, without a trailing slash, of every
// host a new escrow may be grouped with: the current epoch's members with
// positive weight whose participant is ACTIVE, as the chain draws groups.
// A host registered once is listed once, however many members share a URL.
func (c *Client) CandidateURLs(ctx context.Context) ([]string, error) {
	epoch, err := c.currentEpoch(ctx)
	if err != nil {
		return nil, err
	}
	weighty := map[string]bool{}
	for page := []byte(nil); ; {
		resp, err := c.query.EpochMembers(ctx, &devshardtypes.QueryEpochMembersRequest{EpochId: epoch.Id, Pagination: &query.PageRequest{Key: page}})
		if err != nil {
			return nil, fmt.Errorf("query the members of epoch %d: %w", epoch.Id, err)
		}
		for _, m := range resp.Members {
			if m.Weight.IsPositive() {
				weighty[m.Address] = true
			}
		}
		if resp.Pagination == nil || len(resp.Pagination.NextKey) == 0 {
			break
		}
		page = resp.Pagination.NextKey
	}
	var urls []string
	seen := map[string]bool{}
	for page := []byte(nil); ; {
		resp, err := c.query.Participants(ctx, &devshardtypes.QueryParticipantsRequest{Pagination: &query.PageRequest{Key: page}})
		if err != nil {
			return nil, fmt.Errorf("query participants: %w", err)
		}
		for _, p := range resp.Participants {
			u := strings.TrimRight(p.Url, "/")
			if weighty[p.Address] && p.Status == devshardtypes.ParticipantActive && !seen[u] {
				seen[u] = true
				urls = append(urls, u)
			}
		}
		if resp.Pagination == nil || len(resp.Pagination.NextKey) == 0 {
			break
		}
		page = resp.Pagination.NextKey
	}
	return urls, nil
}

// CatchingUp says whether the node in use is still syncing blocks. It is
// asked over the gRPC connection every read goes over, so it speaks of the
// node that answers those reads (the RPC endpoints may be other nodes).
func (c *Client) CatchingUp(ctx context.Context) (bool, error) {
	resp, err := c.blocks.GetSyncing(ctx, &cmtservice.GetSyncingRequest{})
	if err != nil {
		return false, fmt.Errorf("query the node's sync status: %w", err)
	}
	return resp.Syncing, nil
}

// InSync is nil when the node in use has caught up with the chain: it is
// not syncing blocks (else ErrCatchingUp) and its latest block is no more
// than stallAfter old (else a *StalledError; 0 does not check). A node
// whose latest block is old either lags or serves a chain that makes no
// blocks; from the node alone the two look the same, and in both its
// answers may be old.
func (c *Client) InSync(ctx context.Context, stallAfter time.Duration) error {
	syncing, err := c.CatchingUp(ctx)
	if err != nil {
		return err
	}
	if syncing {
		return ErrCatchingUp
	}
	if stallAfter <= 0 {
		return nil
	}
	height, at, err := c.LatestBlock(ctx)
	if err != nil {
		return err
	}
	return Stalled(height, at, time.Now(), stallAfter)
}

// A Client is the chain a versiond.ChainSource follows.
var _ versiond.Chain = (*Client)(nil)
