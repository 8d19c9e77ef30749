package devnet

import (
	"fmt"
	"os"
	"regexp"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/internal/pgcluster"
	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// The fault suite: the devnet under a steady load while its storage or a
// host fails, then an audit read from the chain. It is the operator's
// experiment of issue 18, as a test.
//
//   - hybrid: Postgres is crashed (pg_ctl stop -m immediate) for 20 s under
//     load, and a host is killed with SIGKILL after it returns. At least 95 %
//     of the requests begun during the outage succeed, every request begun
//     after it succeeds, and no answered request goes unpaid.
//   - postgres: the same outage without a fallback. Requests fail fast and
//     say why, service is back within 5 s of Postgres' return, and no
//     answered request goes unpaid.
func TestStorageFaults(t *testing.T) {
	t.Run("hybrid", func(t *testing.T) {
		e := startOnPostgres(t, StorageHybrid)
		before := e.balances()
		pg := e.nw.Postgres()

		load := e.startLoad(6, "hybrid")
		down, up := crashPostgres(t, pg)
		time.Sleep(12 * time.Second)

		// A host dies with kill -9 under the same load, and comes back.
		victim := e.nw.Hosts[1]
		killed := time.Now()
		victim.Kill()
		time.Sleep(3 * time.Second)
		require.NoError(t, victim.Start())
		require.NoError(t, victim.WaitReady(e.ctx, 60*time.Second))
		time.Sleep(5 * time.Second)
		recs := load.stop()

		rep := report(recs, down, up)
		t.Logf("hybrid: %s", rep)
		logFailures(t, recs)
		require.Equal(t, rep.before.total, rep.before.ok, "every request before the outage succeeds")
		require.GreaterOrEqual(t, rep.during.rate(), 0.95, "at least 95%% of the requests begun during the outage succeed")
		require.Positive(t, rep.during.total)
		after := window(recs, up, killed)
		require.Equal(t, after.total, after.ok, "every request begun after Postgres returned succeeds")
		kill := window(recs, killed, time.Now())
		require.Equal(t, kill.total, kill.ok, "a host killed with kill -9 costs the app no request")

		e.audit(before, recs)
	})

	t.Run("postgres", func(t *testing.T) {
		e := startOnPostgres(t, StoragePostgres)
		before := e.balances()
		pg := e.nw.Postgres()

		load := e.startLoad(6, "postgres")
		down, up := crashPostgres(t, pg)
		time.Sleep(15 * time.Second)
		recs := load.stop()

		rep := report(recs, down, up)
		t.Logf("postgres: %s", rep)
		logFailures(t, recs)
		require.Equal(t, rep.before.total, rep.before.ok, "every request before the outage succeeds")
		for _, r := range recs {
			if r.ok {
				continue
			}
			require.Less(t, r.took(), failFast, "a request that fails during the outage fails fast: %s", r.err)
			require.Regexp(t, `(?i)storage|could not serve|no host`, r.err, "a failed request says why")
		}
		resumed := window(recs, up.Add(resumeWithin), time.Now())
		require.Positive(t, resumed.total)
		require.Equal(t, resumed.total, resumed.ok, "every request begun %s after Postgres returned succeeds", resumeWithin)

		e.audit(before, recs)
	})
}

const (
	// outage is how long Postgres stays down.
	outage = 20 * time.Second
	// failFast bounds a request that fails for want of storage.
	failFast = 5 * time.Second
	// resumeWithin is how soon after Postgres returns the service is whole.
	resumeWithin = 5 * time.Second
)

// crashPostgres lets the load run 8 s, then crashes Postgres (pg_ctl stop
// -m immediate), starts it again outage later, and says when it went down
// and when it was back.
func crashPostgres(t *testing.T, pg *pgcluster.Cluster) (down, up time.Time) {
	time.Sleep(8 * time.Second)
	down = time.Now()
	require.NoError(t, pg.Stop(pgcluster.Immediate))
	time.Sleep(outage)
	up = time.Now()
	require.NoError(t, pg.Start())
	return down, up
}

// startOnPostgres starts a devnet of 3 hosts storing in storage, on the
// devnet's own Postgres cluster.
func startOnPostgres(t *testing.T, storage Storage) *e2e {
	t.Setenv("PGHOST", "") // the devnet's own cluster, whatever the shell says
	e := startNetwork(t, 10*time.Minute, func(c *Config) {
		// Not t.TempDir: the postgres user must reach the home when the
		// test runs as root, and t.TempDir's parent is 0700.
		home, err := os.MkdirTemp("", "devnet-pg-")
		require.NoError(t, err)
		t.Cleanup(func() { // after the devnet closed
			if t.Failed() {
				t.Logf("the devnet's home is kept for its logs: %s", home)
				return
			}
			os.RemoveAll(home)
		})
		c.Home, c.Storage, c.Hosts = home, storage, 3
		c.ThinkTime = 2 * time.Millisecond
	})
	require.NotNil(t, e.nw.Postgres(), "the devnet runs its own cluster when PGHOST is unset")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("postgres log tail:\n%s", e.nw.Postgres().LogTail())
		}
	})
	return e
}

// loadRecord is one request of a steady load.
type loadRecord struct {
	start, end time.Time
	ok         bool
	err        string
	// charged is what the app was charged for the answer.
	charged uint64
}

func (r loadRecord) took() time.Duration { return r.end.Sub(r.start) }

// steadyLoad is parallel clients each sending one request after another.
type steadyLoad struct {
	done chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	recs []loadRecord
}

// startLoad starts parallel clients sending requests until stop; every
// third is streamed, and every answer is checked against the model.
func (e *e2e) startLoad(parallel int, tag string) *steadyLoad {
	l := &steadyLoad{done: make(chan struct{})}
	for w := range parallel {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			c := e.client()
			for i := 0; ; i++ {
				select {
				case <-l.done:
					return
				default:
				}
				req := ChatRequest{Model: executor.BuiltinModel, MaxTokens: 8 + i%24,
					Messages: []executor.Message{{Role: "user", Content: fmt.Sprintf("%s worker %d request %d", tag, w, i)}}}
				rec := loadRecord{start: time.Now()}
				res, err := c.Chat(e.ctx, req, i%3 == 0)
				rec.end = time.Now()
				switch {
				case err != nil:
					rec.err = err.Error()
				case res.Text != expectedText(e.t, req):
					rec.err = fmt.Sprintf("answer %q is not the model's", res.Text)
				default:
					rec.ok, rec.charged = true, e.spent(res)
				}
				l.mu.Lock()
				l.recs = append(l.recs, rec)
				l.mu.Unlock()
				if !rec.ok {
					time.Sleep(100 * time.Millisecond) // as a client backs off
				}
			}
		}()
	}
	return l
}

// stop stops the clients, lets their requests in flight finish, and
// returns every request in the order they began.
func (l *steadyLoad) stop() []loadRecord {
	close(l.done)
	l.wg.Wait()
	sort.Slice(l.recs, func(i, j int) bool { return l.recs[i].start.Before(l.recs[j].start) })
	return l.recs
}

// tally counts the requests of a window and those that succeeded.
type tally struct{ ok, total int }

func (t tally) rate() float64 {
	if t.total == 0 {
		return 1
	}
	return float64(t.ok) / float64(t.total)
}

func (t tally) String() string { return fmt.Sprintf("%d/%d (%.1f%%)", t.ok, t.total, 100*t.rate()) }

// window tallies the requests begun in [from, to).
func window(recs []loadRecord, from, to time.Time) tally {
	return tallyOf(recs, func(r loadRecord) bool { return !r.start.Before(from) && r.start.Before(to) })
}

// tallyOf tallies the requests that in says belong.
func tallyOf(recs []loadRecord, in func(loadRecord) bool) tally {
	var t tally
	for _, r := range recs {
		if !in(r) {
			continue
		}
		t.total++
		if r.ok {
			t.ok++
		}
	}
	return t
}

// outageReport is a load's requests around an outage from down to up:
// those done before it, those under way during it, those begun after it.
type outageReport struct {
	before, during, after tally
	// fullService is how long after up the last request failed (0: none
	// failed after up).
	fullService time.Duration
	// slowestFailure is the longest a failed request took.
	slowestFailure time.Duration
}

func report(recs []loadRecord, down, up time.Time) outageReport {
	rep := outageReport{
		// A request in flight when Postgres stopped counts in the outage.
		before: tallyOf(recs, func(r loadRecord) bool { return r.end.Before(down) }),
		during: tallyOf(recs, func(r loadRecord) bool { return !r.end.Before(down) && r.start.Before(up) }),
		after:  tallyOf(recs, func(r loadRecord) bool { return !r.start.Before(up) }),
	}
	for _, r := range recs {
		if r.ok {
			continue
		}
		rep.slowestFailure = max(rep.slowestFailure, r.took())
		if r.end.After(up) {
			rep.fullService = max(rep.fullService, r.end.Sub(up))
		}
	}
	return rep
}

func (r outageReport) String() string {
	return fmt.Sprintf("before the outage %s, during %s, after %s; full service %s after Postgres returned; the slowest failure took %s",
		r.before, r.during, r.after, r.fullService.Round(10*time.Millisecond), r.slowestFailure.Round(time.Millisecond))
}

// logFailures logs what the failed requests were told, each sentence once
// with its count (numbers in it elided).
func logFailures(t *testing.T, recs []loadRecord) {
	digits := regexp.MustCompile(`[0-9]+`)
	count := map[string]int{}
	for _, r := range recs {
		if !r.ok {
			count[digits.ReplaceAllString(r.err, "N")]++
		}
	}
	for msg, n := range count {
		t.Logf("%d failed: %s", n, msg)
	}
}

// audit settles everything and checks the books from the chain: every
// escrow the gateway opened is settled (none expired with answered
// requests in it), each conserves its amount, the inferences finished on
// chain are the requests the app saw succeed, their costs are what the app
// was charged, and every account moved by exactly that.
func (e *e2e) audit(before balances, recs []loadRecord) {
	e.t.Helper()
	var succeeded int
	var charged uint64
	for _, r := range recs {
		if r.ok {
			succeeded++
			charged += r.charged
		}
	}
	require.NoError(e.t, e.nw.Gateway.Gateway.SettleAll(e.ctx))

	q := devshardtypes.NewQueryClient(e.nw.Chain.Conn())
	var ss []settled
	for id := uint64(1); ; id++ {
		res, err := q.Escrow(e.ctx, &devshardtypes.QueryEscrowRequest{Id: id})
		if status.Code(err) == codes.NotFound {
			break
		}
		require.NoError(e.t, err)
		// A settlement in its challenge window lands when the window closes.
		st := res.Escrow.Status
		for deadline := time.Now().Add(60 * time.Second); st == devshardtypes.EscrowOpen && time.Now().Before(deadline); {
			time.Sleep(time.Second)
			res, err = q.Escrow(e.ctx, &devshardtypes.QueryEscrowRequest{Id: id})
			require.NoError(e.t, err)
			st = res.Escrow.Status
		}
		require.Equal(e.t, devshardtypes.EscrowSettled, st, "escrow %d is settled, not left to expire with its answers unpaid", id)
		ss = append(ss, e.readSettlement(id, e.settleTx(id)))
	}
	require.NotEmpty(e.t, ss, "no escrow was opened")
	epochs := map[uint64]bool{}
	var finished uint64
	for _, s := range ss {
		epochs[s.snap.Epoch] = true
		for _, hs := range s.msg.HostStats {
			finished += hs.Finished
		}
	}
	for epoch := range epochs {
		require.NoError(e.t, waitClaims(e.ctx, e.nw, epoch))
	}
	require.Equal(e.t, uint64(succeeded), finished, "the inferences finished on chain are the requests the app saw succeed")
	e.checkBooks(before, charged, ss)
	e.t.Logf("audit: %d escrows settled, %d inferences paid, %d charged", len(ss), finished, charged)
}
