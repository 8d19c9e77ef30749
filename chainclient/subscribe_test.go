package chainclient

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coretypes "github.com/cometbft/cometbft/rpc/core/types"
	rpcserver "github.com/cometbft/cometbft/rpc/jsonrpc/server"
	rpctypes "github.com/cometbft/cometbft/rpc/jsonrpc/types"
	cmttypes "github.com/cometbft/cometbft/types"
	"github.com/stretchr/testify/require"
)

// fakeRPC is a fake chain node's CometBFT websocket: a subscription gets a
// new block header every 20ms until the node stops.
type fakeRPC struct {
	url        string
	subscribed atomic.Int32
	stop       func() // the node dies: its listener and every connection close
}

func serveFakeRPC(t *testing.T) *fakeRPC {
	t.Helper()
	f := &fakeRPC{}
	dead := make(chan struct{})
	funcs := map[string]*rpcserver.RPCFunc{
		"subscribe": rpcserver.NewWSRPCFunc(func(ctx *rpctypes.Context, query string) (*coretypes.ResultSubscribe, error) {
			f.subscribed.Add(1)
			conn, id := ctx.WSConn, ctx.JSONReq.ID
			go func() {
				for h := int64(1); ; h++ {
					ev := coretypes.ResultEvent{Query: query, Data: cmttypes.EventDataNewBlockHeader{Header: cmttypes.Header{Height: h}}}
					select {
					case <-dead:
						return
					case <-time.After(20 * time.Millisecond):
					}
					if err := conn.WriteRPCResponse(context.Background(), rpctypes.NewRPCSuccessResponse(id, ev)); err != nil {
						return
					}
				}
			}()
			return &coretypes.ResultSubscribe{}, nil
		}, "query"),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/websocket", rpcserver.NewWebsocketManager(funcs).WebsocketHandler)
	srv := httptest.NewUnstartedServer(mux)
	var mu sync.Mutex
	var conns []net.Conn
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}
	srv.Start()
	f.url = srv.URL
	var once sync.Once
	f.stop = func() {
		once.Do(func() {
			close(dead)
			srv.Listener.Close()
			mu.Lock()
			for _, c := range conns { // hijacked websockets outlive srv.Close
				c.Close()
			}
			mu.Unlock()
			srv.Close()
		})
	}
	t.Cleanup(f.stop)
	return f
}

// A block subscription whose node dies closes, and the next one is made on
// the next RPC endpoint.
func TestASubscriptionThatDropsMovesToTheNextNode(t *testing.T) {
	t.Parallel()
	first, second := serveFakeRPC(t), serveFakeRPC(t)
	c := &Client{rpc: []string{first.url, second.url}, log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()

	blocks, stop, err := c.subscribeBlocks(ctx)
	require.NoError(t, err)
	<-blocks
	require.Equal(t, int32(1), first.subscribed.Load())

	first.stop()
	closed := false
	for !closed {
		select {
		case _, ok := <-blocks:
			closed = !ok
		case <-ctx.Done():
			t.Fatal("the subscription to a dead node never closed")
		}
	}
	stop()

	blocks, stop, err = c.subscribeBlocks(ctx)
	require.NoError(t, err)
	defer stop()
	ev := <-blocks
	require.IsType(t, cmttypes.EventDataNewBlockHeader{}, ev.Data)
	require.Equal(t, int32(1), second.subscribed.Load(), "made again on the second node")
}
