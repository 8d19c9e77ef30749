// Package buildinfo says which build of devshard is running: its module
// version, the commit it was built from and the Go that built it. Every
// daemon reports the same three, on /version and as a build_info gauge.
package buildinfo

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Info is one build's identity.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"go_version"`
}

// Read is the running binary's build: "(devel)" and "unknown" stand in
// for what the toolchain did not stamp (go test, go run).
func Read() Info {
	in := Info{Version: "(devel)", Commit: "unknown", GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return in
	}
	if bi.Main.Version != "" {
		in.Version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && s.Value != "" {
			in.Commit = s.Value
		}
	}
	return in
}

// Gauge is <namespace>_build_info: always 1, labelled with the build, so
// that a dashboard can show which build each process runs.
func Gauge(namespace string, in Info) prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: namespace + "_build_info", Help: "Always 1; its labels name the running build: version, commit and go_version.",
	}, []string{"version", "commit", "go_version"})
	g.WithLabelValues(in.Version, in.Commit, in.GoVersion).Set(1)
	return g
}
