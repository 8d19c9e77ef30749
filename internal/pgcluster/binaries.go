package pgcluster

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// errNoBinaries is the message a test fails with when PostgreSQL is not
// installed; it names the package to install so the fix is obvious.
var errNoBinaries = errors.New("PostgreSQL server binaries not found (initdb, pg_ctl): " +
	"install the Debian package postgresql (apt-get install postgresql)")

// debianVersionsDir holds one bin directory per installed major version.
// Debian keeps the server binaries there, off PATH.
const debianVersionsDir = "/usr/lib/postgresql"

// binaries are absolute paths of the PostgreSQL server programs.
type binaries struct {
	initdb, pgCtl, postgres string
}

var findBinariesOnce = sync.OnceValues(func() (binaries, error) {
	return findBinaries(exec.LookPath, debianVersionsDir)
})

// findBinaries looks for initdb, pg_ctl and postgres on PATH (via
// lookPath), then in the highest-versioned versionsDir/<version>/bin that
// has all three. The three are always taken from the same place so their
// versions match.
func findBinaries(lookPath func(string) (string, error), versionsDir string) (binaries, error) {
	if b, ok := fromPath(lookPath); ok {
		return b, nil
	}

	entries, _ := os.ReadDir(versionsDir)
	type version struct {
		num []int
		bin string
	}
	var versions []version
	for _, e := range entries {
		if num, ok := parseVersion(e.Name()); ok {
			versions = append(versions, version{num, filepath.Join(versionsDir, e.Name(), "bin")})
		}
	}
	// Highest first: "16" > "15" > "9.6".
	slices.SortFunc(versions, func(a, b version) int { return -slices.Compare(a.num, b.num) })
	for _, v := range versions {
		b := binaries{
			initdb:   filepath.Join(v.bin, "initdb"),
			pgCtl:    filepath.Join(v.bin, "pg_ctl"),
			postgres: filepath.Join(v.bin, "postgres"),
		}
		if isExecutable(b.initdb) && isExecutable(b.pgCtl) && isExecutable(b.postgres) {
			return b, nil
		}
	}
	return binaries{}, errNoBinaries
}

// parseVersion parses a directory name such as "15" or "9.6".
func parseVersion(s string) ([]int, bool) {
	var num []int
	for part := range strings.SplitSeq(s, ".") {
		n, err := strconv.Atoi(part)
		if err != nil || n < 0 {
			return nil, false
		}
		num = append(num, n)
	}
	return num, true
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// fromPath finds all three binaries via lookPath, or reports false.
func fromPath(lookPath func(string) (string, error)) (binaries, bool) {
	var paths [3]string
	for i, name := range []string{"initdb", "pg_ctl", "postgres"} {
		p, err := lookPath(name)
		if err != nil {
			return binaries{}, false
		}
		// Absolute, because commands run with the cluster dir as cwd.
		if paths[i], err = filepath.Abs(p); err != nil {
			return binaries{}, false
		}
	}
	return binaries{initdb: paths[0], pgCtl: paths[1], postgres: paths[2]}, true
}
