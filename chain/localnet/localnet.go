// Package localnet runs the devshard chain as a real network of processes
// on one machine: N validators, each a `devshard chain start` process with
// its own home, talking CometBFT P2P over loopback, bonded at genesis
// through gentxs, and full nodes that join later by state sync or block
// sync. Tests use it to kill, stop and restart validators; chain/node is
// the lighter single validator inside the calling process.
package localnet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/cosmos/cosmos-sdk/codec"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/chain/node"
	"github.com/devshard/devshard/chainclient"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// Config describes the network to start.
type Config struct {
	// Home holds the network: a directory per node and the network's
	// record (network.json). A Home that has one is resumed.
	Home string
	// Binary is the devshard executable the nodes run.
	Binary string
	// Validators is how many validators there are, each bonding
	// node.ValidatorStake (default 1).
	Validators int
	// ChainID defaults to "devshard-localnet".
	ChainID string
	// BlockTime is the target interval between blocks (default 1s).
	BlockTime time.Duration
	// Params replaces the devshard module's parameters.
	Params *devshardtypes.Params
	// Accounts are funded at genesis; an account without a key gets one
	// derived as chain/node does. Network.Accounts has them all.
	Accounts []node.Account
	// Genesis, if set, may change any module's genesis before the
	// validators' gentxs are collected.
	Genesis func(cdc codec.JSONCodec, state chain.GenesisState) error
	// SnapshotInterval makes every node take a state-sync snapshot each
	// that many blocks, keeping the last two (0: none).
	SnapshotInterval uint64
	// SkipInvariants runs the nodes as an operator's run by default
	// (--inv-check-period 0). Otherwise they check the invariants every
	// block, as chain/node does: what a test network wants, at a cost
	// that grows with the state (the books are summed over every escrow
	// and ledger).
	SkipInvariants bool
	// Progress, if set, is told what the network is doing.
	Progress func(format string, args ...any)
}

// Network is a running network of devshard chain nodes.
type Network struct {
	ChainID  string
	Home     string
	Accounts []node.Account
	Encoding chain.Encoding
	// Nodes are the validators, then the nodes that joined, in order.
	// Join appends to it: read it from the goroutine that calls Join.
	Nodes []*Node

	binary         string
	skipInvariants bool
	progress       func(format string, args ...any)

	mu   sync.Mutex // guards Nodes and rec
	rec  *record
	conn *grpc.ClientConn
}

// recordFile is the network's record in its Home.
const recordFile = "network.json"

// Start starts the network in cfg.Home and returns once every node has
// committed a block. If Home holds a network, it is resumed as it was:
// same genesis, keys and ports, joined nodes included; of cfg only Home,
// Binary and Progress are used then. ctx bounds the start only; Close stops the
// network.
func Start(ctx context.Context, cfg Config) (n *Network, err error) {
	chain.SetAddressPrefixes()
	if cfg.Home == "" || cfg.Binary == "" {
		return nil, errors.New("localnet: Config.Home and Config.Binary are required")
	}
	if cfg.Validators < 0 {
		return nil, fmt.Errorf("localnet: %d validators; a network needs at least one", cfg.Validators)
	}
	if cfg.Validators == 0 {
		cfg.Validators = 1
	}
	if cfg.ChainID == "" {
		cfg.ChainID = "devshard-localnet"
	}
	if cfg.BlockTime == 0 {
		cfg.BlockTime = time.Second
	}
	if cfg.Progress == nil {
		cfg.Progress = func(string, ...any) {}
	}
	rec, err := readRecord(cfg.Home)
	switch {
	case errors.Is(err, os.ErrNotExist):
		cfg.Progress("creating a network of %d validators in %s", cfg.Validators, cfg.Home)
		if rec, err = create(cfg); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, err
	default:
		cfg.Progress("resuming the network in %s", cfg.Home)
	}

	n = &Network{
		ChainID: rec.ChainID, Home: cfg.Home, Encoding: chain.MakeEncoding(),
		binary: cfg.Binary, skipInvariants: cfg.SkipInvariants, progress: cfg.Progress, rec: rec,
	}
	defer func() {
		if err != nil {
			n.Close(context.Background())
			n = nil
		}
	}()
	if n.Accounts, err = rec.accounts(); err != nil {
		return nil, err
	}
	for _, nr := range rec.Nodes {
		nd, err := n.newNode(nr)
		if err != nil {
			return nil, err
		}
		n.Nodes = append(n.Nodes, nd)
	}
	if err := n.dial(); err != nil {
		return nil, err
	}
	for _, nd := range n.Nodes {
		if err := nd.Start(); err != nil {
			return nil, err
		}
	}
	// Every node commits a block made after this start: until a node
	// has, its app answers no query at the latest height (a resumed one
	// has no block header to answer with).
	if err := n.WaitForHeight(ctx, 1); err != nil {
		return nil, fmt.Errorf("waiting for the network's first block: %w", err)
	}
	h, err := n.Height(ctx)
	if err != nil {
		return nil, err
	}
	for _, nd := range n.Nodes {
		if err := nd.WaitForHeight(ctx, h+1); err != nil {
			return nil, fmt.Errorf("waiting for the network's first block: %w", err)
		}
	}
	cfg.Progress("network %s is making blocks (height %d)", n.ChainID, h+1)
	return n, nil
}

// Validators are the nodes that validate.
func (n *Network) Validators() []*Node {
	n.mu.Lock()
	defer n.mu.Unlock()
	var vs []*Node
	for _, nd := range n.Nodes {
		if nd.Validator {
			vs = append(vs, nd)
		}
	}
	return vs
}

// dial makes the connection Conn returns: gRPC to the validators in
// order, with gRPC's pick-first policy, which moves to the next address
// when the node it is connected to stops answering.
func (n *Network) dial() error {
	r := manual.NewBuilderWithScheme("localnet")
	r.InitialState(resolver.State{Addresses: n.grpcAddresses()})
	conn, err := grpc.NewClient(r.Scheme()+":///"+n.ChainID,
		grpc.WithResolvers(r), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	n.conn = conn
	return nil
}

func (n *Network) grpcAddresses() []resolver.Address {
	var addrs []resolver.Address
	for _, nd := range n.Validators() {
		addrs = append(addrs, resolver.Address{Addr: nd.GRPCAddress})
	}
	return addrs
}

// Conn is a gRPC connection to a live validator, for query clients: the
// first that answers, and the next one if it stops. A call in flight when
// its node dies fails; the next call goes to another node. Close closes
// it.
func (n *Network) Conn() *grpc.ClientConn { return n.conn }

// TxClient returns a client that signs txs, sends them over Conn and
// waits for their block, as node.Node's does.
func (n *Network) TxClient() *chainclient.Sender {
	return chainclient.NewSender(n.conn, n.ChainID, n.Encoding.TxConfig)
}

// Height is the highest block height that a running node's app has
// committed.
func (n *Network) Height(ctx context.Context) (int64, error) {
	n.mu.Lock()
	nodes := slices.Clone(n.Nodes)
	n.mu.Unlock()
	var (
		best int64
		errs []error
	)
	for _, nd := range nodes {
		if !nd.Running() {
			continue
		}
		h, err := nd.Height(ctx)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		best = max(best, h)
	}
	if best == 0 && len(errs) > 0 {
		return 0, errors.Join(errs...)
	}
	return best, nil
}

// WaitForHeight returns once a running node has committed height h.
func (n *Network) WaitForHeight(ctx context.Context, h int64) error {
	return waitFor(ctx, h, n.Height)
}

// waitFor polls height until it reaches h.
func waitFor(ctx context.Context, h int64, height func(context.Context) (int64, error)) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		at, err := height(ctx)
		if err == nil && at >= h {
			return nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("height %d not reached (%v): %w", h, err, context.Cause(ctx))
			}
			return fmt.Errorf("height %d not reached (at %d): %w", h, at, context.Cause(ctx))
		case <-tick.C:
		}
	}
}

// Close stops every node (SIGTERM, then SIGKILL for one that has not
// exited when ctx ends or after stopTimeout) and closes Conn. The homes
// stay: Start on the same Home resumes the network.
func (n *Network) Close(ctx context.Context) error {
	n.mu.Lock()
	nodes := slices.Clone(n.Nodes)
	n.mu.Unlock()
	var wg sync.WaitGroup
	for _, nd := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nd.stop(ctx)
		}()
	}
	wg.Wait()
	if n.conn != nil {
		return n.conn.Close()
	}
	return nil
}

// home is the directory of the node named name.
func (n *Network) home(name string) string { return filepath.Join(n.Home, name) }
