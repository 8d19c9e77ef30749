package chainclient

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/signing"
)

// The cache asks once per TTL and never caches a failed lookup.
func TestGrantCache(t *testing.T) {
	t.Parallel()
	now := time.Unix(100, 0)
	calls := 0
	fail := false
	g := &grantCache{ttl: time.Minute, entries: map[grantKey]grantEntry{}, now: func() time.Time { return now },
		lookup: func(context.Context, signing.Address, signing.Address, session.Kind) (bool, error) {
			calls++
			if fail {
				return false, errors.New("node down")
			}
			return true, nil
		}}
	var h, s signing.Address
	s[0] = 1
	require.True(t, g.MayActFor(h, s, session.KindState))
	require.True(t, g.MayActFor(h, s, session.KindState))
	require.Equal(t, 1, calls)
	now = now.Add(2 * time.Minute)
	fail = true
	require.False(t, g.MayActFor(h, s, session.KindState), "an unanswered question is a no")
	require.False(t, g.MayActFor(h, s, session.KindState))
	require.Equal(t, 3, calls, "failures are not cached")
}
