package devnet

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The binary server answers over TLS with a certificate only its own CA
// vouches for, serves a published file byte for byte under the sha256 it
// reports, slows a file down when asked, and serves nothing else.
func TestBinaryServer(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := StartBinaryServer(filepath.Join(dir, "binaries"), "127.0.0.1:0")
	require.NoError(t, err)
	defer s.Close()
	require.True(t, strings.HasPrefix(s.URL, "https://127.0.0.1:"), s.URL)

	payload := []byte(strings.Repeat("devshard binary ", 16<<10)) // 256 KiB
	file := filepath.Join(dir, "devshard")
	require.NoError(t, os.WriteFile(file, payload, 0o755))
	fast, err := s.Publish("v1", file, 0)
	require.NoError(t, err)
	require.Equal(t, s.URL+"/v1", fast.Url)
	sum, err := fileSHA256(file)
	require.NoError(t, err)
	require.Equal(t, sum, fast.Sha256)
	slow, err := s.Publish("slow", file, 1<<20) // a quarter of a second
	require.NoError(t, err)

	pem, err := os.ReadFile(s.CAFile)
	require.NoError(t, err)
	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(pem))
	trusting := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}

	get := func(url string) (int, []byte) {
		resp, err := trusting.Get(url)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, body
	}
	code, body := get(fast.Url)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, payload, body)

	began := time.Now()
	code, body = get(slow.Url)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, payload, body)
	require.GreaterOrEqual(t, time.Since(began), 200*time.Millisecond, "the slow file is sent at its rate")

	code, _ = get(s.URL + "/unpublished")
	require.Equal(t, http.StatusNotFound, code)

	_, err = http.Get(fast.Url)
	require.Error(t, err, "a client without the devnet's CA refuses the server")
	require.Contains(t, err.Error(), "certificate")
}

// A host run through versiond registers versiond's address (the gateway
// adds each escrow's version route), and runs the host as versiond's child
// with the host's key and the version's own directory.
func TestVersiondHostArgs(t *testing.T) {
	t.Parallel()
	require.Equal(t, "http://127.0.0.1:8090", versiondHostURL("127.0.0.1:8090"))

	home := t.TempDir()
	cfg := Config{Home: home, Versiond: true}
	require.NoError(t, cfg.defaults())
	h := &Host{Name: "host0", Home: filepath.Join(home, "host0")}
	args, err := versiondArgs(cfg, h, "127.0.0.1:8090", "127.0.0.1:9090", "http://127.0.0.1:26657", []string{"--storage-driver", "sqlite"})
	require.NoError(t, err)
	require.Equal(t, "versiond", args[0])
	i := indexOf(args, "--command")
	require.Positive(t, i)
	require.Equal(t, "{binary} host --home {workdir} --key-file "+filepath.Join(h.Home, "host.key")+" --listen {listen} --storage-driver sqlite", args[i+1])
	require.Equal(t, filepath.Join(home, "binaries", "ca.pem"), args[indexOf(args, "--trusted-ca")+1])
	require.Equal(t, h.VersiondDir(), args[indexOf(args, "--dir")+1])

	h.args = args
	h.UseChain("10.0.0.1:9090", "http://10.0.0.1:26657")
	require.Equal(t, "10.0.0.1:9090", h.args[indexOf(h.args, "--chain-grpc")+1])
	require.Equal(t, "{binary} host --home {workdir} --key-file "+filepath.Join(h.Home, "host.key")+" --listen {listen} --storage-driver sqlite", h.args[i+1],
		"a child command without chain flags is left as it was")
	child, err := versiondArgs(cfg, h, "127.0.0.1:8090", "127.0.0.1:9090", "http://127.0.0.1:26657", []string{"--chain-grpc", "127.0.0.1:9090", "--chain-rpc", "http://127.0.0.1:26657"})
	require.NoError(t, err)
	h.args = child
	h.UseChain("10.0.0.1:9090", "http://10.0.0.1:26657")
	require.Contains(t, h.args[i+1], "--chain-grpc 10.0.0.1:9090 --chain-rpc http://10.0.0.1:26657", "the children follow the new nodes too")

	h.Home = filepath.Join(home, "a home")
	_, err = versiondArgs(cfg, h, "127.0.0.1:8090", "127.0.0.1:9090", "http://127.0.0.1:26657", nil)
	require.ErrorContains(t, err, "holds a space")

	for _, c := range []Config{{Home: home, Versiond: true, Storage: StoragePostgres}, {Home: home, Versiond: true, Workers: 1}} {
		require.ErrorContains(t, c.defaults(), "drop --versiond")
	}
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}
