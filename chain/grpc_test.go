package chain_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	cmtbytes "github.com/cometbft/cometbft/libs/bytes"
	coretypes "github.com/cometbft/cometbft/rpc/core/types"
	cmttypes "github.com/cometbft/cometbft/types"
	dbm "github.com/cosmos/cosmos-db"
	gogogrpc "github.com/cosmos/gogoproto/grpc"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"cosmossdk.io/log"

	"github.com/cosmos/cosmos-sdk/baseapp"
	"github.com/cosmos/cosmos-sdk/client"
	"github.com/cosmos/cosmos-sdk/client/grpc/cmtservice"
	srvconfig "github.com/cosmos/cosmos-sdk/server/config"
	servergrpc "github.com/cosmos/cosmos-sdk/server/grpc"
	servertypes "github.com/cosmos/cosmos-sdk/server/types"
	txtypes "github.com/cosmos/cosmos-sdk/types/tx"
	banktypes "github.com/cosmos/cosmos-sdk/x/bank/types"

	"github.com/devshard/devshard/chain"
)

// fakeComet is a fake of the node's CometBFT client (the test runs no
// consensus): it records the txs broadcast to it, or panics when told to.
// Any other method is nil and panics.
type fakeComet struct {
	client.CometRPC
	mu      sync.Mutex
	got     [][]byte
	panic   bool
	discard bool // keep no tx (a benchmark's)
}

func (f *fakeComet) BroadcastTxSync(_ context.Context, tx cmttypes.Tx) (*coretypes.ResultBroadcastTx, error) {
	if f.panic {
		panic("the mempool broke")
	}
	if !f.discard {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.got = append(f.got, bytes.Clone(tx))
	}
	return &coretypes.ResultBroadcastTx{Hash: cmtbytes.HexBytes(tx.Hash())}, nil
}

// logFile is a node's log written to a file, which the gRPC server's
// goroutines may write to at once.
type logFile struct{ *os.File }

// count returns how often s stands in the log so far.
func (l logFile) count(t testing.TB, s string) int {
	t.Helper()
	b, err := os.ReadFile(l.Name())
	require.NoError(t, err)
	return strings.Count(string(b), s)
}

// servedApp serves a committed chain's gRPC services as a node does
// (chain/node: the SDK's server over the app), logging at debug level into
// logs, with comet as the node's CometBFT client.
func servedApp(t testing.TB, comet client.CometRPC) (*grpc.ClientConn, logFile) {
	return serveApp(t, comet, zerolog.DebugLevel, func(app *chain.App) servertypes.Application { return app })
}

// sdkServed is the app with the SDK's own registration of its gRPC
// services: every method behind the SDK's query interceptor.
type sdkServed struct{ *chain.App }

func (a sdkServed) RegisterGRPCServerWithSkipCheckHeader(srv gogogrpc.Server, skip bool) {
	a.BaseApp.RegisterGRPCServerWithSkipCheckHeader(srv, skip)
}

func serveApp(t testing.TB, comet client.CometRPC, level zerolog.Level, served func(*chain.App) servertypes.Application) (*grpc.ClientConn, logFile) {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "node.log"))
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	logs := logFile{f}
	logger := log.NewLogger(logs, log.LevelOption(level), log.ColorOption(false))
	app := chain.New(logger, dbm.NewMemDB(), nil, true, appOptions{}, baseapp.SetChainID(testChainID))
	startChain(t, app)
	enc := chain.MakeEncoding()
	clientCtx := client.Context{}.
		WithCodec(enc.Codec).WithInterfaceRegistry(enc.InterfaceRegistry).WithTxConfig(enc.TxConfig).
		WithChainID(testChainID).WithClient(comet)
	app.RegisterTxService(clientCtx)
	app.RegisterTendermintService(clientCtx)
	srv, _, err := servergrpc.NewGRPCServerAndContext(clientCtx, served(app), srvconfig.DefaultConfig().GRPC, logger)
	require.NoError(t, err)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn, logs
}

// The SDK's query interceptor formats every request it sees into a debug
// line, whatever the log level; a request carrying a tx's bytes must not go
// through it. A state query still does (the control: without it, a logger
// that recorded nothing would pass the test).
func TestTxBytesSkipTheQueryInterceptor(t *testing.T) {
	t.Parallel()
	comet := &fakeComet{}
	conn, logs := servedApp(t, comet)
	ctx := context.Background()
	const seen = "gRPC query received"

	_, err := banktypes.NewQueryClient(conn).Params(ctx, &banktypes.QueryParamsRequest{})
	require.NoError(t, err)
	require.Equal(t, 1, logs.count(t, seen), "a state query goes through the SDK's interceptor, which logs it")

	tx := bytes.Repeat([]byte{0xd5}, 100_000) // the size of a tx of 32 settlements
	res, err := txtypes.NewServiceClient(conn).BroadcastTx(ctx, &txtypes.BroadcastTxRequest{TxBytes: tx, Mode: txtypes.BroadcastMode_BROADCAST_MODE_SYNC})
	require.NoError(t, err)
	require.Equal(t, [][]byte{tx}, comet.got, "the tx reached CometBFT unchanged")
	require.Equal(t, fmt.Sprintf("%X", cmttypes.Tx(tx).Hash()), res.TxResponse.TxHash)

	// Both simulations: the tx service's and the ABCI query the chain
	// client uses. The bytes are no tx; the app says so.
	_, err = txtypes.NewServiceClient(conn).Simulate(ctx, &txtypes.SimulateRequest{TxBytes: tx})
	require.Error(t, err)
	q, err := cmtservice.NewServiceClient(conn).ABCIQuery(ctx, &cmtservice.ABCIQueryRequest{Path: "/app/simulate", Data: tx})
	require.NoError(t, err)
	require.NotZero(t, q.Code, "the app refuses bytes that are no tx")

	require.Equal(t, 1, logs.count(t, seen), "broadcast and simulation bypass the interceptor")
}

// A panic while serving a direct method is the caller's Internal error; the
// node goes on serving.
func TestDirectMethodPanicIsAnError(t *testing.T) {
	t.Parallel()
	comet := &fakeComet{panic: true}
	conn, _ := servedApp(t, comet)
	ctx := context.Background()
	_, err := txtypes.NewServiceClient(conn).BroadcastTx(ctx, &txtypes.BroadcastTxRequest{TxBytes: []byte{1}, Mode: txtypes.BroadcastMode_BROADCAST_MODE_SYNC})
	require.Equal(t, codes.Internal, status.Code(err), "%v", err)
	require.Contains(t, status.Convert(err).Message(), "the mempool broke")
	_, err = banktypes.NewQueryClient(conn).Params(ctx, &banktypes.QueryParamsRequest{})
	require.NoError(t, err, "the node still serves")
}

// BenchmarkBroadcastTx broadcasts a tx the size of 32 settlements over
// gRPC to a node, through the SDK's own registration of the tx service and
// through the app's, in one run, logging at info level as a node does by
// default: the ratio is what the direct path saves a node on each
// broadcast.
func BenchmarkBroadcastTx(b *testing.B) {
	tx := bytes.Repeat([]byte{0xd5}, 100_000)
	for _, path := range []struct {
		name   string
		served func(*chain.App) servertypes.Application
	}{
		{"sdk-interceptor", func(app *chain.App) servertypes.Application { return sdkServed{app} }},
		{"direct", func(app *chain.App) servertypes.Application { return app }},
	} {
		b.Run(path.name, func(b *testing.B) {
			conn, _ := serveApp(b, &fakeComet{discard: true}, zerolog.InfoLevel, path.served)
			c := txtypes.NewServiceClient(conn)
			req := &txtypes.BroadcastTxRequest{TxBytes: tx, Mode: txtypes.BroadcastMode_BROADCAST_MODE_SYNC}
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.BroadcastTx(context.Background(), req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
