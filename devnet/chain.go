package devnet

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"google.golang.org/grpc"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/chain/localnet"
	"github.com/devshard/devshard/chain/node"
	"github.com/devshard/devshard/chainclient"
)

// Chain is the devnet's chain: one validator inside this process (the
// default), or several validators as child processes (Config.Validators
// above 1), each a `devshard chain start` with its own home.
type Chain struct {
	ChainID  string
	Encoding chain.Encoding
	// Accounts are the genesis accounts: the hosts', the gateway's, then
	// Config.Accounts.
	Accounts []node.Account
	// Funder is a funded account outside the devnet's roles: the first
	// validator's operator.
	Funder node.Account
	// Nodes are the chain's nodes. Host i talks to node i first, and the
	// gateway to the last, each failing over to the others.
	Nodes []ChainNode

	single *node.Node
	multi  *localnet.Network
}

// ChainNode is one node's endpoints, as devnet.json lists them.
type ChainNode struct {
	Name string `json:"name"`
	RPC  string `json:"rpc"`
	GRPC string `json:"grpc"`
	REST string `json:"rest"`
	// Validator is false for a node that only follows.
	Validator bool `json:"validator"`
}

// startChain starts the devnet's chain in <home>/chain, or resumes it.
func startChain(ctx context.Context, cfg Config, accounts []node.Account, step func(string, ...any)) (*Chain, error) {
	home := filepath.Join(cfg.Home, "chain")
	if cfg.Validators <= 1 {
		step("starting a single-validator chain (blocks every %s, epochs of %d blocks)", cfg.BlockTime, cfg.Params.EpochLength)
		nd, err := node.Start(ctx, node.Config{Home: home, BlockTime: cfg.BlockTime, Params: cfg.Params, Resume: true, Accounts: accounts, Genesis: cfg.Genesis})
		if err != nil {
			return nil, err
		}
		return &Chain{ChainID: nd.ChainID, Encoding: nd.Encoding, Accounts: nd.Accounts, Funder: nd.Validator,
			Nodes:  []ChainNode{{Name: "validator0", RPC: nd.RPCAddress, GRPC: nd.GRPCAddress, REST: nd.APIAddress, Validator: true}},
			single: nd}, nil
	}
	step("starting a chain of %d validators as processes (blocks every %s, epochs of %d blocks)", cfg.Validators, cfg.BlockTime, cfg.Params.EpochLength)
	nw, err := localnet.Start(ctx, localnet.Config{Home: home, Binary: cfg.Binary, Validators: cfg.Validators, ChainID: "devshard-local",
		BlockTime: cfg.BlockTime, Params: cfg.Params, Accounts: accounts, Genesis: cfg.Genesis, SnapshotInterval: snapshotInterval,
		Progress: func(format string, args ...any) { step("chain: "+format, args...) }})
	if err != nil {
		return nil, err
	}
	c := &Chain{ChainID: nw.ChainID, Encoding: nw.Encoding, Accounts: nw.Accounts, Funder: nw.Nodes[0].Operator, multi: nw}
	for _, nd := range nw.Nodes {
		c.Nodes = append(c.Nodes, ChainNode{Name: nd.Name, RPC: nd.RPCAddress, GRPC: nd.GRPCAddress, REST: nd.APIAddress, Validator: nd.Validator})
	}
	return c, nil
}

// snapshotInterval is how often a multi-validator devnet's nodes take a
// state-sync snapshot, for a node that joins late.
const snapshotInterval = 20

// Network is the chain's processes when it has several validators (nil
// with one): a test kills, restarts and joins nodes through it.
func (c *Chain) Network() *localnet.Network { return c.multi }

// Conn is a gRPC connection to a live node, for query clients.
func (c *Chain) Conn() *grpc.ClientConn {
	if c.multi != nil {
		return c.multi.Conn()
	}
	return c.single.Conn()
}

// TxClient signs txs, sends them over Conn and waits for their block.
func (c *Chain) TxClient() *chainclient.Sender {
	if c.multi != nil {
		return c.multi.TxClient()
	}
	return c.single.TxClient()
}

// endpoints are the nodes' gRPC and CometBFT RPC addresses as a party's
// chain settings take them, a comma-separated list starting at node first,
// so the parties spread over the nodes and each fails over to the rest.
func (c *Chain) endpoints(first int) (grpcList, rpcList string) {
	var g, r []string
	for k := range c.Nodes {
		nd := c.Nodes[(first+k)%len(c.Nodes)]
		g, r = append(g, nd.GRPC), append(r, "http://"+trimScheme(nd.RPC))
	}
	return strings.Join(g, ","), strings.Join(r, ",")
}

// Close stops the chain.
func (c *Chain) Close(ctx context.Context) error {
	var errs []error
	if c.multi != nil {
		errs = append(errs, c.multi.Close(ctx))
	}
	if c.single != nil {
		errs = append(errs, c.single.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("chain: %w", err)
	}
	return nil
}
