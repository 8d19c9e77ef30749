package versiond

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeChain is a fake chain node: the test makes its blocks, sets its
// approved list and says whether it is catching up. The real node's side
// of the same contract is tested in chainclient against a real chain.
type fakeChain struct {
	blocks chan int64

	mu       sync.Mutex
	list     []Version
	catching bool
	reads    int
}

func (f *fakeChain) FollowBlocks(ctx context.Context, _ time.Duration, fn func(int64)) error {
	fn(0)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case h := <-f.blocks:
			fn(h)
		}
	}
}

func (f *fakeChain) ApprovedVersions(context.Context) ([]Version, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	return append([]Version(nil), f.list...), nil
}

func (f *fakeChain) InSync(context.Context, time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.catching {
		return errors.New("fake node: catching up")
	}
	return nil
}

func (f *fakeChain) set(catching bool, list ...Version) {
	f.mu.Lock()
	f.catching, f.list = catching, list
	f.mu.Unlock()
}

// A node that is catching up delivers nothing, however many blocks pass;
// once it is in sync its list is delivered, and then only a change is.
func TestVersiondChainSourceWaitsForASyncedNode(t *testing.T) {
	t.Parallel()
	v1 := Version{Name: "v1", URL: "https://a.example/v1", SHA256: otherSHA}
	v2 := Version{Name: "v2", URL: "https://a.example/v2", SHA256: otherSHA}
	chain := &fakeChain{blocks: make(chan int64)}
	chain.set(true, v1)
	got := make(chan []Version, 8)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- ChainSource{Chain: chain, Logger: slog.New(slog.DiscardHandler)}.Watch(ctx, func(l []Version) { got <- l })
	}()
	block := func(h int64) { chain.blocks <- h } // returns once the source took it

	for h := int64(1); h <= 3; h++ {
		block(h)
	}
	block(4) // the source has handled block 3
	require.Empty(t, got, "a catching-up node's list is never delivered")

	chain.set(false, v1)
	block(5)
	require.Equal(t, []Version{v1}, <-got)
	block(6)
	block(7)
	require.Empty(t, got, "the same list is not delivered twice")

	chain.set(false, v1, v2)
	block(8)
	require.Equal(t, []Version{v1, v2}, <-got)

	chain.set(true)
	block(9)
	block(10)
	require.Empty(t, got, "an empty list from a node catching up retires nothing")
	chain.set(false)
	block(11)
	require.Empty(t, <-got, "an empty list from a synced node is a real list, delivered")

	cancel()
	require.NoError(t, <-done)
}
