// Package legacytest generates legacy host databases, the input of
// store/legacy: testdata/schema.sql is the legacy schema, and Write fills a
// database with it from valid signed sessions.
package legacytest

import (
	"database/sql"
	_ "embed"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/store/sqlite"
	"github.com/devshard/devshard/store/storetest"
)

//go:embed testdata/schema.sql
var schema string

// TB is the part of testing.TB that Write needs.
type TB interface {
	require.TestingT
	Helper()
}

// Write creates a legacy database at path holding, for each chain, its
// escrow (with the epoch cleared: legacy snapshots predate epochs) and its
// first n[i] diffs, with the nonce and root the legacy store recorded.
func Write(t TB, path string, chains []*storetest.Chain, n []int) {
	t.Helper()
	db, err := sql.Open(sqlite.DriverName, path)
	require.NoError(t, err)
	defer db.Close()
	_, err = db.Exec(schema)
	require.NoError(t, err)
	for i, c := range chains {
		snap := *c.Snapshot
		snap.Epoch = 0
		b, err := snap.Marshal()
		require.NoError(t, err)
		root := c.Replica(0).Root()
		if n[i] > 0 {
			root = c.Roots[n[i]-1]
		}
		_, err = db.Exec("INSERT INTO sessions (escrow_id, snapshot, nonce, root, updated_at) VALUES (?, ?, ?, ?, ?)",
			int64(c.Snapshot.EscrowId), b, n[i], root[:], time.Now().Unix())
		require.NoError(t, err)
		for _, d := range c.Diffs[:n[i]] {
			_, err = db.Exec("INSERT INTO diffs (escrow_id, nonce, data) VALUES (?, ?, ?)", int64(d.EscrowID), int64(d.Nonce), d.Data)
			require.NoError(t, err)
		}
	}
}
