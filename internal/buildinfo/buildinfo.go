// Package buildinfo says which build of devshard is running: its version,
// the commit it was built from, when, and whether the tree had changes.
//
// Two sources give it. `make build` stamps the values with -ldflags (see
// the Makefile's LDFLAGS), which works wherever git works, git worktrees
// included. Otherwise the Go toolchain's own VCS stamp is read
// (runtime/debug: vcs.revision, vcs.time, vcs.modified), which `go build`
// writes in a plain git checkout unless -buildvcs=false. A stamped value
// wins over the toolchain's.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Stamped by the Makefile: -X github.com/devshard/devshard/internal/buildinfo.version=...
var (
	version  string
	commit   string
	vcsTime  string
	modified string // "true" or "false"
)

// Info is one build's identity. Empty fields are unknown.
type Info struct {
	// Version is a release tag, `git describe` output, or the module's
	// version; "devel" when nothing names it.
	Version string `json:"version"`
	// Commit is the full hash of the commit built.
	Commit string `json:"commit"`
	// Time is the commit's time, RFC 3339.
	Time string `json:"time,omitempty"`
	// Modified: the tree had uncommitted changes.
	Modified bool `json:"modified"`
	// Tags are the build tags (e.g. libsecp256k1_sdk), comma-separated.
	Tags string `json:"tags,omitempty"`
	// GoVersion is the Go release that built the binary.
	GoVersion string `json:"go_version"`
}

// Read returns the running binary's Info.
func Read() Info {
	bi, _ := debug.ReadBuildInfo()
	in := merge(fromBuildInfo(bi), Info{Version: version, Commit: commit, Time: vcsTime, Modified: modified == "true"}, modified != "")
	in.GoVersion = runtime.Version()
	return in
}

// Gauge is <namespace>_build_info: always 1, labelled with the build, so
// that a dashboard can show which build each process runs. An unknown
// commit is labelled "unknown".
func Gauge(namespace string, in Info) prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: namespace + "_build_info", Help: "Always 1; its labels name the running build: version, commit and go_version.",
	}, []string{"version", "commit", "go_version"})
	commit := in.Commit
	if commit == "" {
		commit = "unknown"
	}
	g.WithLabelValues(in.Version, commit, in.GoVersion).Set(1)
	return g
}

// fromBuildInfo reads what the Go toolchain stamped; bi may be nil.
func fromBuildInfo(bi *debug.BuildInfo) Info {
	var in Info
	if bi == nil {
		return in
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		in.Version = v
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			in.Commit = s.Value
		case "vcs.time":
			in.Time = s.Value
		case "vcs.modified":
			in.Modified = s.Value == "true"
		case "-tags":
			in.Tags = s.Value
		}
	}
	return in
}

// merge lays the stamped values over the toolchain's; modifiedStamped
// says whether the stamp speaks about a modified tree at all.
func merge(tool, stamp Info, modifiedStamped bool) Info {
	out := tool
	if stamp.Version != "" {
		out.Version = stamp.Version
	}
	if stamp.Commit != "" {
		out.Commit = stamp.Commit
	}
	if stamp.Time != "" {
		out.Time = stamp.Time
	}
	if modifiedStamped {
		out.Modified = stamp.Modified
	}
	if out.Version == "" {
		out.Version = "devel"
		if out.Commit != "" {
			out.Version += "-" + short(out.Commit)
		}
	}
	return out
}

func short(commit string) string {
	if len(commit) > 12 {
		return commit[:12]
	}
	return commit
}

// Describe is the commit line of a version report: the commit, its time
// and whether the tree had changes, or that none of it is known.
func (in Info) Describe() string {
	if in.Commit == "" {
		return "commit unknown (built without VCS information; build with `make build`)"
	}
	var b strings.Builder
	b.WriteString("commit " + in.Commit)
	if in.Time != "" {
		fmt.Fprintf(&b, " of %s", in.Time)
	}
	if in.Modified {
		b.WriteString(", with uncommitted changes")
	}
	return b.String()
}
