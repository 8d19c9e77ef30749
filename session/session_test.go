package session_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
)

// bundle is the state of one protocol test: a fixture, the gateway's
// sequencer and the replicas of the hosts.
type bundle struct {
	f        *sessiontest.Fixture
	gw       *sessiontest.Sequencer
	replicas []*session.Session
}

func setup(t *testing.T, mutate ...func(*sessiontest.Options)) *bundle {
	t.Helper()
	o := sessiontest.DefaultOptions()
	// Every eligible slot is sampled unless a test says otherwise, so
	// tests choose their validators; sampling itself has its own tests.
	o.ValidationRateBps = 10000
	for _, m := range mutate {
		m(&o)
	}
	f := sessiontest.New(1, o)
	b := &bundle{f: f, gw: f.Sequencer()}
	for range f.Hosts {
		b.replicas = append(b.replicas, f.NewSession(nil))
	}
	return b
}

// step builds the next diff from txs and applies it on every host replica.
func (b *bundle) step(t *testing.T, txs ...*sessionpb.Tx) *sessionpb.Diff {
	t.Helper()
	d, err := b.gw.Next(txs...)
	require.NoError(t, err)
	for i, r := range b.replicas {
		_, err := r.Apply(d)
		require.NoError(t, err, "replica %d", i)
		require.Equal(t, b.gw.Replica.Root(), r.Root(), "replica %d root", i)
	}
	return d
}

// inference runs one full inference at the next nonce: start, confirm and
// finish in consecutive diffs. It returns the inference id.
func (b *bundle) inference(t *testing.T, in, maxTokens, out uint64) uint64 {
	t.Helper()
	id := b.gw.Replica.Nonce() + 1
	b.step(t, sessiontest.Start(id, in, maxTokens))
	exec := b.gw.Replica.Executor(id)
	b.step(t, b.f.Confirm(exec, id, sessiontest.Timestamp(id)), b.f.Finish(exec, id, in, out))
	return id
}

func TestHonestSessionSettles(t *testing.T) {
	t.Parallel()
	b := setup(t)
	o := sessiontest.DefaultOptions()
	var want [3]uint64
	for range 20 {
		id := b.inference(t, 10, 100, 40)
		want[b.gw.Replica.Executor(id)] += 50 * o.TokenPrice
	}
	// A validator from another slot confirms inference 1.
	s1 := (b.gw.Replica.Executor(1) + 1) % 3
	b.step(t, b.f.Validate(s1, 1, true))
	b.step(t, sessiontest.Finalize())
	b.step(t, sessiontest.Finalize())
	s := b.gw.Replica
	require.Equal(t, sessionpb.Phase_PHASE_SETTLEMENT, s.Phase())
	require.Zero(t, s.LiveCount(), "settlement seals every record")

	plan, err := session.VerifySettlement(b.f.Snapshot, b.f.Settle(s, 0, 1, 2), nil)
	require.NoError(t, err)
	var paid, finished uint64
	for i, p := range plan.Slots {
		require.Equal(t, want[i], p.Cost, "slot %d cost", i)
		paid += p.Total()
		finished += p.Finished
	}
	require.Equal(t, uint64(20), finished)
	// 42 diffs were applied while ACTIVE (the first Finalize is charged).
	fees := o.CreationFee + o.FeePerNonce*42
	require.Equal(t, fees, plan.Fees)
	require.Equal(t, o.Amount, paid+plan.Refund, "conservation")
	require.Equal(t, o.Amount-fees-want[0]-want[1]-want[2], plan.Refund)
}
