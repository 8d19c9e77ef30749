package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/chain/node"
	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/host"
	"github.com/devshard/devshard/httpauth"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/signing"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

// The daemon, from `host init` to serving, against a real chain node.
func TestHostDaemonAgainstARealNode(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	n, err := node.Start(ctx, node.Config{BlockTime: 200 * time.Millisecond})
	require.NoError(t, err)
	defer func() { require.NoError(t, n.Close()) }()

	home := t.TempDir()
	var out bytes.Buffer
	root := newRootCommand()
	root.SetOut(&out)
	root.SetArgs([]string{"host", "init", "--home", home})
	require.NoError(t, root.Execute())
	require.Contains(t, out.String(), "host account: devshard1")
	root = newRootCommand()
	root.SetArgs([]string{"host", "init", "--home", home})
	require.ErrorContains(t, root.Execute(), "already exists; not overwriting it")

	listen := freeAddr(t)
	cfg, err := host.LoadConfig(home+"/host.toml", func(string) (string, bool) { return "", false }, map[string]string{
		"listen": listen, "chain.grpc": n.GRPCAddress, "chain.rpc": n.RPCAddress,
	})
	require.NoError(t, err)
	var logs syncBuffer
	hostCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- runHost(hostCtx, cfg, slog.New(slog.NewTextHandler(&logs, nil))) }()

	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + listen + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	require.Eventually(t, func() bool { s, _ := get("/readyz"); return s == http.StatusOK }, 20*time.Second, 50*time.Millisecond)
	status, body := get("/version")
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, body, fmt.Sprintf(`"protocol":%d`, session.ProtocolVersion))
	// A diff for an escrow the chain does not know, signed for this host
	// on this chain (the signature is checked first), is 404.
	var version struct{ Address string }
	require.NoError(t, json.Unmarshal([]byte(body), &version))
	raw, err := hex.DecodeString(version.Address)
	require.NoError(t, err)
	addr, err := signing.AddressFromBytes(raw)
	require.NoError(t, err)
	key, err := signing.GenerateKey(rand.Reader)
	require.NoError(t, err)
	diff := []byte(`{"diff":"CCo="}`)
	req, err := http.NewRequest(http.MethodPost, "http://"+listen+"/v1/sessions/42/diffs", bytes.NewReader(diff))
	require.NoError(t, err)
	require.NoError(t, httpauth.Sign(req, diff, key, httpauth.Audience{ChainID: n.ChainID, Host: addr}, time.Now()))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode, string(b))
	require.Contains(t, string(b), "the chain has no escrow 42")
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "msg=epoch") }, 20*time.Second, 50*time.Millisecond, "the daemon follows epochs")

	stop()
	require.NoError(t, <-done)
	require.Contains(t, logs.String(), "shutting down")

	// The account's own key sends its txs: a claim for an epoch with no
	// summary is built for the funded validator and refused by the module.
	vk, err := signing.PrivKeyFromBytes(n.Validator.Key.Bytes())
	require.NoError(t, err)
	chainc, err := chainclient.Dial(chainclient.Config{GRPC: n.GRPCAddress, RPC: n.RPCAddress, Key: vk})
	require.NoError(t, err)
	defer chainc.Close()
	var sender host.ChainSender = chainc
	_, err = sender.ClaimRewards(ctx, 99)
	var txErr *chainclient.TxError
	require.ErrorAs(t, err, &txErr, "refused by the module, not by the client")
}
