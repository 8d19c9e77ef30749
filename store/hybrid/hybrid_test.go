package hybrid_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/internal/pgtest"
	"github.com/devshard/devshard/store"
	"github.com/devshard/devshard/store/hybrid"
	"github.com/devshard/devshard/store/postgres"
	"github.com/devshard/devshard/store/sqlite"
	"github.com/devshard/devshard/store/storetest"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t)
	storetest.Run(t, func(t *testing.T) *storetest.Target {
		b := setup(t, c)
		tg := &storetest.Target{Store: b.h}
		tg.Reopen = func(t *testing.T) store.Store {
			require.NoError(t, tg.Store.Close())
			tg.Store = open(t, b.cfg)
			return tg.Store
		}
		tg.FailWrites = func(t *testing.T, table string) func() {
			return failWrites(t, b.dsn, table)
		}
		return tg
	})
}

type bundle struct {
	h   *hybrid.Store
	cfg hybrid.Config
	dsn string
	c   *pgtest.Cluster
}

var dbSeq atomic.Int64

func setup(t *testing.T, c *pgtest.Cluster) *bundle {
	t.Helper()
	name := fmt.Sprintf("h%d_%s", dbSeq.Add(1), strings.ToLower(strings.NewReplacer("/", "_").Replace(t.Name())))
	dsn := c.CreateDatabase(t, name[:min(len(name), 60)])
	cfg := hybrid.Config{
		Dir:       t.TempDir(),
		Postgres:  postgres.Config{DSN: dsn},
		Reconnect: 100 * time.Millisecond,
	}
	return &bundle{h: open(t, cfg), cfg: cfg, dsn: dsn, c: c}
}

func open(t testing.TB, cfg hybrid.Config) *hybrid.Store {
	t.Helper()
	h, err := hybrid.Open(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { h.Close() })
	return h
}

func failWrites(t *testing.T, dsn, table string) func() {
	t.Helper()
	exec := func(q string) {
		conn, err := pgx.Connect(context.Background(), dsn)
		require.NoError(t, err)
		defer conn.Close(context.Background())
		_, err = conn.Exec(context.Background(), q)
		require.NoError(t, err)
	}
	exec(`CREATE OR REPLACE FUNCTION fail_write() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'injected write failure'; END $$`)
	exec("CREATE TRIGGER fail_" + table + " BEFORE INSERT ON " + table + " FOR EACH ROW EXECUTE FUNCTION fail_write()")
	return func() { exec("DROP TRIGGER fail_" + table + " ON " + table) }
}

// TestFailoverUnderLoad stops Postgres (pg_ctl stop -m immediate) for a
// few seconds while eight writers append to escrows that live in Postgres,
// and creates escrows during the outage. The Postgres escrows keep taking
// diffs (their tails go to the local tail file); once Postgres is back the
// tails are copied into it while the writers go on. Every acknowledged
// append survives, every escrow reads back gap-free, ends whole in
// Postgres, and nothing is quarantined.
func TestFailoverUnderLoad(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t)
	b := setup(t, c)
	ctx := t.Context()
	const writers = 8
	for id := uint64(1); id <= writers; id++ {
		require.NoError(t, b.h.CreateSession(ctx, storetest.SyntheticSnapshot(id, 1)))
		where, err := b.h.Backend(ctx, id)
		require.NoError(t, err)
		require.Equal(t, hybrid.Postgres, where)
	}

	// phase: 0 before the outage, 1 during it, 2 after Postgres returned.
	var (
		stop            atomic.Bool
		phase           atomic.Int32
		acked           [writers + 1]atomic.Uint64
		tries, failures [3]atomic.Int64
		slowest         atomic.Int64
		wg              sync.WaitGroup
	)
	for id := uint64(1); id <= writers; id++ {
		wg.Go(func() {
			for n := uint64(1); !stop.Load(); {
				p := phase.Load()
				start := time.Now()
				err := b.h.AppendDiff(ctx, storetest.Synthetic(id, n))
				if d := time.Since(start); d > time.Duration(slowest.Load()) {
					slowest.Store(int64(d))
				}
				tries[p].Add(1)
				switch {
				case err == nil:
					acked[id].Store(n)
					n++
					if raceBuild {
						// A host appends at its requests' pace; flat out
						// under the race detector the copy never catches up.
						time.Sleep(5 * time.Millisecond)
					}
				case errors.Is(err, store.ErrUnavailable):
					// The outcome is unknown; the retry of the same diff
					// is idempotent.
					if failures[p].Add(1)%200 == 1 && p == 1 {
						t.Logf("first refusal during the outage: %v", err)
					}
					time.Sleep(20 * time.Millisecond)
				default:
					t.Errorf("escrow %d nonce %d: %v", id, n, err)
					return
				}
			}
		})
	}
	waitAcks := func(min uint64) {
		t.Helper()
		require.Eventually(t, func() bool {
			for id := 1; id <= writers; id++ {
				if acked[id].Load() < min {
					return false
				}
			}
			return true
		}, time.Minute, 10*time.Millisecond)
	}
	waitAcks(20)
	phase.Store(1)
	c.StopImmediate(t)
	require.Eventually(t, func() bool { return !b.h.Up() }, 10*time.Second, 10*time.Millisecond)

	// During the outage new escrows go to local SQLite.
	for id := uint64(101); id <= 104; id++ {
		require.NoError(t, b.h.CreateSession(ctx, storetest.SyntheticSnapshot(id, 1)))
		where, err := b.h.Backend(ctx, id)
		require.NoError(t, err)
		require.Equal(t, hybrid.SQLite, where)
		for n := uint64(1); n <= 5; n++ {
			require.NoError(t, b.h.AppendDiff(ctx, storetest.Synthetic(id, n)))
		}
	}
	time.Sleep(3 * time.Second)
	duringOutage := acked[1].Load()

	restarted := time.Now()
	phase.Store(2)
	c.Restart(t)
	require.Eventually(t, b.h.Up, 30*time.Second, 10*time.Millisecond, "the reconnect loop restores service")
	up := time.Since(restarted)
	require.Eventually(t, func() bool { return len(b.h.Tails()) == 0 }, time.Minute, 10*time.Millisecond, "the tails are copied into Postgres")
	drained := time.Since(restarted)
	waitAcks(duringOutage + 20)
	stop.Store(true)
	wg.Wait()

	rate := func(p int) float64 { return 1 - float64(failures[p].Load())/float64(max(tries[p].Load(), 1)) }
	t.Logf("appends during the outage: %d of %d succeeded (%.1f %%); after it: %d of %d (%.1f %%)",
		tries[1].Load()-failures[1].Load(), tries[1].Load(), 100*rate(1),
		tries[2].Load()-failures[2].Load(), tries[2].Load(), 100*rate(2))
	t.Logf("Postgres back in service %v after the restart began, every tail in Postgres after %v; slowest append %v",
		up.Round(time.Millisecond), drained.Round(time.Millisecond), time.Duration(slowest.Load()).Round(time.Millisecond))
	require.GreaterOrEqual(t, rate(1), 0.95, "appends during the outage")
	require.Less(t, time.Duration(slowest.Load()), 5*time.Second, "no append hung")

	pg, err := postgres.Open(ctx, postgres.Config{DSN: b.dsn})
	require.NoError(t, err)
	defer pg.Close()
	for id := uint64(1); id <= writers; id++ {
		require.Greater(t, acked[id].Load(), duringOutage/2, "escrow %d took appends during the outage", id)
		for _, s := range []store.Store{b.h, pg} {
			got, err := s.Diffs(ctx, id, 1, 1<<20)
			require.NoError(t, err)
			require.GreaterOrEqual(t, uint64(len(got)), acked[id].Load(), "escrow %d lost acknowledged appends", id)
			for i, d := range got {
				require.Equal(t, uint64(i+1), d.Nonce)
				require.Equal(t, storetest.Synthetic(id, uint64(i+1)).Data, d.Data)
			}
		}
	}
	require.Empty(t, b.h.Quarantined())
	// No escrow is on both backends: Postgres has only 1..8, SQLite only 101..104.
	held, err := pg.Holding(ctx, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 101, 102, 103, 104})
	require.NoError(t, err)
	require.Equal(t, []uint64{1, 2, 3, 4, 5, 6, 7, 8}, held)
	local, err := b.h.Local().ListSessions(ctx)
	require.NoError(t, err)
	var ids []uint64
	for _, s := range local {
		ids = append(ids, s.EscrowID)
	}
	require.Equal(t, []uint64{101, 102, 103, 104}, ids)
}

// TestQuarantine: an escrow created locally during an outage, which
// Postgres also holds, is quarantined with a clear error.
func TestQuarantine(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t)
	b := setup(t, c)
	ctx := t.Context()
	c.StopImmediate(t)
	require.Eventually(t, func() bool { return !b.h.Up() }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, b.h.CreateSession(ctx, storetest.SyntheticSnapshot(7, 1)))
	require.NoError(t, b.h.AppendDiff(ctx, storetest.Synthetic(7, 1)))
	require.NoError(t, b.h.Close())

	// Meanwhile another writer put escrow 7 into Postgres.
	c.Restart(t)
	pg, err := postgres.Open(ctx, postgres.Config{DSN: b.dsn})
	require.NoError(t, err)
	require.NoError(t, pg.CreateSession(ctx, storetest.SyntheticSnapshot(7, 1)))
	pg.Close()

	h := open(t, b.cfg)
	err = h.AppendDiff(ctx, storetest.Synthetic(7, 2))
	require.ErrorIs(t, err, store.ErrQuarantined)
	require.Contains(t, err.Error(), "escrow 7 is quarantined")
	_, err = h.Diffs(ctx, 7, 1, 10)
	require.ErrorIs(t, err, store.ErrQuarantined)
	require.Contains(t, h.Quarantined(), uint64(7))
	all, err := h.ListSessions(ctx)
	require.NoError(t, err)
	require.Empty(t, all, "a quarantined escrow is not served")
}

// TestMarkerRefusesSQLiteOnly: while Postgres holds live sessions, the
// directory cannot be opened SQLite-only; once they are pruned it can.
func TestMarkerRefusesSQLiteOnly(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t)
	b := setup(t, c)
	ctx := t.Context()
	require.NoError(t, b.h.CreateSession(ctx, storetest.SyntheticSnapshot(1, 3)))
	require.NoError(t, b.h.Close())

	_, err := sqlite.Open(ctx, b.cfg.Dir, sqlite.Options{})
	require.Error(t, err)
	require.Contains(t, err.Error(), "Postgres")
	require.Contains(t, err.Error(), "still holds 1 live sessions")

	h := open(t, b.cfg)
	require.NoError(t, h.Prune(ctx, 3))
	require.NoError(t, h.Close())
	s, err := sqlite.Open(ctx, b.cfg.Dir, sqlite.Options{})
	require.NoError(t, err)
	require.NoError(t, s.Close())
}

// TestStartsWhilePostgresIsDown: the host boots during an outage, serves
// new escrows locally and picks Postgres up when it returns.
func TestStartsWhilePostgresIsDown(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t)
	b := setup(t, c)
	ctx := t.Context()
	require.NoError(t, b.h.CreateSession(ctx, storetest.SyntheticSnapshot(1, 1)))
	require.NoError(t, b.h.Close())
	c.StopImmediate(t)

	h := open(t, b.cfg)
	require.False(t, h.Up())
	_, err := h.Session(ctx, 1)
	require.ErrorIs(t, err, store.ErrUnavailable)
	require.NoError(t, h.CreateSession(ctx, storetest.SyntheticSnapshot(2, 1)))
	c.Restart(t)
	require.Eventually(t, h.Up, 30*time.Second, 10*time.Millisecond)
	got, err := h.Session(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, uint64(1), got.EscrowID)
	where, err := h.Backend(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, hybrid.SQLite, where)
}

// TestTailAcrossRestart: a Postgres escrow's diffs written during an
// outage are read back, after the host restarts during the same outage,
// from the tail file, the escrow takes more, and once Postgres returns
// Postgres holds the whole chain.
func TestTailAcrossRestart(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t)
	b := setup(t, c)
	ctx := t.Context()
	require.NoError(t, b.h.CreateSession(ctx, storetest.SyntheticSnapshot(1, 1)))
	for n := uint64(1); n <= 3; n++ {
		require.NoError(t, b.h.AppendDiff(ctx, storetest.Synthetic(1, n)))
	}
	c.StopImmediate(t)
	for n := uint64(4); n <= 5; n++ {
		require.NoError(t, b.h.AppendDiff(ctx, storetest.Synthetic(1, n)))
	}
	require.False(t, b.h.Up())
	require.NoError(t, b.h.AppendDiff(ctx, storetest.Synthetic(1, 5)), "a replay of a tail diff")
	var gap *store.GapError
	require.ErrorAs(t, b.h.AppendDiff(ctx, storetest.Synthetic(1, 7)), &gap)
	_, err := b.h.Diffs(ctx, 1, 1, 10)
	require.ErrorIs(t, err, store.ErrUnavailable, "the history before the tail is in Postgres")
	require.NoError(t, b.h.Close())

	h := open(t, b.cfg)
	s, err := h.Session(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, uint64(5), s.LastNonce)
	got, err := h.Diffs(ctx, 1, 4, 10)
	require.NoError(t, err)
	require.Len(t, got, 2)
	require.Equal(t, storetest.Synthetic(1, 5).Data, got[1].Data)
	require.NoError(t, h.AppendDiff(ctx, storetest.Synthetic(1, 6)))
	require.Equal(t, map[uint64]uint64{1: 6}, h.Tails())

	c.Restart(t)
	require.Eventually(t, func() bool { return h.Up() && len(h.Tails()) == 0 }, 30*time.Second, 10*time.Millisecond)
	pg, err := postgres.Open(ctx, postgres.Config{DSN: b.dsn})
	require.NoError(t, err)
	defer pg.Close()
	all, err := pg.Diffs(ctx, 1, 1, 100)
	require.NoError(t, err)
	require.Len(t, all, 6)
	for i, d := range all {
		require.Equal(t, storetest.Synthetic(1, uint64(i+1)).Data, d.Data)
	}
	require.Empty(t, h.Quarantined())
}

// TestTailConflictIsQuarantined: when Postgres returns holding another
// diff at a nonce the tail wrote, the escrow is quarantined and neither
// copy is overwritten.
func TestTailConflictIsQuarantined(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t)
	b := setup(t, c)
	ctx := t.Context()
	require.NoError(t, b.h.CreateSession(ctx, storetest.SyntheticSnapshot(1, 1)))
	require.NoError(t, b.h.AppendDiff(ctx, storetest.Synthetic(1, 1)))
	c.StopImmediate(t)
	require.NoError(t, b.h.AppendDiff(ctx, storetest.Synthetic(1, 2)))
	require.NoError(t, b.h.Close())

	// Meanwhile Postgres took another diff at nonce 2.
	c.Restart(t)
	pg, err := postgres.Open(ctx, postgres.Config{DSN: b.dsn})
	require.NoError(t, err)
	defer pg.Close()
	other := storetest.Synthetic(1, 2)
	other.Data = append([]byte("other "), other.Data...)
	require.NoError(t, pg.AppendDiff(ctx, other))

	h := open(t, b.cfg)
	require.Eventually(t, func() bool { return len(h.Quarantined()) == 1 }, 30*time.Second, 10*time.Millisecond)
	err = h.AppendDiff(ctx, storetest.Synthetic(1, 3))
	require.ErrorIs(t, err, store.ErrQuarantined)
	require.Contains(t, err.Error(), "does not continue the history Postgres holds")
	got, err := pg.Diffs(ctx, 1, 2, 1)
	require.NoError(t, err)
	require.Equal(t, other.Data, got[0].Data, "Postgres's diff is not overwritten")
	require.Equal(t, map[uint64]uint64{1: 2}, h.Tails(), "the tail is kept for an operator")
}

// TestListSessionsCountsTails: until a tail is copied into Postgres, the
// session's last nonce is the tail's.
func TestListSessionsCountsTails(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t)
	b := setup(t, c)
	ctx := t.Context()
	require.NoError(t, b.h.CreateSession(ctx, storetest.SyntheticSnapshot(1, 1)))
	require.NoError(t, b.h.AppendDiff(ctx, storetest.Synthetic(1, 1)))
	c.StopImmediate(t)
	require.NoError(t, b.h.AppendDiff(ctx, storetest.Synthetic(1, 2)))
	require.NoError(t, b.h.Close())
	c.Restart(t)

	cfg := b.cfg
	cfg.Reconnect = time.Hour // no tick copies the tail during the test
	h := open(t, cfg)
	require.True(t, h.Up())
	require.Equal(t, map[uint64]uint64{1: 2}, h.Tails())
	all, err := h.ListSessions(ctx)
	require.NoError(t, err)
	require.Len(t, all, 1)
	require.Equal(t, uint64(2), all[0].LastNonce)
}

// TestNewEscrowDuringOutage: while Postgres is down, an escrow newer than
// any Postgres holds is known not to be anywhere, so the host can create
// it at once; an older one may be in Postgres, and waits for it. The mark
// survives a restart during the outage, and a directory that never reached
// Postgres knows no mark.
func TestNewEscrowDuringOutage(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t)
	b := setup(t, c)
	ctx := t.Context()
	require.NoError(t, b.h.CreateSession(ctx, storetest.SyntheticSnapshot(4, 1)))
	c.StopImmediate(t)
	require.Eventually(t, func() bool { return !b.h.Up() }, 10*time.Second, 10*time.Millisecond)

	_, err := b.h.Session(ctx, 5)
	require.ErrorIs(t, err, store.ErrNotFound, "escrow 5 is newer than any in Postgres")
	require.Contains(t, err.Error(), "newer than any escrow Postgres")
	_, err = b.h.Session(ctx, 3)
	require.ErrorIs(t, err, store.ErrUnavailable, "escrow 3 may be in Postgres")
	require.NoError(t, b.h.CreateSession(ctx, storetest.SyntheticSnapshot(5, 1)))
	require.NoError(t, b.h.AppendDiff(ctx, storetest.Synthetic(5, 1)))
	require.NoError(t, b.h.Close())

	h := open(t, b.cfg) // still down: the mark is read back
	require.False(t, h.Up())
	_, err = h.Session(ctx, 6)
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = h.Session(ctx, 4)
	require.ErrorIs(t, err, store.ErrUnavailable)
	got, err := h.Session(ctx, 5)
	require.NoError(t, err)
	require.Equal(t, uint64(1), got.LastNonce)

	fresh := b.cfg
	fresh.Dir = t.TempDir()
	never := open(t, fresh)
	_, err = never.Session(ctx, 6)
	require.ErrorIs(t, err, store.ErrUnavailable, "without a mark, any escrow may be in Postgres")

	c.Restart(t)
	require.Eventually(t, h.Up, 30*time.Second, 10*time.Millisecond)
	where, err := h.Backend(ctx, 5)
	require.NoError(t, err)
	require.Equal(t, hybrid.SQLite, where)
	require.Empty(t, h.Quarantined())
}
