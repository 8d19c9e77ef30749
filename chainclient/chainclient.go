// Package chainclient is how hosts, gateways and versiond talk to the
// chain. It reads epochs, warm-key grants, escrows and the next escrow's
// id, participants, the approved runtime versions, the latest block and
// whether its node is in sync over gRPC, and new blocks over CometBFT's websocket; given the account's key it
// also sends the account's txs (escrows, settlements, reward claims) and
// tells why the chain refused one by the tx's code.
//
// A chain is a network of validators, so the client may be given several
// nodes. Every gRPC call goes over one connection to the first node that
// answers (gRPC's pick-first policy), and to the next once that one stops:
// a call in flight when its node dies fails, the next goes elsewhere. The
// block subscription and the chain id are asked of the RPC endpoints in
// turn, and a subscription that drops is made again on the next one.
package chainclient

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"cosmossdk.io/collections"
	"cosmossdk.io/core/address"
	cmtjson "github.com/cometbft/cometbft/libs/json"
	rpchttp "github.com/cometbft/cometbft/rpc/client/http"
	coretypes "github.com/cometbft/cometbft/rpc/core/types"
	jsonrpcclient "github.com/cometbft/cometbft/rpc/jsonrpc/client"
	cmttypes "github.com/cometbft/cometbft/types"
	"github.com/cosmos/cosmos-sdk/client/grpc/cmtservice"
	addresscodec "github.com/cosmos/cosmos-sdk/codec/address"
	"github.com/cosmos/cosmos-sdk/crypto/keys/secp256k1"
	sdk "github.com/cosmos/cosmos-sdk/types"
	txtypes "github.com/cosmos/cosmos-sdk/types/tx"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/devshard/devshard/chaincfg"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/signing"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// Client reads the chain through its nodes and, with a key, sends to it.
type Client struct {
	conn   *grpc.ClientConn
	query  devshardtypes.QueryClient
	bank   banktypes.QueryClient
	txs    txtypes.ServiceClient
	blocks cmtservice.ServiceClient
	rpc    []string // CometBFT RPC endpoints, in the order they are tried
	addrs  address.Codec
	log    *slog.Logger
	grants *grantCache

	key     *secp256k1.PrivKey // nil: read-only
	account sdk.AccAddress
	chainID string // "" until the first send asks the node

	senderMu sync.Mutex
	sender   *Sender // made at the first send
	settles  settleQueue

	// subscriptions counts block subscriptions made; the next one starts at
	// the RPC endpoint after the last one's, so a dropped one moves on.
	subscriptions atomic.Uint64
	epochQueries  atomic.Int64 // CurrentEpoch queries sent, read by tests
}

// Config names the nodes to talk to and, to send, the account's key.
type Config struct {
	// GRPC is the nodes' gRPC addresses, host:port, comma-separated, in
	// the order they are tried (ParseGRPC).
	GRPC string
	// RPC is the nodes' CometBFT RPC endpoints, e.g.
	// http://127.0.0.1:26657 or tcp://…, comma-separated, in the order they
	// are tried (ParseRPC); empty: none, so no block subscription (epochs
	// are polled) and no chain id asked.
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

// Dial connects to the nodes' gRPC endpoints. The connection is lazy: a
// node that is down makes calls fail, not Dial. A malformed endpoint is an
// error naming it.
func Dial(cfg Config) (*Client, error) {
	grpcs, err := ParseGRPC(cfg.GRPC)
	if err != nil {
		return nil, fmt.Errorf("chain client: %w", err)
	}
	rpcs, err := ParseRPC(cfg.RPC)
	if err != nil {
		return nil, fmt.Errorf("chain client: %w", err)
	}
	conn, err := dialGRPC(grpcs)
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
		rpc:     rpcs,
		bank:    banktypes.NewQueryClient(conn),
		txs:     txtypes.NewServiceClient(conn),
		blocks:  cmtservice.NewServiceClient(conn),
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

// dialGRPC makes one connection over addrs with gRPC's pick-first policy
// (its default): it connects to the first address that answers and, once
// that node stops, to the first that answers again. The resolver is this
// connection's own, so clients never share addresses.
func dialGRPC(addrs []string) (*grpc.ClientConn, error) {
	r := manual.NewBuilderWithScheme("chainclient")
	state := resolver.State{}
	for _, a := range addrs {
		state.Addresses = append(state.Addresses, resolver.Address{Addr: a})
	}
	r.InitialState(state)
	return grpc.NewClient(r.Scheme()+":///chain", grpc.WithResolvers(r), grpc.WithTransportCredentials(insecure.NewCredentials()))
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
// until ctx ends. It learns of new blocks through FollowBlocks.
// A block below the current epoch's end height cannot have changed the
// epoch, so it costs no query: the chain is asked about once per epoch,
// and on every poll.
func (c *Client) FollowEpochs(ctx context.Context, poll time.Duration, fn func(epoch uint64)) error {
	var last uint64
	var ends int64 // the current epoch's end height; 0 while unknown
	return c.FollowBlocks(ctx, poll, func(height int64) {
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
	})
}

// FollowBlocks calls fn once now, at every new block with its height, and
// at every poll interval (default 5s) with height 0 (unknown), until ctx
// ends; fn runs on one goroutine. It learns of new blocks from CometBFT's
// websocket and, while that is down, only polls; a subscription that drops
// is made again on the next RPC endpoint. A follower whose fn falls behind
// misses headers, not polls, so fn must not rely on seeing every height.
func (c *Client) FollowBlocks(ctx context.Context, poll time.Duration, fn func(height int64)) error {
	if poll <= 0 {
		poll = 5 * time.Second
	}
	fn(0)
	for ctx.Err() == nil {
		blocks, stop, err := c.subscribeBlocks(ctx)
		if err != nil {
			c.log.Warn("block subscription failed; polling", "err", err)
		}
		made := time.Now()
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
				fn(height)
			case <-ticker.C:
				fn(0)
				if blocks == nil {
					break loop // try to subscribe again
				}
			}
		}
		ticker.Stop()
		if stop != nil {
			stop()
			if ctx.Err() == nil {
				c.log.Info("block subscription dropped; subscribing on the next RPC endpoint")
			}
		}
		// A node that takes subscriptions and drops them at once is not
		// asked again at once.
		select {
		case <-ctx.Done():
		case <-time.After(time.Second - time.Since(made)):
		}
	}
	return ctx.Err()
}

// subscribeBlocks opens a websocket subscription to new block headers: the
// header is all a block's arrival needs to say, and a whole block's event
// (its txs and results) costs every follower a large decode per block. It
// tries the RPC endpoints in turn, from the one after the last
// subscription's, so a subscription that dropped is made again on the next
// node. A nil channel (with an error) means polling only.
func (c *Client) subscribeBlocks(ctx context.Context) (<-chan coretypes.ResultEvent, func(), error) {
	if len(c.rpc) == 0 {
		return nil, nil, fmt.Errorf("no CometBFT RPC configured")
	}
	var errs []string
	for range c.rpc {
		at := c.rpc[(c.subscriptions.Add(1)-1)%uint64(len(c.rpc))]
		ch, stop, err := subscribeAt(ctx, at)
		if err == nil {
			c.log.Debug("subscribed to new blocks", "rpc", at)
			return ch, stop, nil
		}
		errs = append(errs, fmt.Sprintf("%s: %v", at, err))
	}
	return nil, nil, fmt.Errorf("no CometBFT RPC endpoint took the block subscription (%s)", strings.Join(errs, "; "))
}

// The block subscription's websocket pings its node every wsPing, so that
// a node gone away is noticed within a ping or two even while the chain
// makes no blocks.
const (
	wsPing      = time.Second
	wsWriteWait = 5 * time.Second
)

// subscribeAt subscribes to new block headers at one RPC endpoint. The
// channel closes when the subscription drops: the connection broke and one
// redial failed, the node answered with an error, or a redial succeeded
// (the node no longer holds the subscription). CometBFT's own events
// client reconnects for minutes and never closes its channel, so a follower
// could not tell a dead node from a halted chain; this one tells.
func subscribeAt(ctx context.Context, remote string) (<-chan coretypes.ResultEvent, func(), error) {
	lost := make(chan struct{})
	var once sync.Once
	ws, err := jsonrpcclient.NewWS(remote, "/websocket",
		jsonrpcclient.MaxReconnectAttempts(0),
		jsonrpcclient.OnReconnect(func() { once.Do(func() { close(lost) }) }),
		jsonrpcclient.PingPeriod(wsPing), jsonrpcclient.WriteWait(wsWriteWait))
	if err != nil {
		return nil, nil, err
	}
	if err := ws.Start(); err != nil {
		return nil, nil, err
	}
	if err := ws.Subscribe(ctx, cmttypes.EventQueryNewBlockHeader.String()); err != nil {
		_ = ws.Stop()
		return nil, nil, err
	}
	out := make(chan coretypes.ResultEvent, 16)
	done := make(chan struct{})
	go func() {
		defer close(out)
		for {
			select {
			case resp, ok := <-ws.ResponsesCh:
				if !ok || resp.Error != nil {
					return
				}
				var ev coretypes.ResultEvent
				if err := cmtjson.Unmarshal(resp.Result, &ev); err != nil || ev.Query == "" {
					continue // the answer to the subscribe call itself
				}
				select {
				case out <- ev:
				default: // a slow follower misses a header, and polls
				}
			case <-lost:
				return
			case <-done:
				return
			}
		}
	}()
	return out, func() {
		close(done)
		_ = ws.Stop()
	}, nil
}

// LatestBlock is the height and time of the latest block the node in use
// has. A chain whose latest block grows old has stopped making blocks
// (Stalled says so in a sentence).
func (c *Client) LatestBlock(ctx context.Context) (int64, time.Time, error) {
	res, err := c.blocks.GetLatestBlock(ctx, &cmtservice.GetLatestBlockRequest{})
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("query latest block: %w", err)
	}
	if b := res.SdkBlock; b != nil {
		return b.Header.Height, b.Header.Time, nil
	}
	if b := res.Block; b != nil { // a node from before sdk_block
		return b.Header.Height, b.Header.Time, nil
	}
	return 0, time.Time{}, fmt.Errorf("query latest block: the node answered without a block")
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

// NextEscrowID is the id the chain gives the next escrow it creates, as
// the node in use knows it now. A host told of an escrow its node does not
// know tells by it one the gateway's node may have just created (its id at
// or just past this) from one no escrow has. No query of the module serves
// it, so it reads the module's escrow sequence from the node's store: the
// sequence holds the last id given, and ids start at 1.
func (c *Client) NextEscrowID(ctx context.Context) (uint64, error) {
	res, err := c.blocks.ABCIQuery(ctx, &cmtservice.ABCIQueryRequest{
		Path: "/store/" + devshardtypes.StoreKey + "/key", Data: devshardtypes.EscrowSeqKey.Bytes(),
	})
	if err != nil {
		return 0, fmt.Errorf("query the escrow sequence: %w", err)
	}
	if res.Code != 0 {
		return 0, fmt.Errorf("query the escrow sequence: the node refused it (%s code %d): %s", res.Codespace, res.Code, res.Log)
	}
	if len(res.Value) == 0 {
		return 1, nil // no escrow yet
	}
	last, err := collections.Uint64Value.Decode(res.Value)
	if err != nil {
		return 0, fmt.Errorf("query the escrow sequence: the node's value %x is no sequence: %w", res.Value, err)
	}
	return last + 1, nil
}

// ChainID asks the nodes' CometBFT RPC which chain they run, for signing
// txs: each endpoint in turn until one answers.
func (c *Client) ChainID(ctx context.Context) (string, error) {
	if len(c.rpc) == 0 {
		return "", fmt.Errorf("chain id: no CometBFT RPC configured")
	}
	var errs []string
	for _, at := range c.rpc {
		cli, err := rpchttp.New(at, "/websocket")
		if err == nil {
			var st *coretypes.ResultStatus
			if st, err = cli.Status(ctx); err == nil {
				return st.NodeInfo.Network, nil
			}
		}
		errs = append(errs, fmt.Sprintf("status of %s: %v", at, err))
		if ctx.Err() != nil {
			break
		}
	}
	return "", fmt.Errorf("chain id: %s", strings.Join(errs, "; "))
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
