package gateway

import (
	"context"
	"time"

	"github.com/devshard/devshard/chainclient"
)

// chainBlock is the chain's latest block as the gateway last saw it.
type chainBlock struct {
	height int64
	at     time.Time
}

// chainMoving asks the chain for its latest block and remembers it. It is
// nil while blocks keep coming, a *chainclient.StalledError once the latest
// is older than ChainStallAfter, and the query's error when the node does
// not answer.
func (g *Gateway) chainMoving(ctx context.Context) error {
	height, at, err := g.chain.LatestBlock(ctx)
	if err != nil {
		return err
	}
	g.block.Store(&chainBlock{height: height, at: at})
	return chainclient.Stalled(height, at, time.Now(), g.cfg.ChainStallAfter)
}

// watchChain refreshes the latest block every epoch poll, for the block
// age gauge and the status page; readiness and new escrows ask for
// themselves.
func (g *Gateway) watchChain() {
	ctx, cancel := context.WithTimeout(g.loopCx, readyWait)
	defer cancel()
	_ = g.chainMoving(ctx)
}
