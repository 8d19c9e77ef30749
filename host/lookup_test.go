package host

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/session/sessiontest"
	"github.com/devshard/devshard/store/sqlite"
)

// countingChain knows no escrow. It counts the lookups it is asked, and
// the most in flight at once; while gate is open (not closed) each lookup
// waits for it.
type countingChain struct {
	gate chan struct{}

	mu       sync.Mutex
	asked    map[uint64]int
	inFlight int
	most     int
}

func (c *countingChain) EscrowSnapshot(_ context.Context, id uint64) (*sessionpb.EscrowSnapshot, error) {
	c.mu.Lock()
	c.asked[id]++
	c.inFlight++
	c.most = max(c.most, c.inFlight)
	c.mu.Unlock()
	if c.gate != nil {
		<-c.gate
	}
	c.mu.Lock()
	c.inFlight--
	c.mu.Unlock()
	return nil, fmt.Errorf("%w: %d", ErrUnknownEscrow, id)
}

func (c *countingChain) lookups(id uint64) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.asked[id]
}

func lookupSetup(t *testing.T, chain *countingChain, missFor time.Duration) (*Engine, string) {
	t.Helper()
	f := sessiontest.New(1, sessiontest.DefaultOptions())
	st, err := sqlite.Open(context.Background(), t.TempDir(), sqlite.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	chain.asked = map[uint64]int{}
	e := New(Config{Key: f.Hosts[0], Store: st, Escrows: chain, Executor: executor.Builtin{}, ChainID: testChainID, MissFor: missFor,
		// Long waits, so a 404 that waits for them shows against any load.
		LoadWait: 30 * time.Second, StartWait: 30 * time.Second})
	e.MarkReady()
	srv := httptest.NewServer(Handler(e, "test"))
	t.Cleanup(srv.Close)
	t.Cleanup(e.Wait)
	return e, srv.URL
}

// Item c: a request naming an escrow the host does not know asked the
// chain again on every request, and an inference stream for it recreated
// the failed load until its 5 s wait ran out. One lookup per unknown
// escrow is remembered for a while, and the 404 comes at once.
//
// Without the remembered miss the 20 requests below caused 20 lookups, and
// the engine's stream call took the whole StartWait (5 s) with a lookup
// on every turn of its wait (checked on the parent commit).
func TestAttackUnknownEscrowCostsOneLookup(t *testing.T) {
	t.Parallel()
	chain := &countingChain{}
	e, url := lookupSetup(t, chain, time.Minute)
	stranger := newKey(t, 104)
	raw := inferenceBody(t, 1, request(1))
	began := time.Now()
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, body := signedPost(t, url+"/v1/sessions/404/inference", stranger, to(e.Address()), raw)
			require.Equal(t, http.StatusNotFound, status, string(body))
		}()
	}
	wg.Wait()
	for range 10 {
		status, body := signedPost(t, url+"/v1/sessions/404/inference", stranger, to(e.Address()), raw)
		require.Equal(t, http.StatusNotFound, status, string(body))
		require.Contains(t, string(body), "unknown escrow: 404")
	}
	_, _, err := e.Inference(t.Context(), 404, 1, request(1), func(string) error { return nil })
	require.ErrorIs(t, err, ErrUnknownEscrow)
	require.Less(t, time.Since(began), 10*time.Second, "the 404s come at once, not after the 30 s waits")
	require.Equal(t, 1, chain.lookups(404))
}

// Requests naming many unknown escrows ask the chain at most Lookups at a
// time. Without the bound all 12 lookups were in flight at once (checked
// by taking the semaphore out of lookup).
func TestAttackUnknownEscrowLookupsAreBounded(t *testing.T) {
	t.Parallel()
	chain := &countingChain{gate: make(chan struct{})}
	e, _ := lookupSetup(t, chain, time.Minute)
	errs := make(chan error, 12)
	for id := uint64(1000); id < 1012; id++ {
		go func() {
			_, err := e.escrow(t.Context(), id)
			errs <- err
		}()
	}
	require.Eventually(t, func() bool {
		chain.mu.Lock()
		defer chain.mu.Unlock()
		return chain.inFlight >= e.cfg.Lookups
	}, 5*time.Second, time.Millisecond)
	time.Sleep(50 * time.Millisecond) // room for a lookup past the bound to start
	close(chain.gate)
	for range 12 {
		require.ErrorIs(t, <-errs, ErrUnknownEscrow)
	}
	chain.mu.Lock()
	defer chain.mu.Unlock()
	require.Equal(t, 4, chain.most)
}

// A remembered miss expires, so an escrow the chain learns of later is
// found. Without the memory the second call asked again.
func TestUnknownEscrowMissExpires(t *testing.T) {
	t.Parallel()
	chain := &countingChain{}
	e, _ := lookupSetup(t, chain, 100*time.Millisecond)
	_, err := e.escrow(t.Context(), 5)
	require.ErrorIs(t, err, ErrUnknownEscrow)
	_, err = e.escrow(t.Context(), 5)
	require.True(t, errors.Is(err, ErrUnknownEscrow))
	require.Equal(t, 1, chain.lookups(5), "remembered")
	require.Eventually(t, func() bool {
		_, err := e.escrow(t.Context(), 5)
		return errors.Is(err, ErrUnknownEscrow) && chain.lookups(5) == 2
	}, 5*time.Second, 20*time.Millisecond, "asked again once the miss expired")
}
