package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/devshard/devshard/artifacts"
)

type benchArtifactsOptions struct {
	rounds, mib, loads int
}

func newBenchArtifactsCommand() *cobra.Command {
	var o benchArtifactsOptions
	cmd := &cobra.Command{
		Use:   "artifacts",
		Short: "Artifact cache: a job on a cached artifact against one that prepares first; checksum cost per load",
		Long: `artifacts measures the persistent artifact cache (package artifacts) in a
fresh cache directory under the temp dir:

  - job_prepare_first: Acquire of an id not in the cache, whose prepare
    writes --mib MiB of deterministic bytes (a stand-in for a real
    preparation, which takes seconds to minutes); the cache then syncs it,
    checksums it and installs it; the job reads the whole file.
  - job_cached: Acquire of the same id, now cached (its checksum verified
    before it is handed out), and the job reads the whole file; the median
    of --loads.
  - checksum_per_load: Acquire of the cached id alone (the verification),
    per MiB; beside it, sha256 over the same bytes in memory.

Each figure is measured --rounds times, interleaved, and the median kept.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.rounds < 1 || o.mib < 1 || o.loads < 1 {
				return fmt.Errorf("--rounds, --mib and --loads must be at least 1, got %d, %d and %d", o.rounds, o.mib, o.loads)
			}
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			return benchArtifacts(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), o)
		},
	}
	cmd.Flags().IntVar(&o.rounds, "rounds", 3, "measure each figure this many times, interleaved, and keep the median")
	cmd.Flags().IntVar(&o.mib, "mib", 64, "size of the artifact in MiB")
	cmd.Flags().IntVar(&o.loads, "loads", 5, "cached loads measured per round")
	return cmd
}

func benchArtifacts(ctx context.Context, out, progress io.Writer, o benchArtifactsOptions) error {
	root, err := os.MkdirTemp("", "devshard-bench-artifacts-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	c, err := artifacts.Open(root, artifacts.Env{Params: "bench"}, artifacts.Options{MaxBytes: int64(2*o.mib+1) << 20})
	if err != nil {
		return err
	}
	block := randomMiB()
	prepare := func(_ context.Context, tmp string) error { return writeArtifact(tmp, block, o.mib) }
	mib := float64(o.mib)

	var prepared, cached, verify, raw []float64
	for r := range o.rounds {
		id := fmt.Sprintf("model-%d", r)
		d, err := timeJob(ctx, c, id, prepare)
		if err != nil {
			return err
		}
		prepared = append(prepared, d)
		var loads, checks []float64
		for range o.loads {
			d, err := timeJob(ctx, c, id, prepare)
			if err != nil {
				return err
			}
			loads = append(loads, d)
			start := time.Now()
			h, err := c.Acquire(ctx, id, prepare)
			if err != nil {
				return err
			}
			checks = append(checks, float64(time.Since(start)))
			h.Release()
		}
		cached = append(cached, median(loads))
		verify = append(verify, median(checks))
		raw = append(raw, rawSHA256(block, o.mib))
		fmt.Fprintf(progress, "round %d/%d: prepare first %.1f ms, cached %.1f ms, checksum %.0f us/MiB (sha256 alone %.0f us/MiB)\n",
			r+1, o.rounds, prepared[r]/1e6, cached[r]/1e6, verify[r]/1e3/mib, raw[r]/1e3/mib)
	}
	if s := c.Stats(); s.Preparations != int64(o.rounds) || s.ChecksumFailures != 0 {
		return fmt.Errorf("the cache ran %d preparations with %d checksum failures; want %d and none", s.Preparations, s.ChecksumFailures, o.rounds)
	}

	fmt.Fprintf(out, "# job: Acquire an artifact of %d MiB, then read it all; prepare_first writes it first (a stand-in preparation), then syncs, checksums and installs it\n", o.mib)
	fmt.Fprintf(out, "BENCH job_prepare_first %.1f ms\n", median(prepared)/1e6)
	fmt.Fprintf(out, "BENCH job_cached %.1f ms\n", median(cached)/1e6)
	fmt.Fprintln(out, "# checksum_per_load: a cached Acquire alone (the salted sha256 of the file, read from disk or page cache); sha256_in_memory: the same bytes hashed from memory")
	fmt.Fprintf(out, "BENCH checksum_per_load %.0f us/MiB\n", median(verify)/1e3/mib)
	fmt.Fprintf(out, "BENCH sha256_in_memory %.0f us/MiB\n", median(raw)/1e3/mib)
	// The issue asks for this ratio, not a bound: against a stand-in
	// preparation it says what the cache costs, not what it saves.
	report(out, "job_cached/job_prepare_first", median(cached)/median(prepared))
	ratio(out, "checksum_per_load/sha256_in_memory", median(verify)/median(raw), "<=", 1.5)
	return nil
}

// timeJob acquires id, reads the whole artifact and releases it, and
// returns the nanoseconds it took.
func timeJob(ctx context.Context, c *artifacts.Cache, id string, prepare func(context.Context, string) error) (float64, error) {
	start := time.Now()
	h, err := c.Acquire(ctx, id, prepare)
	if err != nil {
		return 0, err
	}
	defer h.Release()
	f, err := os.Open(h.Path())
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if _, err := io.Copy(io.Discard, f); err != nil {
		return 0, err
	}
	return float64(time.Since(start)), nil
}

// randomMiB is one MiB of fixed pseudo-random bytes.
func randomMiB() []byte {
	rng := rand.New(rand.NewPCG(3139, 1))
	b := make([]byte, 1<<20)
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b
}

// writeArtifact writes mib MiB to path: block, its first 8 bytes replaced
// by the MiB's index so that no two MiB are alike.
func writeArtifact(path string, block []byte, mib int) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	b := slices.Clone(block)
	for i := range mib {
		binary.LittleEndian.PutUint64(b, uint64(i))
		if _, err := f.Write(b); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// rawSHA256 is the nanoseconds sha256 takes over mib MiB in memory.
func rawSHA256(block []byte, mib int) float64 {
	start := time.Now()
	h := sha256.New()
	for range mib {
		h.Write(block)
	}
	h.Sum(nil)
	return float64(time.Since(start))
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}
