package session_test

import (
	"testing"

	"github.com/devshard/devshard/session/sessionbench"
)

// The ratios these feed are printed by `devshard bench protocol`; see
// docs/BENCHMARKS.md.

func BenchmarkApplyAtNonce1k(b *testing.B) { benchApply(b, 1_000) }

func BenchmarkApplyAtNonce100k(b *testing.B) { benchApply(b, 100_000) }

func benchApply(b *testing.B, at uint64) {
	w, err := sessionbench.NewApplyWorkload(at)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(w.Live()), "live-records")
	w.Run(b)
}

func BenchmarkBareVerifyPerDiff(b *testing.B) { sessionbench.BareVerify(b) }

func BenchmarkVerifySettlement16(b *testing.B) {
	w, err := sessionbench.NewSettleWorkload(16)
	if err != nil {
		b.Fatal(err)
	}
	w.Run(b)
}
