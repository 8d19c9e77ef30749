package storetest

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/store"
)

// CrashWriterEnv, set in a test binary's environment, turns it into the
// writer of a crash test (see MaybeRunCrashWriter).
const CrashWriterEnv = "STORETEST_CRASH_WRITER"

// Crash test workload: four escrows, two appended one diff at a time and two
// through a group-commit writer, so a kill lands in either path.
const (
	crashEpoch  = 1
	crashLength = 250
)

var crashEscrows = []uint64{901, 902, 903, 904}

// MaybeRunCrashWriter makes the test binary a crash-test writer when
// CrashWriterEnv is set: it opens the store with open, appends the crash
// workload and prints "ack <escrow> <nonce>" on stdout after each append
// the store acknowledged, until it is killed. Call it first in TestMain; it
// returns at once in a normal test run.
func MaybeRunCrashWriter(open func(ctx context.Context) (store.Store, error)) {
	if os.Getenv(CrashWriterEnv) == "" {
		return
	}
	if err := crashWriter(open); err != nil {
		fmt.Fprintln(os.Stderr, "crash writer:", err)
		os.Exit(2)
	}
	os.Exit(0)
}

func crashWriter(open func(ctx context.Context) (store.Store, error)) error {
	ctx := context.Background()
	chains := make([]*Chain, len(crashEscrows))
	for i, id := range crashEscrows {
		chains[i] = NewChain(id, crashEpoch, crashLength)
	}
	s, err := open(ctx)
	if err != nil {
		return err
	}
	for _, c := range chains {
		if err := s.CreateSession(ctx, c.Snapshot); err != nil {
			return err
		}
	}
	fmt.Println("ready")
	var out sync.Mutex
	ack := func(d store.Diff) {
		out.Lock()
		defer out.Unlock()
		// One write per line: the parent must never see half an ack.
		os.Stdout.WriteString("ack " + strconv.FormatUint(d.EscrowID, 10) + " " + strconv.FormatUint(d.Nonce, 10) + "\n")
	}
	gc := NewCommitter(s, 0)
	var wg sync.WaitGroup
	errs := make(chan error, len(chains))
	for i, c := range chains {
		wg.Go(func() {
			for _, d := range c.Diffs {
				var err error
				if i%2 == 0 {
					err = s.AppendDiff(ctx, d)
				} else {
					err = gc.Append(ctx, d)
				}
				if err != nil {
					errs <- err
					return
				}
				ack(d)
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// Crash runs the crash test: it starts the test binary as a writer child
// with env added to its environment, kills it with SIGKILL once it has
// acknowledged some appends (so the kill lands mid-append), then opens the
// store again with open and checks that it is consistent (every chain is
// gap-free, byte-identical to what was written, its sealed index matches
// its diffs and it recovers to the right root) and that every acknowledged
// diff is present.
func Crash(t *testing.T, env []string, open func(t *testing.T) store.Store) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), CrashWriterEnv+"=1"), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())

	acked := map[uint64]uint64{}
	total := 0
	killAt := 100 + time.Now().Nanosecond()%60
	lines := bufio.NewScanner(stdout)
	for lines.Scan() {
		f := strings.Fields(lines.Text())
		if len(f) != 3 || f[0] != "ack" {
			continue
		}
		id, _ := strconv.ParseUint(f[1], 10, 64)
		n, _ := strconv.ParseUint(f[2], 10, 64)
		acked[id] = max(acked[id], n)
		if total++; total == killAt {
			require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		}
	}
	err = cmd.Wait()
	require.Error(t, err, "the writer must be killed before it finishes; stderr:\n%s", stderr.String())
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	require.True(t, ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL, "writer ended with %v; stderr:\n%s", err, stderr.String())
	require.GreaterOrEqual(t, total, killAt)
	t.Logf("writer killed after %d acknowledged appends: %v", total, acked)

	s := open(t)
	ctx := t.Context()
	for _, id := range crashEscrows {
		last, err := s.LastNonce(ctx, id)
		require.NoError(t, err)
		c := NewChain(id, crashEpoch, int(min(last+1, crashLength)))
		require.GreaterOrEqual(t, last, acked[id], "escrow %d lost acknowledged diffs", id)
		got, err := s.Diffs(ctx, id, 1, crashLength+1)
		require.NoError(t, err)
		require.Len(t, got, int(last), "escrow %d: a gap-free chain of %d diffs", id, last)
		var want []store.Sealed
		for i, d := range got {
			require.Equal(t, uint64(i+1), d.Nonce)
			require.Equal(t, c.Diffs[i].Data, d.Data, "escrow %d nonce %d", id, d.Nonce)
			want = append(want, c.Diffs[i].Sealed...)
		}
		sealed, err := s.Sealed(ctx, id)
		require.NoError(t, err)
		require.ElementsMatch(t, want, sealed, "escrow %d: the sealed index matches the stored diffs exactly", id)
		if last > 0 {
			sess, _, err := store.Recover(ctx, s, id, nil)
			require.NoError(t, err)
			require.Equal(t, c.Roots[last-1], sess.Root())
		}
		if last < crashLength {
			require.NoError(t, s.AppendDiff(ctx, c.Diffs[last]), "escrow %d takes the next diff after the crash", id)
		}
	}
}
