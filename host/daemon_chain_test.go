package host

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// daemonChain is a chain in memory, as the daemon reads it.
type daemonChain struct {
	mu           sync.Mutex
	id           string
	idErr        error
	epoch        uint64
	escrows      map[uint64]*devshardtypes.Escrow
	urls         map[signing.Address]string
	unclaimed    []devshardtypes.EpochPerformanceSummary
	participants int // Participant calls
	// height and haltedAt are the latest block: while haltedAt is zero the
	// chain makes a block at every LatestBlock; once set, it made its last
	// block, at height, then.
	height   int64
	haltedAt time.Time
}

var _ Chain = (*daemonChain)(nil)

func (c *daemonChain) ChainID(context.Context) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.id, c.idErr
}

func (c *daemonChain) setIDErr(err error) {
	c.mu.Lock()
	c.idErr = err
	c.mu.Unlock()
}

func (c *daemonChain) CurrentEpoch(context.Context) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.epoch, nil
}

func (c *daemonChain) setEpoch(e uint64) {
	c.mu.Lock()
	c.epoch = e
	c.mu.Unlock()
}

func (c *daemonChain) FollowEpochs(ctx context.Context, _ time.Duration, fn func(uint64)) error {
	var last uint64
	for {
		if e, _ := c.CurrentEpoch(ctx); e != last {
			last = e
			fn(e)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (c *daemonChain) Escrow(_ context.Context, id uint64) (*devshardtypes.Escrow, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if esc, ok := c.escrows[id]; ok {
		return esc, nil
	}
	return nil, fmt.Errorf("%w: %d", chainclient.ErrNoEscrow, id)
}

// NextEscrowID is past every escrow the fake knows.
func (c *daemonChain) NextEscrowID(context.Context) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	next := uint64(1)
	for id := range c.escrows {
		next = max(next, id+1)
	}
	return next, nil
}

func (c *daemonChain) Participant(_ context.Context, a signing.Address) (*devshardtypes.Participant, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.participants++
	if u, ok := c.urls[a]; ok {
		return &devshardtypes.Participant{Address: c.Address(a), Url: u}, nil
	}
	return nil, fmt.Errorf("%s is not a registered participant", a)
}

func (c *daemonChain) Unclaimed(context.Context, signing.Address) ([]devshardtypes.EpochPerformanceSummary, error) {
	return c.unclaimed, nil
}

func (c *daemonChain) LatestBlock(context.Context) (int64, time.Time, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.haltedAt.IsZero() {
		return c.height, c.haltedAt, nil
	}
	c.height++
	return c.height, time.Now(), nil
}

func (c *daemonChain) Authorizer() session.Authorizer { return nil }

func (c *daemonChain) Address(a signing.Address) string { return "acct" + a.String() }

// fakeSender records what the daemon sends.
type fakeSender struct {
	mu      sync.Mutex
	settled []*sessionpb.Settlement
	claimed []uint64
	refuse  map[uint64]bool // epochs whose claim fails
}

var _ ChainSender = (*fakeSender)(nil)

func (s *fakeSender) SettleEscrow(_ context.Context, m *sessionpb.Settlement) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.settled = append(s.settled, m)
	return fmt.Sprintf("SETTLE%d", m.EscrowId), nil
}

func (s *fakeSender) ClaimRewards(_ context.Context, epoch uint64) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.claimed = append(s.claimed, epoch)
	if s.refuse[epoch] {
		return "", errors.New("out of gas")
	}
	return fmt.Sprintf("CLAIM%d", epoch), nil
}

func (s *fakeSender) settlements() []*sessionpb.Settlement {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*sessionpb.Settlement(nil), s.settled...)
}

func (s *fakeSender) claims() []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]uint64(nil), s.claimed...)
}
