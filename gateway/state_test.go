package gateway

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/internal/sqlitedb"
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
