package localnet

import (
	"context"
	"fmt"
	"path/filepath"

	chaincmd "github.com/devshard/devshard/chain/cmd"
	"github.com/devshard/devshard/chain/node"
)

// Join adds a full node named name that does not validate, as an operator
// does with `devshard chain join`: a home with the network's genesis and
// the validators as persistent peers, then `chain start`. With stateSync
// it restores the latest snapshot the validators offer (so
// Config.SnapshotInterval must be set and a snapshot taken), trusting the
// latest block of a running validator; without, it replays every block.
// It returns once the node has a committed height; the node is kept in
// the network's record, so a resumed network starts it too.
func (n *Network) Join(ctx context.Context, name string, stateSync bool) (*Node, error) {
	n.mu.Lock()
	for _, nd := range n.Nodes {
		if nd.Name == name {
			n.mu.Unlock()
			return nil, fmt.Errorf("the network already has a node named %q", name)
		}
	}
	n.mu.Unlock()

	ports, err := node.FreePorts(4)
	if err != nil {
		return nil, err
	}
	nr := nodeRecord{Name: name, Ports: nodePorts{P2P: ports[0], RPC: ports[1], GRPC: ports[2], API: ports[3]}}
	var rpcs []string
	for _, v := range n.Validators() {
		nr.Peers = append(nr.Peers, v.P2PAddress)
		if stateSync && v.Running() {
			rpcs = append(rpcs, v.RPCAddress)
		}
	}
	if stateSync && len(rpcs) == 0 {
		return nil, fmt.Errorf("joining %s by state sync: no validator is running to trust a block from", name)
	}
	cometCfg, appCfg := nodeConfigs(n.home(name), nr, n.rec)
	if stateSync {
		n.progress("%s joins by state sync", name)
	} else {
		n.progress("%s joins by block sync", name)
	}
	if nr.NodeID, err = chaincmd.InitJoin(ctx, chaincmd.JoinConfig{
		Home: n.home(name), Moniker: name, Genesis: filepath.Join(n.Home, genesisFile),
		Peers: nr.Peers, StateSyncRPC: rpcs, Comet: cometCfg, App: appCfg,
	}); err != nil {
		return nil, fmt.Errorf("joining %s: %w", name, err)
	}
	nd, err := n.newNode(nr)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	n.Nodes = append(n.Nodes, nd)
	n.rec.Nodes = append(n.rec.Nodes, nr)
	err = n.rec.write(n.Home)
	n.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if err := nd.Start(); err != nil {
		return nil, err
	}
	if err := nd.WaitForHeight(ctx, 1); err != nil {
		return nil, fmt.Errorf("%s joined but has no block yet: %w", name, err)
	}
	return nd, nil
}
