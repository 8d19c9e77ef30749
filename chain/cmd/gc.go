package cmd

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// A node allocates fast: every tx is decoded in the mempool and again in
// its block, every block's results and events are built and stored. With
// Go's default GC target (GOGC=100) a validator under a load of
// settlements spent about a fifth of its CPU collecting garbage, and 200
// cut its CPU per settlement by about 18 % (docs/BENCHMARKS.md).
// A node started by `chain start` therefore lets its heap grow to
// nodeGCPercent % above the live data between collections, and, so that
// the larger heap cannot outgrow the machine, sets a soft memory limit
// of nodeMemoryPercent % of the memory it may use (its cgroup's limit, or
// the machine's RAM). Near that limit Go collects as often as it must.
// The limit is a safety net, not a budget: Go's default has no limit at
// all, and a heap that Go's default keeps below about 90 % of the memory
// is collected no more often than by that default. An operator's GOGC or
// GOMEMLIMIT always wins (docs/chain.md, "Memory and the garbage
// collector").
const (
	nodeGCPercent     = 200
	nodeMemoryPercent = 90
)

// gcPlan is what a node sets at start: a GC percent (0: leave Go's) and a
// soft memory limit in bytes (0: leave Go's), with the reason for each
// for the log.
type gcPlan struct {
	percent     int
	percentWhy  string
	memLimit    int64
	memLimitWhy string
}

// planGC decides the node's GC settings from its environment and the
// memory it may use (0 when that is unknown).
func planGC(getenv func(string) string, memory uint64) gcPlan {
	var p gcPlan
	if v := getenv("GOGC"); v != "" {
		p.percentWhy = "GOGC=" + v + " from the environment"
	} else {
		p.percent = nodeGCPercent
		p.percentWhy = fmt.Sprintf("GOGC=%d, the node's default (GOGC unset)", nodeGCPercent)
	}
	switch {
	case getenv("GOMEMLIMIT") != "":
		p.memLimitWhy = "GOMEMLIMIT=" + getenv("GOMEMLIMIT") + " from the environment"
	case p.percent == 0:
		// The operator chose the GC target; a limit would change it.
		p.memLimitWhy = "none (GOGC set, GOMEMLIMIT unset)"
	case memory == 0:
		p.memLimitWhy = "none (the memory available is unknown)"
	default:
		p.memLimit = int64(min(memory, 1<<56) * nodeMemoryPercent / 100)
		p.memLimitWhy = fmt.Sprintf("%s, %d %% of the %s this node may use (GOMEMLIMIT unset)",
			formatBytes(uint64(p.memLimit)), nodeMemoryPercent, formatBytes(memory))
	}
	return p
}

// apply sets the plan on the running process.
func (p gcPlan) apply() {
	if p.percent != 0 {
		debug.SetGCPercent(p.percent)
	}
	if p.memLimit != 0 {
		debug.SetMemoryLimit(p.memLimit)
	}
}

// String is the plan as the node logs it.
func (p gcPlan) String() string {
	return fmt.Sprintf("garbage collector: %s; soft memory limit: %s", p.percentWhy, p.memLimitWhy)
}

// availableMemory is the memory this process may use: its cgroup's limit
// when it has one below the machine's RAM, else the RAM. 0 when neither
// can be read (not Linux, say).
func availableMemory() uint64 {
	return memoryOf("/proc/meminfo", "/sys/fs/cgroup/memory.max")
}

// memoryOf is availableMemory from the given meminfo and cgroup v2
// memory.max files.
func memoryOf(meminfo, cgroupMax string) uint64 {
	ram := readMemTotal(meminfo)
	limit := readCgroupLimit(cgroupMax)
	if limit != 0 && (ram == 0 || limit < ram) {
		return limit
	}
	return ram
}

// readMemTotal reads MemTotal from a /proc/meminfo file, in bytes; 0 if it
// cannot.
func readMemTotal(path string) uint64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	return parseMemTotal(f)
}

func parseMemTotal(r io.Reader) uint64 {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 3 && fields[0] == "MemTotal:" && fields[2] == "kB" {
			kb, err := strconv.ParseUint(fields[1], 10, 64)
			if err != nil || kb > 1<<53 {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// readCgroupLimit reads a cgroup v2 memory.max file, in bytes; 0 for "max"
// (no limit) or if it cannot.
func readCgroupLimit(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return parseCgroupLimit(string(b))
}

func parseCgroupLimit(s string) uint64 {
	s = strings.TrimSpace(s)
	if s == "max" {
		return 0
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// formatBytes is n in MiB or GiB, for a log line.
func formatBytes(n uint64) string {
	if n >= 1<<30 {
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	}
	return fmt.Sprintf("%d MiB", n>>20)
}
