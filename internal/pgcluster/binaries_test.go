package pgcluster

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFindBinaries(t *testing.T) {
	t.Parallel()
	notOnPath := func(string) (string, error) { return "", errors.New("not found") }

	versions := t.TempDir()
	install := func(version string, names ...string) {
		bin := filepath.Join(versions, version, "bin")
		require.NoError(t, os.MkdirAll(bin, 0o755))
		for _, n := range names {
			require.NoError(t, os.WriteFile(filepath.Join(bin, n), nil, 0o755))
		}
	}
	install("9.6", "initdb", "pg_ctl", "postgres")
	install("15", "initdb", "pg_ctl", "postgres")
	install("17", "initdb", "pg_ctl") // incomplete: no postgres
	install("not-a-version", "initdb", "pg_ctl", "postgres")

	b, err := findBinaries(notOnPath, versions)
	require.NoError(t, err)
	require.Equal(t, filepath.Join(versions, "15", "bin", "pg_ctl"), b.pgCtl)

	// PATH wins over the versioned directories.
	onPath := func(name string) (string, error) { return "/opt/pg/bin/" + name, nil }
	b, err = findBinaries(onPath, versions)
	require.NoError(t, err)
	require.Equal(t, binaries{"/opt/pg/bin/initdb", "/opt/pg/bin/pg_ctl", "/opt/pg/bin/postgres"}, b)

	_, err = findBinaries(notOnPath, filepath.Join(versions, "missing"))
	require.EqualError(t, err, "PostgreSQL server binaries not found (initdb, pg_ctl): "+
		"install the Debian package postgresql (apt-get install postgresql)")
}
