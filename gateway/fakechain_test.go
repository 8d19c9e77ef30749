package gateway

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/devshard/devshard/host"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/signing"
	"github.com/devshard/devshard/versiond"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// fakeChain is a fake standing in for the chain node. It implements Chain
// in memory: escrows are built from a sessiontest fixture (a group of three
// slots over three host keys, the fixture's price and fees), ids count up
// from 1, and every settlement is checked with the protocol's own
// session.VerifySettlement, so a settlement the real chain would reject
// fails the gateway's call and with it the test.
type fakeChain struct {
	fixture *sessiontest.Fixture

	mu          sync.Mutex
	epoch       uint64
	state       devshardtypes.EpochState
	balance     uint64
	lastID      uint64
	snaps       map[uint64]*sessionpb.EscrowSnapshot
	created     []*sessionpb.EscrowSnapshot
	settlements []*sessionpb.Settlement
	plans       []*session.Plan
	rejected    []error
	settled     map[uint64]bool
	urls        map[signing.Address]string
	approved    []devshardtypes.ApprovedVersion // oldest first; none by default
	// height and haltedAt are the latest block: while haltedAt is zero the
	// chain makes a block at every LatestBlock; once set, it made its last
	// block, at height, then.
	height   int64
	haltedAt time.Time
	// holdCreate, when set, is called once by the next CreateEscrowUnder
	// before it locks anything, so a test can hold a creation in flight.
	holdCreate func()
}

func newFakeChain(f *sessiontest.Fixture) *fakeChain {
	return &fakeChain{
		fixture: f, epoch: 1, state: devshardtypes.EpochActive, balance: 1 << 40,
		snaps: map[uint64]*sessionpb.EscrowSnapshot{}, settled: map[uint64]bool{}, urls: map[signing.Address]string{},
	}
}

// Epoch implements Chain.
func (c *fakeChain) Epoch(context.Context) (uint64, devshardtypes.EpochState, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.epoch, c.state, nil
}

// CreateEscrowUnder implements Chain: it locks amount and snapshots the
// fixture's parameters and runtimeVersion, which the chain's own rule must
// accept, into a new escrow of the current epoch.
func (c *fakeChain) CreateEscrowUnder(_ context.Context, amount uint64, runtimeVersion string) (*sessionpb.EscrowSnapshot, error) {
	c.mu.Lock()
	hold := c.holdCreate
	c.holdCreate = nil
	c.mu.Unlock()
	if hold != nil {
		hold()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != devshardtypes.EpochActive {
		return nil, fmt.Errorf("fake chain: epoch %d is %s", c.epoch, c.state.Short())
	}
	if err := (devshardtypes.Params{ApprovedVersions: c.approved}).CheckRuntimeVersion(runtimeVersion); err != nil {
		return nil, err
	}
	if c.balance < amount {
		return nil, fmt.Errorf("%w: fake chain holds %d, escrow locks %d", ErrFunds, c.balance, amount)
	}
	c.balance -= amount
	c.lastID++
	snap := cloneSnapshot(c.fixture.Snapshot)
	snap.EscrowId = c.lastID
	snap.Amount = amount
	snap.Epoch = c.epoch
	snap.RuntimeVersion = runtimeVersion
	c.snaps[snap.EscrowId] = snap
	c.created = append(c.created, snap)
	return cloneSnapshot(snap), nil // the gateway gets its own copy, as over the wire
}

// SettleEscrow implements Chain: it records the settlement and verifies it
// against the escrow's snapshot. An escrow already settled is success with
// an empty hash, as the Chain contract says.
func (c *fakeChain) SettleEscrow(_ context.Context, m *sessionpb.Settlement) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	snap, ok := c.snaps[m.EscrowId]
	if !ok {
		return "", fmt.Errorf("fake chain: settlement names unknown escrow %d", m.EscrowId)
	}
	if c.settled[m.EscrowId] {
		return "", nil
	}
	c.settlements = append(c.settlements, m)
	plan, err := session.VerifySettlement(snap, m, nil)
	if err != nil {
		c.rejected = append(c.rejected, err)
		return "", err
	}
	c.plans = append(c.plans, plan)
	c.settled[m.EscrowId] = true
	return fmt.Sprintf("FAKETX%d", m.EscrowId), nil
}

// Closed implements Chain.
func (c *fakeChain) Closed(_ context.Context, id uint64) (bool, string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.settled[id] {
		return true, fmt.Sprintf("FAKETX%d", id), nil
	}
	return false, "", nil
}

// settleElsewhere marks escrow id settled by someone else, as hosts do past
// the deadline.
func (c *fakeChain) settleElsewhere(id uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.settled[id] = true
}

// HostURL implements Chain.
func (c *fakeChain) HostURL(_ context.Context, addr signing.Address) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	url, ok := c.urls[addr]
	if !ok {
		return "", fmt.Errorf("fake chain: %s is not a registered participant", addr)
	}
	return url, nil
}

// ApprovedVersions implements Chain.
func (c *fakeChain) ApprovedVersions(context.Context) ([]versiond.Version, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]versiond.Version, len(c.approved))
	for i, v := range c.approved {
		out[i] = versiond.Version{Name: v.Name, URL: v.Url, SHA256: v.Sha256}
	}
	return out, nil
}

// approve sets the chain's approved runtime versions, oldest first.
func (c *fakeChain) approve(names ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.approved = nil
	for _, n := range names {
		c.approved = append(c.approved, devshardtypes.ApprovedVersion{Name: n, Url: "https://example.org/" + n, Sha256: strings.Repeat("ab", 32)})
	}
}

// CandidateURLs implements Chain: every registered host, once.
func (c *fakeChain) CandidateURLs(context.Context) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, u := range c.urls {
		if !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	slices.Sort(out)
	return out, nil
}

// Balance implements Chain.
func (c *fakeChain) Balance(context.Context) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.balance, nil
}

// LatestBlock implements Chain.
func (c *fakeChain) LatestBlock(context.Context) (int64, time.Time, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.haltedAt.IsZero() {
		return c.height, c.haltedAt, nil
	}
	c.height++
	return c.height, time.Now(), nil
}

// halt makes the chain's latest block height, made at.
func (c *fakeChain) halt(height int64, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.height, c.haltedAt = height, at
}

func (c *fakeChain) register(addr signing.Address, url string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.urls[addr] = url
}

func (c *fakeChain) setBalance(b uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.balance = b
}

func (c *fakeChain) setEpoch(id uint64, state devshardtypes.EpochState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch, c.state = id, state
}

// createdCount is how many escrows the gateway locked.
func (c *fakeChain) createdCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.created)
}

// snapshot is the chain's copy of escrow id.
func (c *fakeChain) snapshot(id uint64) *sessionpb.EscrowSnapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.snaps[id]
}

// settledState is what the chain has seen of settlements: all of them, the
// plans of the accepted ones and the errors of the rejected ones.
func (c *fakeChain) settledState() ([]*sessionpb.Settlement, []*session.Plan, []error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*sessionpb.Settlement(nil), c.settlements...), append([]*session.Plan(nil), c.plans...), append([]error(nil), c.rejected...)
}

// hostEscrows is what a host reads of the fake chain: escrow snapshots.
type hostEscrows struct{ c *fakeChain }

// EscrowSnapshot implements host.Escrows.
func (h hostEscrows) EscrowSnapshot(_ context.Context, id uint64) (*sessionpb.EscrowSnapshot, error) {
	if snap := h.c.snapshot(id); snap != nil {
		return snap, nil
	}
	return nil, fmt.Errorf("%w: %d", host.ErrUnknownEscrow, id)
}

func cloneSnapshot(s *sessionpb.EscrowSnapshot) *sessionpb.EscrowSnapshot {
	raw, err := s.Marshal()
	if err != nil {
		panic(err)
	}
	var out sessionpb.EscrowSnapshot
	if err := out.Unmarshal(raw); err != nil {
		panic(err)
	}
	return &out
}
