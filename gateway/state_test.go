package gateway

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/internal/sqlitedb"
	"github.com/devshard/devshard/session/sessionpb"
)

// committedUsage reads key's usage from the state file through a
// connection of its own: what a crash would leave.
func committedUsage(t *testing.T, path, key string) Usage {
	t.Helper()
	db := sqlitedb.Open(path, sqlitedb.Options{})
	defer db.Close()
	var u Usage
	err := db.QueryRow(`SELECT requests, prompt_tokens, completion_tokens, cost FROM usage WHERE api_key = ?`, key).
		Scan(&u.Requests, &u.PromptTokens, &u.CompletionTokens, &u.Cost)
	if err != nil {
		return Usage{}
	}
	return u
}

// Usage costs no durable write of its own: it rides with the next diff's
// commit, or is committed on its own after a short while, and on Close.
func TestUsageIsWrittenBehindTheAnswers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	st, err := OpenState(path, "FULL")
	require.NoError(t, err)
	one := Usage{Requests: 1, PromptTokens: 5, CompletionTokens: 7, Cost: 120}

	require.NoError(t, st.AddUsage(ctx, "k", one))
	require.NoError(t, st.AddUsage(ctx, "k", one))
	got, err := st.UsageOf(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, one.plus(one), got, "UsageOf counts what is not committed yet")
	require.Equal(t, Usage{}, committedUsage(t, path, "k"), "nothing committed yet")

	// The next diff carries it in its own transaction.
	require.NoError(t, st.PutDiff(ctx, 1, StoredDiff{Nonce: 1, Data: []byte{1}}))
	require.Equal(t, one.plus(one), committedUsage(t, path, "k"), "committed with the diff")
	got, err = st.UsageOf(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, one.plus(one), got, "counted once")

	// With no diff to ride with, it is committed on its own shortly.
	require.NoError(t, st.AddUsage(ctx, "other", one))
	require.Eventually(t, func() bool { return committedUsage(t, path, "other") == one }, 5*time.Second, 20*time.Millisecond)

	// A diff whose write fails keeps the usage for the next commit.
	require.NoError(t, st.AddUsage(ctx, "k", one))
	require.Error(t, st.PutDiff(ctx, 1, StoredDiff{Nonce: 1, Data: []byte{1}}), "nonce 1 is stored already")
	got, err = st.UsageOf(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, one.plus(one).plus(one), got)

	// Close commits what is left.
	require.NoError(t, st.Close())
	require.Equal(t, one.plus(one).plus(one), committedUsage(t, path, "k"))
	require.Error(t, st.AddUsage(ctx, "k", one), "a closed state takes no usage")
}

// storedDiffs counts escrow's stored diffs.
func storedDiffs(t *testing.T, st *State, escrow uint64) int {
	t.Helper()
	ds, err := st.Diffs(context.Background(), escrow, 0, 1<<20)
	require.NoError(t, err)
	return len(ds)
}

// A settled escrow's diffs and payloads are pruned, at most the bound per
// pass; an open escrow's, a settling one's and a live one's are kept, and
// so are every escrow's row and the usage.
func TestPruneSettledKeepsWhatIsStillNeeded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, err := OpenState(filepath.Join(t.TempDir(), "state.db"), "NORMAL")
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	const settled, open, settling, live = 1, 2, 3, 4
	for id := uint64(1); id <= 4; id++ {
		require.NoError(t, st.AddEscrow(ctx, &sessionpb.EscrowSnapshot{EscrowId: id, Epoch: 1}))
		for n := uint64(1); n <= 5; n++ {
			d := StoredDiff{Nonce: n, Data: []byte{byte(id), byte(n)}, Requests: map[uint64]executor.Request{n: {Model: "m", MaxTokens: 1}}}
			require.NoError(t, st.PutDiff(ctx, id, d))
		}
	}
	require.NoError(t, st.SetSettled(ctx, settled, "AB12"))
	require.NoError(t, st.SetSettled(ctx, live, "CD34"))
	require.NoError(t, st.SetStatus(ctx, settling, StatusSettling, nil))
	require.NoError(t, st.AddUsage(ctx, "app", Usage{Requests: 5}))

	n, err := st.PruneSettled(ctx, 3, []uint64{live})
	require.NoError(t, err)
	require.Equal(t, 3, n, "a pass deletes at most its bound")
	require.Equal(t, 2, storedDiffs(t, st, settled))
	n, err = st.PruneSettled(ctx, 3, []uint64{live})
	require.NoError(t, err)
	require.Equal(t, 2, n)
	n, err = st.PruneSettled(ctx, 3, []uint64{live})
	require.NoError(t, err)
	require.Equal(t, 0, n, "nothing left to prune")

	require.Equal(t, 0, storedDiffs(t, st, settled))
	require.Equal(t, 5, storedDiffs(t, st, open))
	require.Equal(t, 5, storedDiffs(t, st, settling))
	require.Equal(t, 5, storedDiffs(t, st, live), "an escrow still in memory keeps its diffs")

	// The live one goes once it has left memory.
	n, err = st.PruneSettled(ctx, 100, nil)
	require.NoError(t, err)
	require.Equal(t, 5, n)

	done, err := st.Settled(ctx)
	require.NoError(t, err)
	require.Equal(t, []SettledEscrow{{ID: settled, TxHash: "AB12"}, {ID: live, TxHash: "CD34"}}, done, "the escrows' rows stay")
	u, err := st.UsageOf(ctx, "app")
	require.NoError(t, err)
	require.Equal(t, uint64(5), u.Requests)
}

// The gateway's background loop prunes an escrow's diffs once it is
// settled, and keeps the diffs of the escrow it opens next.
func TestGatewayPrunesSettledEscrows(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOptions) {
		o.config = func(c *Config) { c.EpochPoll = 10 * time.Millisecond }
	})
	first := b.complete(t, ask(1)).EscrowID
	ctx, cancel := context.WithTimeout(t.Context(), settleWait)
	defer cancel()
	require.NoError(t, b.gw.SettleAll(ctx))
	require.Eventually(t, func() bool { return storedDiffs(t, b.state, first) == 0 }, 5*time.Second, 10*time.Millisecond,
		"the settled escrow's diffs are pruned")

	second := b.complete(t, ask(2)).EscrowID
	require.NotEqual(t, first, second)
	time.Sleep(50 * time.Millisecond) // several passes
	require.NotZero(t, storedDiffs(t, b.state, second), "an open escrow keeps its diffs")
}
