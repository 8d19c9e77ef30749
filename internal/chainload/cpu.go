package chainload

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of the CPU times in /proc/<pid>/stat: USER_HZ,
// which Linux fixes at 100 for user space whatever the kernel's own tick.
const clockTick = 10 * time.Millisecond

// cpuTime is the CPU time (user and system) the validator process whose
// home is home has used so far. It finds the process by its command line
// (`devshard chain start --home <home>`) in /proc, so it works on Linux
// only.
func cpuTime(home string) (time.Duration, error) {
	want := []byte("\x00chain\x00start\x00--home\x00" + home + "\x00")
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, d := range dirs {
		if _, err := strconv.Atoi(d.Name()); err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, want) {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			return 0, err
		}
		return statCPU(string(stat))
	}
	return 0, fmt.Errorf("no process runs `chain start --home %s`", home)
}

// statCPU reads utime and stime (fields 14 and 15) from a /proc/<pid>/stat
// line. The command name (field 2) is in parentheses and may hold spaces,
// so fields are counted from its closing parenthesis.
func statCPU(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("unreadable /proc stat line %q", stat)
	}
	f := strings.Fields(stat[i+1:]) // f[0] is field 3
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc stat line %q", stat)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("unreadable CPU times in /proc stat line %q", stat)
	}
	return time.Duration(utime+stime) * clockTick, nil
}

// cpuMeter adds up the CPU time of a network's validators.
type cpuMeter struct{ homes []string }

// total is the CPU time all the validators have used so far.
func (m cpuMeter) total() (time.Duration, error) {
	var sum time.Duration
	for _, h := range m.homes {
		t, err := cpuTime(h)
		if err != nil {
			return 0, err
		}
		sum += t
	}
	return sum, nil
}
