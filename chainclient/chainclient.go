// Package chainclient is how hosts and gateways talk to the chain. It reads
// epochs, warm-key grants, escrows and participants over gRPC, and new
// blocks over CometBFT's websocket, reconnecting when the node goes away;
// given the account's key it also sends the account's txs (escrows,
// settlements, reward claims) and tells why the chain refused one by the
// tx's code.
package chainclient

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"cosmossdk.io/core/address"
	rpchttp "github.com/cometbft/cometbft/rpc/client/http"
	coretypes "github.com/cometbft/cometbft/rpc/core/types"
	cmttypes "github.com/cometbft/cometbft/types"
	addresscodec "github.com/cosmos/cosmos-sdk/codec/address"
	"github.com/cosmos/cosmos-sdk/crypto/keys/secp256k1"
	sdk "github.com/cosmos/cosmos-sdk/types"
	txtypes "github.com/cosmos/cosmos-sdk/types/tx"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/devshard/devshard/chaincfg"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/signing"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// Client reads one chain node and, with a key, sends to it.
type Client struct {
	conn   *grpc.ClientConn
	query  devshardtypes.QueryClient
	bank   banktypes.QueryClient
	txs    txtypes.ServiceClient
	rpc    string
	addrs  address.Codec
	log    *slog.Logger
	grants *grantCache

	key     *secp256k1.PrivKey // nil: read-only
	account sdk.AccAddress
	chainID string // "" until the first send asks the node

	senderMu sync.Mutex
	sender   *Sender // made at the first send

	epochQueries atomic.Int64 // CurrentEpoch queries sent, read by tests
}

// Config names the node to talk to and, to send, the account's key.
type Config struct {
	// GRPC is the node's gRPC address, host:port.
	GRPC string
	// RPC is CometBFT's RPC, e.g. http://127.0.0.1:26657 or tcp://…
	RPC string
	// GrantTTL is how long a warm-key answer is cached (default 30s).
	GrantTTL time.Duration
	Logger   *slog.Logger
	// Key is the account's own key, which signs the txs the client sends
	// and names the account whose balance it reads. Nil: read-only. A warm
	// key cannot be used: it may sign sessions, not move coins.
	Key *signing.PrivKey
	// ChainID is the chain txs are signed for; empty means ask the node's
	// CometBFT RPC at the first send.
	ChainID string
}

// Dial connects to the node's gRPC endpoint. The connection is lazy: a node
// that is down makes calls fail, not Dial.
func Dial(cfg Config) (*Client, error) {
	if cfg.GRPC == "" {
		return nil, fmt.Errorf("chain client: a gRPC address is required")
	}
	conn, err := grpc.NewClient(cfg.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("chain client: gRPC %s: %w", cfg.GRPC, err)
	}
	if cfg.GrantTTL <= 0 {
		cfg.GrantTTL = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	chaincfg.SetAddressPrefixes()
	c := &Client{
		conn:    conn,
		query:   devshardtypes.NewQueryClient(conn),
		rpc:     cfg.RPC,
		bank:    banktypes.NewQueryClient(conn),
		txs:     txtypes.NewServiceClient(conn),
		addrs:   addresscodec.NewBech32Codec(chaincfg.AccountAddressPrefix),
		log:     cfg.Logger,
		chainID: cfg.ChainID,
	}
	if cfg.Key != nil {
		c.key = &secp256k1.PrivKey{Key: cfg.Key.Bytes()}
		c.account = sdk.AccAddress(c.key.PubKey().Address())
	}
	c.grants = &grantCache{ttl: cfg.GrantTTL, entries: map[grantKey]grantEntry{}, lookup: c.mayActFor}
	return c, nil
}

// Close releases the gRPC connection.
func (c *Client) Close() error { return c.conn.Close() }

// Conn is the gRPC connection, for module query clients.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// CurrentEpoch is the epoch whose window holds the latest block.
func (c *Client) CurrentEpoch(ctx context.Context) (uint64, error) {
	e, err := c.currentEpoch(ctx)
	if err != nil {
		return 0, err
	}
	return e.Id, nil
}

// Epoch is the current epoch and its state.
func (c *Client) Epoch(ctx context.Context) (uint64, devshardtypes.EpochState, error) {
	e, err := c.currentEpoch(ctx)
	if err != nil {
		return 0, 0, err
	}
	return e.Id, e.State, nil
}

func (c *Client) currentEpoch(ctx context.Context) (*devshardtypes.Epoch, error) {
	c.epochQueries.Add(1)
	resp, err := c.query.CurrentEpoch(ctx, &devshardtypes.QueryCurrentEpochRequest{})
	if err != nil {
		return nil, fmt.Errorf("query current epoch: %w", err)
	}
	return &resp.Epoch, nil
}

// Address renders an account address in the chain's bech32 form.
func (c *Client) Address(a signing.Address) string {
	s, err := c.addrs.BytesToString(a[:])
	if err != nil {
		return a.String()
	}
	return s
}

func (c *Client) mayActFor(ctx context.Context, holder, signer signing.Address, kind session.Kind) (bool, error) {
	resp, err := c.query.MayActFor(ctx, &devshardtypes.QueryMayActForRequest{Holder: c.Address(holder), Signer: c.Address(signer), Kind: string(kind)})
	if err != nil {
		return false, err
	}
	return resp.Allowed, nil
}

// Authorizer answers the protocol's warm-key question from the chain's
// x/authz grants, cached for GrantTTL. A chain that cannot be asked answers
// no: a signature is refused rather than accepted on a guess.
func (c *Client) Authorizer() session.Authorizer { return c.grants }

type grantKey struct {
	holder, signer signing.Address
	kind           session.Kind
}

type grantEntry struct {
	allowed bool
	at      time.Time
}

type grantCache struct {
	ttl     time.Duration
	lookup  func(ctx context.Context, holder, signer signing.Address, kind session.Kind) (bool, error)
	mu      sync.Mutex
	entries map[grantKey]grantEntry
	now     func() time.Time
}

func (g *grantCache) clock() time.Time {
	if g.now != nil {
		return g.now()
	}
	return time.Now()
}

// MayActFor implements session.Authorizer.
func (g *grantCache) MayActFor(holder, signer signing.Address, kind session.Kind) bool {
	k := grantKey{holder, signer, kind}
	now := g.clock()
	g.mu.Lock()
	e, ok := g.entries[k]
	g.mu.Unlock()
	if ok && now.Sub(e.at) < g.ttl {
		return e.allowed
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	allowed, err := g.lookup(ctx, holder, signer, kind)
	if err != nil {
		return false // not cached: the next call asks again
	}
	g.mu.Lock()
	g.entries[k] = grantEntry{allowed: allowed, at: now}
	g.mu.Unlock()
	return allowed
}

// FollowEpochs calls fn with the current epoch now and whenever it changes,
// until ctx ends. It learns of new blocks from CometBFT's websocket and,
// while that is down, polls every poll interval; it reconnects on its own.
// A block below the current epoch's end height cannot have changed the
// epoch, so it costs no query: the chain is asked about once per epoch,
// and on every poll.
func (c *Client) FollowEpochs(ctx context.Context, poll time.Duration, fn func(epoch uint64)) error {
	if poll <= 0 {
		poll = 5 * time.Second
	}
	var last uint64
	var ends int64 // the current epoch's end height; 0 while unknown
	// check asks the chain for the current epoch, unless height (0:
	// unknown) is below the end of the epoch last seen.
	check := func(height int64) {
		if height > 0 && height < ends {
			return
		}
		e, err := c.currentEpoch(ctx)
		if err != nil {
			c.log.Warn("epoch check failed", "err", err)
			return
		}
		ends = e.EndHeight
		if e.Id != last {
			last = e.Id
			fn(e.Id)
		}
	}
	check(0)
	for ctx.Err() == nil {
		blocks, stop, err := c.subscribeBlocks(ctx)
		if err != nil {
			c.log.Warn("block subscription failed; polling", "rpc", c.rpc, "err", err)
		}
		ticker := time.NewTicker(poll)
	loop:
		for {
			select {
			case <-ctx.Done():
				break loop
			case ev, ok := <-blocks:
				if !ok {
					break loop // the websocket closed: resubscribe
				}
				var height int64
				if h, ok := ev.Data.(cmttypes.EventDataNewBlockHeader); ok {
					height = h.Header.Height
				}
				check(height)
			case <-ticker.C:
				check(0)
				if blocks == nil {
					break loop // try to subscribe again
				}
			}
		}
		ticker.Stop()
		if stop != nil {
			stop()
		}
	}
	return ctx.Err()
}

// subscribeBlocks opens a websocket subscription to new block headers: the
// header is all a block's arrival needs to say, and a whole block's event
// (its txs and results) costs every follower a large decode per block. A
// nil channel (with an error) means polling only.
func (c *Client) subscribeBlocks(ctx context.Context) (<-chan coretypes.ResultEvent, func(), error) {
	if c.rpc == "" {
		return nil, nil, fmt.Errorf("no CometBFT RPC configured")
	}
	ws, err := rpchttp.New(c.rpc, "/websocket")
	if err != nil {
		return nil, nil, err
	}
	if err := ws.Start(); err != nil {
		return nil, nil, err
	}
	ch, err := ws.Subscribe(ctx, "devshard-chainclient", cmttypes.EventQueryNewBlockHeader.String(), 16)
	if err != nil {
		_ = ws.Stop()
		return nil, nil, err
	}
	return ch, func() {
		_ = ws.UnsubscribeAll(context.Background(), "devshard-chainclient")
		_ = ws.Stop()
	}, nil
}

// Escrow returns an escrow as the chain holds it. A missing escrow is an
// error wrapping ErrNoEscrow.
func (c *Client) Escrow(ctx context.Context, id uint64) (*devshardtypes.Escrow, error) {
	resp, err := c.query.Escrow(ctx, &devshardtypes.QueryEscrowRequest{Id: id})
	if err != nil {
		if status.Code(err) == codes.NotFound {
			return nil, fmt.Errorf("%w: %d", ErrNoEscrow, id)
		}
		return nil, fmt.Errorf("query escrow %d: %w", id, err)
	}
	return &resp.Escrow, nil
}

// ChainID asks the node's CometBFT RPC which chain it runs, for signing txs.
func (c *Client) ChainID(ctx context.Context) (string, error) {
	if c.rpc == "" {
		return "", fmt.Errorf("chain id: no CometBFT RPC configured")
	}
	cli, err := rpchttp.New(c.rpc, "/websocket")
	if err != nil {
		return "", err
	}
	st, err := cli.Status(ctx)
	if err != nil {
		return "", fmt.Errorf("chain id: status of %s: %w", c.rpc, err)
	}
	return st.NodeInfo.Network, nil
}

// Unclaimed lists the performance summaries of account that can be claimed
// now: in CLAIMABLE epochs, not punished, not yet claimed, with a reward.
func (c *Client) Unclaimed(ctx context.Context, account signing.Address) ([]devshardtypes.EpochPerformanceSummary, error) {
	epochs, err := c.query.EpochsByState(ctx, &devshardtypes.QueryEpochsByStateRequest{State: devshardtypes.EpochClaimable})
	if err != nil {
		return nil, fmt.Errorf("query claimable epochs: %w", err)
	}
	var out []devshardtypes.EpochPerformanceSummary
	for _, e := range epochs.Epochs {
		res, err := c.query.Summary(ctx, &devshardtypes.QuerySummaryRequest{EpochId: e.Id, Address: c.Address(account)})
		if status.Code(err) == codes.NotFound {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("query summary of epoch %d: %w", e.Id, err)
		}
		s := res.Summary
		if !s.Claimed && !s.Punished && s.Rewarded > 0 {
			out = append(out, s)
		}
	}
	return out, nil
}

// Participant returns a registered participant, with the URL it serves at.
func (c *Client) Participant(ctx context.Context, a signing.Address) (*devshardtypes.Participant, error) {
	resp, err := c.query.Participant(ctx, &devshardtypes.QueryParticipantRequest{Address: c.Address(a)})
	if err != nil {
		return nil, fmt.Errorf("query participant %s: %w", c.Address(a), err)
	}
	return &resp.Participant, nil
}
