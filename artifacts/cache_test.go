package artifacts

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

var testEnv = Env{Binary: "b1", Executor: "x1", CPUFeatures: "amd64:avx2 sse4_2", KernelRelease: "6.1.0", Params: "fp16"}

type bundle struct {
	root  string
	cache *Cache
	reg   *prometheus.Registry
	// prepared counts the calls of prepareN's funcs, by id.
	mu       sync.Mutex
	prepared map[string]int
}

func setup(t *testing.T, maxBytes int64) *bundle {
	t.Helper()
	b := &bundle{root: t.TempDir(), reg: prometheus.NewRegistry(), prepared: map[string]int{}}
	b.cache = b.open(t, testEnv, maxBytes)
	return b
}

func (b *bundle) open(t *testing.T, env Env, maxBytes int64) *Cache {
	t.Helper()
	b.reg = prometheus.NewRegistry()
	c, err := Open(b.root, env, Options{MaxBytes: maxBytes, Registerer: b.reg})
	require.NoError(t, err)
	return c
}

// content is the artifact id's bytes: n bytes that differ from id to id.
func content(id string, n int) []byte {
	return bytes.Repeat([]byte(id+"|"), n/(len(id)+1)+1)[:n]
}

// prepareN returns a prepare func that writes content(id, n) and counts
// its calls.
func (b *bundle) prepareN(id string, n int) func(context.Context, string) error {
	return func(_ context.Context, tmp string) error {
		b.mu.Lock()
		b.prepared[id]++
		b.mu.Unlock()
		return os.WriteFile(tmp, content(id, n), 0o644)
	}
}

func (b *bundle) preparedCount(id string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.prepared[id]
}

func acquire(t *testing.T, b *bundle, id string, n int) *Handle {
	t.Helper()
	h, err := b.cache.Acquire(t.Context(), id, b.prepareN(id, n))
	require.NoError(t, err)
	got, err := os.ReadFile(h.Path())
	require.NoError(t, err)
	require.Equal(t, content(id, n), got, "artifact %s", id)
	return h
}

// dirBytes is the bytes of every file in dir, as the disk holds them.
func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	des, err := os.ReadDir(dir)
	require.NoError(t, err)
	var n int64
	for _, de := range des {
		fi, err := de.Info()
		require.NoError(t, err)
		n += fi.Size()
	}
	return n
}

func TestArtifactHitIsVerifiedAndCounted(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	acquire(t, b, "m1", 1000).Release()
	acquire(t, b, "m1", 1000).Release()
	require.Equal(t, 1, b.preparedCount("m1"))
	s := b.cache.Stats()
	require.Equal(t, Stats{BytesUsed: 1000 + sumFileSize, Entries: 1, Hits: 1, Misses: 1, Preparations: 1}, s)
	require.Equal(t, int64(1000+sumFileSize), dirBytes(t, b.cache.Dir()))
	require.Equal(t, 1.0, metric(t, b.reg, "hits_total"))
	require.Equal(t, float64(1000+sumFileSize), metric(t, b.reg, "bytes_used"))

	// Kept across a restart, and still verified.
	c := b.open(t, testEnv, 0)
	h, err := c.Acquire(t.Context(), "m1", b.prepareN("m1", 1000))
	require.NoError(t, err)
	defer h.Release()
	require.Equal(t, 1, b.preparedCount("m1"))
	require.Equal(t, int64(1), c.Stats().Hits)
}

// One flipped byte in a cached artifact is found before it is handed out;
// the artifact is prepared again and the one returned is good.
func TestArtifactFlippedByteIsPreparedAgain(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	h := acquire(t, b, "m1", 4096)
	path := h.Path()
	h.Release()

	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	raw[1234] ^= 0x01
	require.NoError(t, os.WriteFile(path, raw, 0o644))

	acquire(t, b, "m1", 4096).Release()
	require.Equal(t, 2, b.preparedCount("m1"))
	s := b.cache.Stats()
	require.Equal(t, int64(1), s.ChecksumFailures)
	require.Equal(t, 1.0, metric(t, b.reg, "checksum_failures_total"))
	require.Equal(t, int64(4096+sumFileSize), s.BytesUsed)
	require.Equal(t, int64(4096+sumFileSize), dirBytes(t, b.cache.Dir()))
}

// An artifact of another environment is never loaded: its directory is
// deleted at Open, and a file brought into ours without our checksum is
// deleted at Open or refused at Acquire.
func TestArtifactFromAnotherEnvIsNotLoaded(t *testing.T) {
	t.Parallel()
	other := testEnv
	other.KernelRelease = "6.2.0"
	require.NotEqual(t, testEnv.Hash(), other.Hash())

	t.Run("other environment's directory is deleted at Open", func(t *testing.T) {
		t.Parallel()
		b := setup(t, 0)
		oc := b.open(t, other, 0)
		h, err := oc.Acquire(t.Context(), "m1", b.prepareN("m1", 100))
		require.NoError(t, err)
		h.Release()
		// Not an environment's name: left alone.
		require.NoError(t, os.Mkdir(filepath.Join(b.root, "notes"), 0o755))

		c := b.open(t, testEnv, 0)
		require.NoDirExists(t, filepath.Join(b.root, other.Hash()))
		require.DirExists(t, filepath.Join(b.root, "notes"))
		h, err = c.Acquire(t.Context(), "m1", b.prepareN("m1", 100))
		require.NoError(t, err)
		h.Release()
		require.Equal(t, 2, b.preparedCount("m1"))
	})

	t.Run("a file copied in without its checksum is deleted at Open", func(t *testing.T) {
		t.Parallel()
		b := setup(t, 0)
		stray := filepath.Join(b.cache.Dir(), "m1")
		require.NoError(t, os.WriteFile(stray, content("m1", 100), 0o644))
		c := b.open(t, testEnv, 0)
		require.NoFileExists(t, stray)
		require.Equal(t, 0, c.Stats().Entries)
	})

	t.Run("a file copied in with the other environment's checksum is refused at Acquire", func(t *testing.T) {
		t.Parallel()
		b := setup(t, 0)
		oc := b.open(t, other, 0)
		h, err := oc.Acquire(t.Context(), "m1", func(_ context.Context, tmp string) error {
			return os.WriteFile(tmp, []byte("prepared elsewhere"), 0o644)
		})
		require.NoError(t, err)
		h.Release()
		files := map[string][]byte{}
		for _, name := range []string{"m1", "m1.sum"} {
			files[name], err = os.ReadFile(filepath.Join(oc.Dir(), name))
			require.NoError(t, err)
		}
		c := b.open(t, testEnv, 0)
		for name, raw := range files {
			require.NoError(t, os.WriteFile(filepath.Join(c.Dir(), name), raw, 0o644))
		}

		c = b.open(t, testEnv, 0)
		require.Equal(t, 1, c.Stats().Entries, "well-formed, so indexed")
		h, err = c.Acquire(t.Context(), "m1", b.prepareN("m1", 100))
		require.NoError(t, err)
		defer h.Release()
		got, err := os.ReadFile(h.Path())
		require.NoError(t, err)
		require.Equal(t, content("m1", 100), got)
		require.Equal(t, int64(1), c.Stats().ChecksumFailures)
	})
}

// Eight Acquires of one unprepared id share one preparation and get the
// same verified path.
func TestArtifactConcurrentAcquireSharesOnePreparation(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	release := make(chan struct{})
	var calls atomic.Int32
	prepare := func(_ context.Context, tmp string) error {
		calls.Add(1)
		<-release // hold the preparation until every Acquire is under way
		return os.WriteFile(tmp, content("m1", 10_000), 0o644)
	}
	paths := make([]string, 8)
	var wg sync.WaitGroup
	for i := range paths {
		wg.Go(func() {
			h, err := b.cache.Acquire(t.Context(), "m1", prepare)
			if !assertNoError(t, err) {
				return
			}
			got, err := os.ReadFile(h.Path())
			if assertNoError(t, err) && !bytes.Equal(content("m1", 10_000), got) {
				t.Errorf("acquire %d read a wrong artifact", i)
			}
			paths[i] = h.Path()
		})
	}
	require.Eventually(t, func() bool { return b.cache.Stats().Misses == 8 }, 10*time.Second, time.Millisecond)
	close(release)
	wg.Wait()
	require.Equal(t, int32(1), calls.Load())
	for _, p := range paths {
		require.Equal(t, filepath.Join(b.cache.Dir(), "m1"), p)
	}
	// Each of the eight holds a pin.
	b.cache.mu.Lock()
	require.Equal(t, 8, b.cache.entries["m1"].pins)
	b.cache.mu.Unlock()
}

func assertNoError(t *testing.T, err error) bool {
	if err != nil {
		t.Error(err)
		return false
	}
	return true
}

// Many ids of random sizes, acquired in random order under a small bound,
// some held while others come: the bound holds on disk after every step,
// and an artifact held is never evicted.
func TestArtifactChurnHoldsTheBound(t *testing.T) {
	t.Parallel()
	const maxBytes = 64 << 10
	b := setup(t, maxBytes)
	rng := rand.New(rand.NewPCG(1, 2))
	sizes := map[string]int{}
	for i := range 40 {
		sizes[fmt.Sprintf("m%d", i)] = 1 + rng.IntN(16<<10)
	}
	type held struct {
		h    *Handle
		id   string
		size int
	}
	var holding []held
	var full int
	for step := range 600 {
		id := fmt.Sprintf("m%d", rng.IntN(len(sizes)))
		h, err := b.cache.Acquire(t.Context(), id, b.prepareN(id, sizes[id]))
		var fe *FullError
		switch {
		case errors.As(err, &fe):
			full++
		case err != nil:
			t.Fatalf("step %d: %v", step, err)
		default:
			got, err := os.ReadFile(h.Path())
			require.NoError(t, err)
			require.Equal(t, content(id, sizes[id]), got, "step %d", step)
			if rng.IntN(3) == 0 && len(holding) < 4 {
				holding = append(holding, held{h, id, sizes[id]})
			} else {
				h.Release()
			}
		}
		if len(holding) > 0 && rng.IntN(4) == 0 {
			i := rng.IntN(len(holding))
			holding[i].h.Release()
			holding = append(holding[:i], holding[i+1:]...)
		}
		require.LessOrEqual(t, dirBytes(t, b.cache.Dir()), int64(maxBytes), "step %d", step)
		require.Equal(t, b.cache.Stats().BytesUsed, dirBytes(t, b.cache.Dir()), "step %d", step)
		for _, p := range holding {
			got, err := os.ReadFile(p.h.Path())
			require.NoError(t, err, "step %d: held artifact %s", step, p.id)
			require.Equal(t, content(p.id, p.size), got, "step %d", step)
		}
	}
	s := b.cache.Stats()
	require.Positive(t, s.Evictions)
	require.Positive(t, s.Hits)
	t.Logf("%d full refusals, stats %+v", full, s)
}

// An artifact that cannot fit, with or without what others hold, is
// refused with a *FullError and the bound is not exceeded.
func TestArtifactThatCannotFitIsRefused(t *testing.T) {
	t.Parallel()
	b := setup(t, 10_000)
	_, err := b.cache.Acquire(t.Context(), "huge", b.prepareN("huge", 10_000))
	var fe *FullError
	require.ErrorAs(t, err, &fe)
	require.EqualError(t, err, `artifact "huge" is 10065 bytes, more than the cache's bound of 10000 bytes`)

	h := acquire(t, b, "a", 6000)
	_, err = b.cache.Acquire(t.Context(), "b", b.prepareN("b", 6000))
	require.EqualError(t, err, `artifact "b" (6065 bytes) does not fit: 6065 of the cache's 10000 bytes are held by artifacts in use; release some or raise the bound`)
	require.Equal(t, int64(6000+sumFileSize), dirBytes(t, b.cache.Dir()))

	h.Release()
	acquire(t, b, "b", 6000).Release()
	require.Equal(t, int64(1), b.cache.Stats().Evictions)
	require.Equal(t, int64(6000+sumFileSize), dirBytes(t, b.cache.Dir()))
}

// A preparation that fails is a *PrepareError of class "preparation",
// leaves nothing behind, and the next Acquire prepares again.
func TestArtifactPrepareErrorIsClassified(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	boom := errors.New("compiler crashed")
	_, err := b.cache.Acquire(t.Context(), "m1", func(_ context.Context, tmp string) error {
		require.NoError(t, os.WriteFile(tmp, []byte("half"), 0o644))
		return boom
	})
	var pe *PrepareError
	require.ErrorAs(t, err, &pe)
	require.ErrorIs(t, err, boom)
	require.Equal(t, "preparation", pe.Class())
	require.Equal(t, int64(0), dirBytes(t, b.cache.Dir()))
	acquire(t, b, "m1", 10).Release()
}

// Discard after a construction error: the next Acquire prepares afresh,
// whether the artifact was held at the time or not.
func TestArtifactDiscardThenAcquirePrepares(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	acquire(t, b, "m1", 100).Release()
	require.NoError(t, b.cache.Discard("m1"))
	require.NoFileExists(t, filepath.Join(b.cache.Dir(), "m1"))
	acquire(t, b, "m1", 100).Release()
	require.Equal(t, 2, b.preparedCount("m1"))

	// Held by another: it stays until released, then goes.
	other := acquire(t, b, "m1", 100)
	require.NoError(t, b.cache.Discard("m1"))
	require.FileExists(t, other.Path())
	other.Release()
	other.Release() // idempotent
	require.NoFileExists(t, filepath.Join(b.cache.Dir(), "m1"))
	acquire(t, b, "m1", 100).Release()
	require.Equal(t, 3, b.preparedCount("m1"))

	// Held, and acquired again before it is released: prepared afresh.
	other = acquire(t, b, "m1", 100)
	require.NoError(t, b.cache.Discard("m1"))
	h, err := b.cache.Acquire(t.Context(), "m1", func(ctx context.Context, tmp string) error {
		require.FileExists(t, other.Path(), "the holder's file stays while the new one is prepared")
		return b.prepareN("m1", 100)(ctx, tmp)
	})
	require.NoError(t, err)
	h.Release()
	require.Equal(t, 4, b.preparedCount("m1"))
	other.Release()
	require.FileExists(t, filepath.Join(b.cache.Dir(), "m1"), "the old holder's release leaves the new artifact alone")

	s := b.cache.Stats()
	require.Equal(t, int64(3), s.ConstructionRetries)
	require.Equal(t, 3.0, metric(t, b.reg, "construction_retries_total"))
	require.Equal(t, int64(100+sumFileSize), dirBytes(t, b.cache.Dir()))
	require.Equal(t, s.BytesUsed, dirBytes(t, b.cache.Dir()))
}

func TestArtifactHostileIDsRefused(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	for _, id := range []string{"", "../x", "..", ".", "a/b", `a\b`, "/etc/passwd", ".tmp-x", "m1.sum", "a b", "a\x00b", strings.Repeat("a", MaxIDLen+1), "é"} {
		_, err := b.cache.Acquire(t.Context(), id, func(context.Context, string) error {
			t.Errorf("prepare called for id %q", id)
			return nil
		})
		var ie *IDError
		require.ErrorAs(t, err, &ie, "id %q", id)
		require.ErrorAs(t, b.cache.Discard(id), &ie, "id %q", id)
	}
	for _, id := range []string{"m", "llama-3.1-8b_q4.gguf", strings.Repeat("a", MaxIDLen)} {
		require.NoError(t, validID(id), id)
	}
	require.NoFileExists(t, filepath.Join(b.root, "x"))
}

// killChildEnv makes the test binary the child of
// TestArtifactKilledMidPreparation: it prepares half an artifact under
// the root it names, says so and blocks until it is killed.
const killChildEnv = "DEVSHARD_ARTIFACTS_KILL_CHILD_ROOT"

func TestArtifactKilledMidPreparation(t *testing.T) {
	if root := os.Getenv(killChildEnv); root != "" {
		c, err := Open(root, testEnv, Options{})
		if err != nil {
			fmt.Println("open:", err)
			os.Exit(1)
		}
		c.Acquire(context.Background(), "m1", func(_ context.Context, tmp string) error {
			f, err := os.OpenFile(tmp, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			f.Write(content("m1", 5000)[:2500])
			f.Sync()
			fmt.Println("HALF WRITTEN")
			select {}
		})
		os.Exit(1)
	}
	t.Parallel()
	b := setup(t, 0)
	cmd := exec.Command(os.Args[0], "-test.run=^TestArtifactKilledMidPreparation$")
	cmd.Env = append(os.Environ(), killChildEnv+"="+b.root)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "HALF WRITTEN\n", line)
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	require.Error(t, cmd.Wait())

	tmps, err := filepath.Glob(filepath.Join(b.cache.Dir(), tmpPrefix+"*"))
	require.NoError(t, err)
	require.Len(t, tmps, 1, "the killed preparation leaves its temp file")
	require.NoFileExists(t, filepath.Join(b.cache.Dir(), "m1"))

	c := b.open(t, testEnv, 0)
	require.NoFileExists(t, tmps[0])
	require.Equal(t, int64(0), dirBytes(t, c.Dir()))
	h, err := c.Acquire(t.Context(), "m1", b.prepareN("m1", 5000))
	require.NoError(t, err)
	defer h.Release()
	got, err := os.ReadFile(h.Path())
	require.NoError(t, err)
	require.Equal(t, content("m1", 5000), got)
	require.Equal(t, 1, b.preparedCount("m1"))
}

// A waiter whose context ends stops waiting, and the pin it would have had
// is not leaked.
func TestArtifactWaiterGivesUp(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	release := make(chan struct{})
	done := make(chan *Handle)
	go func() {
		h, err := b.cache.Acquire(t.Context(), "m1", func(_ context.Context, tmp string) error {
			<-release
			return os.WriteFile(tmp, []byte("x"), 0o644)
		})
		assertNoError(t, err)
		done <- h
	}()
	require.Eventually(t, func() bool { return b.cache.Stats().Misses == 1 }, 10*time.Second, time.Millisecond)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	_, err := b.cache.Acquire(ctx, "m1", b.prepareN("m1", 1))
	require.ErrorIs(t, err, context.DeadlineExceeded)
	close(release)
	(<-done).Release()
	b.cache.mu.Lock()
	defer b.cache.mu.Unlock()
	require.Equal(t, 0, b.cache.entries["m1"].pins)
}

func TestArtifactEnvHash(t *testing.T) {
	t.Parallel()
	// Length prefixes: moving bytes from one field to the next changes the hash.
	a := Env{Binary: "ab", Executor: "c"}
	c := Env{Binary: "a", Executor: "bc"}
	require.NotEqual(t, a.Hash(), c.Hash())
	require.Len(t, a.Hash(), 64)
	require.Equal(t, a.Hash(), Env{Binary: "ab", Executor: "c"}.Hash())

	exe, err := os.Executable()
	require.NoError(t, err)
	env, err := CurrentEnv(exe, "p")
	require.NoError(t, err)
	require.Equal(t, env.Binary, env.Executor, "the test binary is both")
	require.Len(t, env.Binary, 64)
	require.NotEmpty(t, env.CPUFeatures)
	require.NotEmpty(t, env.KernelRelease)
	require.Equal(t, "p", env.Params)
	_, err = CurrentEnv(filepath.Join(t.TempDir(), "missing"), "")
	require.ErrorContains(t, err, "hash the executor binary")
}

func TestArtifactMetricsRegistered(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	acquire(t, b, "m1", 10).Release()
	mfs, err := b.reg.Gather()
	require.NoError(t, err)
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	require.ElementsMatch(t, []string{
		"devshard_artifacts_preparations_total", "devshard_artifacts_prepare_seconds", "devshard_artifacts_hits_total",
		"devshard_artifacts_misses_total", "devshard_artifacts_checksum_failures_total", "devshard_artifacts_construction_retries_total",
		"devshard_artifacts_evictions_total", "devshard_artifacts_bytes_used",
	}, names)
	require.Equal(t, 1.0, metric(t, b.reg, "preparations_total"))
	require.Equal(t, 1.0, metric(t, b.reg, "misses_total"))
}

// metric is the value of counter or gauge devshard_artifacts_<name>.
func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "devshard_artifacts_"+name {
			continue
		}
		m := mf.GetMetric()[0]
		if m.GetCounter() != nil {
			return m.GetCounter().GetValue()
		}
		return m.GetGauge().GetValue()
	}
	t.Fatalf("no metric devshard_artifacts_%s", name)
	return 0
}

// Acquires, releases and discards from several goroutines at once, under a
// small bound: every artifact handed out is the right one, and at the end
// the index and the disk agree and hold the bound. Run it with -race.
func TestArtifactConcurrentChurn(t *testing.T) {
	t.Parallel()
	const maxBytes = 48 << 10
	b := setup(t, maxBytes)
	size := func(id string) int { return 1000 + len(id)*997 }
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for range 150 {
				id := fmt.Sprintf("m%d", rng.IntN(12)) + strings.Repeat("x", rng.IntN(3))
				h, err := b.cache.Acquire(t.Context(), id, b.prepareN(id, size(id)))
				var fe *FullError
				if errors.As(err, &fe) {
					continue
				}
				if !assertNoError(t, err) {
					return
				}
				got, err := os.ReadFile(h.Path())
				if assertNoError(t, err) && !bytes.Equal(content(id, size(id)), got) {
					t.Errorf("artifact %s: wrong bytes", id)
				}
				if rng.IntN(10) == 0 {
					assertNoError(t, b.cache.Discard(id))
				}
				h.Release()
			}
		})
	}
	wg.Wait()
	s := b.cache.Stats()
	require.LessOrEqual(t, s.BytesUsed, int64(maxBytes))
	require.Equal(t, s.BytesUsed, dirBytes(t, b.cache.Dir()))
	require.Positive(t, s.Evictions)
	t.Logf("stats %+v", s)
}

// A prepare func that panics fails the Acquires waiting on it instead of
// leaving them blocked.
func TestArtifactPreparePanicReleasesWaiters(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	started := make(chan struct{})
	go func() {
		defer func() { recover() }()
		b.cache.Acquire(t.Context(), "m1", func(context.Context, string) error {
			close(started)
			for b.cache.Stats().Misses < 2 { // the second Acquire waits on this one
				time.Sleep(time.Millisecond)
			}
			panic("prepare bug")
		})
	}()
	<-started
	_, err := b.cache.Acquire(t.Context(), "m1", b.prepareN("m1", 1))
	var pe *PrepareError
	require.ErrorAs(t, err, &pe)
	require.EqualError(t, err, `prepare artifact "m1": prepare panicked`)
	acquire(t, b, "m1", 1).Release()
}
