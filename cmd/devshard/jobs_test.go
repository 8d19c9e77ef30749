package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	sdk "github.com/cosmos/cosmos-sdk/types"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/chain/node"
	"github.com/devshard/devshard/host"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/jobs"
	"github.com/devshard/devshard/jobs/sqlite"
	"github.com/devshard/devshard/signing"
)

// testKind is a kind the host's in-process workers leave alone, so the
// test decides what becomes of its jobs.
const testKind jobs.Kind = "test"

// `devshard jobs` against a running host, from its admin file: list,
// detail, JSON, reset, remove and remove-all, each change in the host's
// log with who asked.
func TestJobsCommandAgainstARunningHost(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	n, err := node.Start(ctx, node.Config{BlockTime: 200 * time.Millisecond})
	require.NoError(t, err)
	defer func() { require.NoError(t, n.Close()) }()

	home := t.TempDir()
	root := newRootCommand()
	root.SetOut(io.Discard)
	root.SetArgs([]string{"host", "init", "--home", home})
	require.NoError(t, root.Execute())
	listen := freeAddr(t)
	cfg, err := host.LoadConfig(home+"/host.toml", func(string) (string, bool) { return "", false }, map[string]string{
		"listen": listen, "chain.grpc": n.GRPCAddress, "chain.rpc": n.RPCAddress,
	})
	require.NoError(t, err)
	var logs syncBuffer
	hostCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- runHost(hostCtx, cfg, slog.New(slog.NewTextHandler(&logs, nil))) }()
	defer func() {
		stop()
		require.NoError(t, <-done)
	}()
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + listen + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 30*time.Second, 50*time.Millisecond)
	info, err := os.Stat(filepath.Join(home, "admin.json"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm(), "only the host's user reads the token")

	// Jobs reach the host's queue file as any other queue's would.
	d, err := sqlite.Open(ctx, filepath.Join(home, "data", sqlite.FileName), sqlite.Options{})
	require.NoError(t, err)
	q, err := jobs.New(d, jobs.Options{})
	require.NoError(t, err)
	defer q.Close()
	var ids []string
	for _, in := range []string{"one", "two", "three"} {
		j, _, err := q.Enqueue(ctx, testKind, []byte(`{"input":"`+in+`"}`))
		require.NoError(t, err)
		ids = append(ids, j.ID)
	}
	c, err := q.Claim(ctx, "test-worker", testKind)
	require.NoError(t, err)
	require.NoError(t, q.Fail(ctx, c.Lease, "execution", "the model crashed"))
	failed := c.Lease.JobID

	jobsCmd := func(args ...string) (string, error) {
		return runStatus(t, append([]string{"jobs", "--home", home}, args...)...)
	}
	out, err := jobsCmd("list")
	require.NoError(t, err, out)
	require.Regexp(t, `(?m)^ID\s+KIND\s+ESCROW/NONCE\s+WORKER\s+STATE\s+TRY\s+CREATED\s+ELAPSED\s+HEARTBEAT\s+ERROR$`, out)
	require.Regexp(t, `(?m)^`+failed[:12]+`\s+test\s+-\s+test-worker\s+failed\s+1\s+.*execution: the model crashed$`, out)
	require.Equal(t, 4, strings.Count(out, "\n"), "a header and three jobs: %s", out)

	out, err = jobsCmd("list", "--detail", failed[:10])
	require.NoError(t, err, out)
	require.Contains(t, out, "id:             "+failed)
	require.Contains(t, out, "error:          execution: the model crashed")
	require.Contains(t, out, "input:\n{\n  \"input\":")

	out, err = jobsCmd("list", "-o", "json")
	require.NoError(t, err, out)
	var views []hostapi.JobView
	require.NoError(t, json.Unmarshal([]byte(out), &views))
	require.Len(t, views, 3)

	out, err = jobsCmd("reset", ids[1])
	require.Error(t, err, "only a failed job is reset")
	require.Contains(t, err.Error(), "answered 409")
	require.Contains(t, err.Error(), "reset applies only to failed jobs")

	out, err = jobsCmd("reset", failed[:12])
	require.NoError(t, err, out)
	require.Equal(t, "reset 1 job(s): "+failed+"\n", out)
	j, err := q.Get(ctx, failed)
	require.NoError(t, err)
	require.Equal(t, jobs.Ready, j.State)
	require.Zero(t, j.Attempt)

	out, err = jobsCmd("remove", ids[0], "deadbeefdeadbeef")
	require.Error(t, err, "all or none")
	require.Contains(t, err.Error(), "answered 404")
	out, err = jobsCmd("remove", ids[0])
	require.NoError(t, err, out)
	require.Equal(t, "removed 1 job(s): "+ids[0]+"\n", out)

	_, err = jobsCmd("remove-all")
	require.ErrorContains(t, err, "it runs only with --really-do-it")
	count, err := q.Count(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, count[jobs.Ready], "refused in words, nothing removed")
	out, err = jobsCmd("remove-all", "--really-do-it")
	require.NoError(t, err, out)
	require.Equal(t, "removed 2 job(s)\n", out)
	out, err = jobsCmd("list", "--all")
	require.NoError(t, err, out)
	require.Equal(t, "no jobs\n", out)

	who := "by=" + operatorName() + "@127.0.0.1:"
	for _, line := range []string{`msg="admin: jobs reset"`, `msg="admin: jobs removed"`, `msg="admin: every job removed"`} {
		require.Contains(t, logs.String(), line)
	}
	require.Equal(t, 3, strings.Count(logs.String(), who), "each change names who asked")

	// A wrong token is refused.
	a := &hostapi.Admin{BaseURL: readAdminFile(t, home).URL, Token: "wrong"}
	_, err = a.List(ctx, false)
	require.ErrorContains(t, err, "answered 401")
}

func readAdminFile(t *testing.T, home string) hostapi.AdminFile {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(home, "admin.json"))
	require.NoError(t, err)
	var f hostapi.AdminFile
	require.NoError(t, json.Unmarshal(raw, &f))
	return f
}

// The host's job settings reach the daemon: worker accounts in hex or
// bech32, the admin file resolved against home; a bad account is refused
// naming the setting.
func TestHostJobsFromConfig(t *testing.T) {
	t.Parallel()
	k, err := signing.GenerateKey(rand.Reader)
	require.NoError(t, err)
	bech := sdk.AccAddress(k.Address().Bytes()).String()
	none := func(string) (string, bool) { return "", false }
	cfg, err := host.LoadConfig("", none, map[string]string{"home": "/h", "jobs.workers": k.Address().String() + "," + bech, "jobs.max_try": "3"})
	require.NoError(t, err)
	jc, err := hostJobs(cfg)
	require.NoError(t, err)
	require.Equal(t, []signing.Address{k.Address(), k.Address()}, jc.Workers)
	require.Equal(t, 3, jc.MaxTry)
	require.Equal(t, "/h/admin.json", jc.AdminFile)
	require.Equal(t, "127.0.0.1:0", jc.AdminListen)

	cfg, err = host.LoadConfig("", none, map[string]string{"jobs.workers": "nobody"})
	require.NoError(t, err)
	_, err = hostJobs(cfg)
	require.ErrorContains(t, err, `jobs.workers: "nobody" is neither a devshard1… address nor 40 hex characters`)
}
