package session_test

import (
	"math/rand"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
)

// Attack 8: replicas in one process share the escrow snapshot and the diff
// objects they receive. Under -race this fails if apply writes into either,
// or if a session keeps a caller's slice that the caller then changes.
func TestReplicasShareInputsWithoutRaces(t *testing.T) {
	t.Parallel()
	f := sessiontest.New(3, sessiontest.DefaultOptions())
	gw := f.Sequencer()
	rng := rand.New(rand.NewSource(3))
	var diffs []*sessionpb.Diff
	for range 40 {
		d, err := gw.RandomStep(rng)
		require.NoError(t, err)
		diffs = append(diffs, d)
	}
	snap := f.Snapshot
	var wg sync.WaitGroup
	roots := make([][32]byte, 4)
	for i := range roots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := session.New(snap, nil)
			if err != nil {
				t.Error(err)
				return
			}
			for _, d := range diffs {
				if _, err := s.Apply(d); err != nil {
					t.Error(err)
					return
				}
			}
			roots[i] = s.Root()
		}()
	}
	// The caller reuses its snapshot buffer while the replicas run: sessions
	// must have taken their own copy at New.
	wg.Wait()
	for i := range roots {
		require.Equal(t, gw.Replica.Root(), roots[i])
	}
	s := f.NewSession(nil)
	snap.Group[0][0] ^= 0xff
	snap.Amount = 1
	_, err := s.Apply(diffs[0])
	require.NoError(t, err, "a session does not see later changes to the caller's snapshot")
}
