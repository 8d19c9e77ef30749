package hostbench

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionbench"
	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/sqlite"
)

// TestStartupStateIsGenuine checks the construction BuildStartup relies on:
// what recovery reads for escrow X (the snapshot and the diffs from its
// nonce on) is exactly what a real session of escrow X, run from nonce 1
// with the same txs, would have stored; and a daemon recovers every session
// from its snapshot.
func TestStartupStateIsGenuine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name          string
		nonces        int
		every, wantAt uint64
	}{
		{"tail after the snapshot", 25, 10, 20},
		{"snapshot at the last nonce", 20, 10, 20},
		{"no snapshot", 8, 10, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			dir := t.TempDir()
			st, err := sqlite.Open(ctx, dir, sqlite.Options{Synchronous: "NORMAL"})
			require.NoError(t, err)
			s, err := BuildStartup(ctx, st, StartupOptions{Sessions: 3, Nonces: tc.nonces, SnapshotEvery: tc.every, Workers: 2}, nil)
			require.NoError(t, err)
			require.Equal(t, tc.wantAt, s.SnapshotNonce())

			const id = 2
			real, err := sessionbench.NewPipeline(id, tc.nonces)
			require.NoError(t, err)
			first := max(tc.wantAt, 1)
			stored, err := st.Diffs(ctx, id, first, tc.nonces)
			require.NoError(t, err)
			require.Len(t, stored, tc.nonces-int(first)+1)
			for _, d := range stored {
				want := real.Diffs[d.Nonce-1]
				require.Equal(t, want.PostStateRoot, d.Root, "root at nonce %d", d.Nonce)
				require.Equal(t, real.Raw[d.Nonce-1], d.Data, "diff bytes at nonce %d", d.Nonce)
			}
			if tc.wantAt > 0 {
				replica, err := session.New(real.Fixture.Snapshot, nil)
				require.NoError(t, err)
				for _, d := range real.Diffs[:tc.wantAt] {
					_, err := replica.Apply(d)
					require.NoError(t, err)
				}
				want, err := replica.State().Marshal()
				require.NoError(t, err)
				snap, err := st.Snapshot(ctx, id)
				require.NoError(t, err)
				require.Equal(t, want, snap.State)
			}
			require.NoError(t, st.Close())

			_, err = s.Run(ctx, func(ctx context.Context) (store.Store, error) {
				return sqlite.Open(ctx, dir, sqlite.Options{})
			})
			require.NoError(t, err)
		})
	}
}
