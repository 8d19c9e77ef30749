package chainclient

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cosmos/cosmos-sdk/client/grpc/cmtservice"
	sdk "github.com/cosmos/cosmos-sdk/types"
	sdkerrors "github.com/cosmos/cosmos-sdk/types/errors"
	txtypes "github.com/cosmos/cosmos-sdk/types/tx"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	devshardtypes "github.com/devshard/devshard/x/devshard/types"
)

// fakeBlocks is a fake chain node's CometBFT gRPC service: its latest
// block is always height, made at time.
type fakeBlocks struct {
	cmtservice.UnimplementedServiceServer
	height int64
	time   time.Time
}

func (f *fakeBlocks) GetLatestBlock(context.Context, *cmtservice.GetLatestBlockRequest) (*cmtservice.GetLatestBlockResponse, error) {
	return &cmtservice.GetLatestBlockResponse{SdkBlock: &cmtservice.Block{Header: cmtservice.Header{Height: f.height, Time: f.time}}}, nil
}

// fakeTxs is a fake chain node's tx service that never finds a tx: the
// node that took it went away before any block included it.
type fakeTxs struct {
	txtypes.UnimplementedServiceServer
}

func (*fakeTxs) GetTx(context.Context, *txtypes.GetTxRequest) (*txtypes.GetTxResponse, error) {
	return nil, status.Error(codes.NotFound, "tx not found")
}

// fakeMempool is a fake chain node's tx service for a tx that no block
// holds: GetTx never finds it, and each broadcast of it is answered with
// answer, as a node answers a tx sent again.
type fakeMempool struct {
	txtypes.UnimplementedServiceServer
	answer *sdk.TxResponse
	sent   atomic.Int32
}

func (*fakeMempool) GetTx(context.Context, *txtypes.GetTxRequest) (*txtypes.GetTxResponse, error) {
	return nil, status.Error(codes.NotFound, "tx not found")
}

func (f *fakeMempool) BroadcastTx(context.Context, *txtypes.BroadcastTxRequest) (*txtypes.BroadcastTxResponse, error) {
	f.sent.Add(1)
	return &txtypes.BroadcastTxResponse{TxResponse: f.answer}, nil
}

// serveFakeNode serves register's services on a fresh loopback port and
// returns its address and the server, stopped at cleanup.
func serveFakeNode(t *testing.T, register func(*grpc.Server)) (string, *grpc.Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	register(srv)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return ln.Addr().String(), srv
}

// Given two nodes, the client reads the first; once it is stopped, the
// next query is answered by the second.
func TestQueriesMoveToTheNextNodeWhenOneStops(t *testing.T) {
	t.Parallel()
	made := time.Date(2026, 1, 2, 12, 0, 3, 0, time.UTC)
	first, firstSrv := serveFakeNode(t, func(s *grpc.Server) { cmtservice.RegisterServiceServer(s, &fakeBlocks{height: 11, time: made}) })
	second, _ := serveFakeNode(t, func(s *grpc.Server) { cmtservice.RegisterServiceServer(s, &fakeBlocks{height: 22, time: made}) })

	c, err := Dial(Config{GRPC: first + ", " + second})
	require.NoError(t, err)
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	height, at, err := c.LatestBlock(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(11), height, "the first node answers while it runs")
	require.True(t, made.Equal(at))

	firstSrv.Stop()
	// The connection notices its node is gone; a call already in flight
	// then would fail, and the next one goes elsewhere.
	for c.Conn().GetState() == connectivity.Ready {
		require.True(t, c.Conn().WaitForStateChange(ctx, connectivity.Ready), "the connection never noticed its node stopped")
	}
	height, _, err = c.LatestBlock(ctx)
	require.NoError(t, err, "the next query goes to the second node")
	require.Equal(t, int64(22), height)
}

// A tx that no block includes is given up on after the wait, with an
// error that says so, not waited for until the caller's context ends.
func TestSendGivesUpOnATxNoBlockIncludes(t *testing.T) {
	t.Parallel()
	addr, _ := serveFakeNode(t, func(s *grpc.Server) { txtypes.RegisterServiceServer(s, &fakeTxs{}) })
	conn, err := dialGRPC([]string{addr})
	require.NoError(t, err)
	defer conn.Close()
	s := NewSender(conn, "devshard-test", nil)
	s.inclusion = 300 * time.Millisecond

	began := time.Now()
	_, err = s.wait(t.Context(), "AB12", []byte("tx"))
	require.ErrorIs(t, err, ErrNotIncluded)
	require.Less(t, time.Since(began), 5*time.Second)
	require.Contains(t, err.Error(), "tx AB12 was sent, but no block included it within 300ms: the node that took it may have gone away, or the chain is making no blocks")
}

// A tx the mempool dropped at its recheck (a settlement of an escrow
// another host's tx settled meanwhile) is never included. Sending it again
// finds the chain refusing it, and the wait ends with that refusal at
// once, not at the wait's bound, which held the account's next tx (a
// rewards claim) until the claim's window had passed.
func TestSendEndsTheWaitForATxTheMempoolDropped(t *testing.T) {
	t.Parallel()
	node := &fakeMempool{answer: &sdk.TxResponse{
		Codespace: devshardtypes.ModuleName, Code: devshardtypes.ErrEscrowClosed.ABCICode(),
		RawLog: "failed to execute message; message index: 0: escrow 7 is SETTLED; only an OPEN escrow can be settled: escrow already settled or expired",
	}}
	addr, _ := serveFakeNode(t, func(s *grpc.Server) { txtypes.RegisterServiceServer(s, node) })
	conn, err := dialGRPC([]string{addr})
	require.NoError(t, err)
	defer conn.Close()
	s := NewSender(conn, "devshard-test", nil)
	s.inclusion = 30 * time.Second
	s.resendEvery = 50 * time.Millisecond

	began := time.Now()
	_, err = s.wait(t.Context(), "AB12", []byte("tx"))
	require.Less(t, time.Since(began), 10*time.Second, "the wait ended with the refusal, not at its bound")
	require.ErrorIs(t, err, devshardtypes.ErrEscrowClosed)
	var refused *TxError
	require.ErrorAs(t, err, &refused)
	require.False(t, refused.Included)
	require.Equal(t, "AB12", refused.Hash)
	i, named := failedMessage(err)
	require.True(t, named, "the settle queue learns which settlement the chain refuses")
	require.Equal(t, 0, i)
}

// A tx sent again while it waits in the mempool (the node's cache has it),
// in a block the index has not caught up with (its sequence is past), or
// after the mempool dropped it while valid (accepted again) can still
// land: the wait goes on to its bound.
func TestSendWaitsOnForATxThatMayStillLand(t *testing.T) {
	t.Parallel()
	for name, answer := range map[string]*sdk.TxResponse{
		"in the cache":   {Codespace: sdkerrors.ErrTxInMempoolCache.Codespace(), Code: sdkerrors.ErrTxInMempoolCache.ABCICode()},
		"sequence past":  {Codespace: sdkerrors.ErrWrongSequence.Codespace(), Code: sdkerrors.ErrWrongSequence.ABCICode(), RawLog: "account sequence mismatch, expected 8, got 7"},
		"accepted again": {TxHash: "AB12"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			node := &fakeMempool{answer: answer}
			addr, _ := serveFakeNode(t, func(s *grpc.Server) { txtypes.RegisterServiceServer(s, node) })
			conn, err := dialGRPC([]string{addr})
			require.NoError(t, err)
			defer conn.Close()
			s := NewSender(conn, "devshard-test", nil)
			s.inclusion = 600 * time.Millisecond
			s.resendEvery = 50 * time.Millisecond

			_, err = s.wait(t.Context(), "AB12", []byte("tx"))
			require.ErrorIs(t, err, ErrNotIncluded)
			require.Greater(t, node.sent.Load(), int32(1), "the tx was sent again while it waited")
		})
	}
}

// A stall is a latest block older than the threshold, told in a sentence.
func TestStalledSaysHowLongAndWhere(t *testing.T) {
	t.Parallel()
	made := time.Date(2026, 1, 2, 12, 0, 3, 0, time.UTC)
	require.NoError(t, Stalled(1234, made, made.Add(29*time.Second), 30*time.Second))
	require.NoError(t, Stalled(1234, made, made.Add(-time.Second), 30*time.Second), "a block from a clock ahead is no stall")
	err := Stalled(1234, made, made.Add(42*time.Second), 30*time.Second)
	var stalled *StalledError
	require.ErrorAs(t, err, &stalled)
	require.Equal(t, int64(1234), stalled.Height)
	require.EqualError(t, err, "the chain has made no block for 42s (last height 1234 at 12:00:03 UTC): its validators may have lost their quorum")
	require.Contains(t, Stalled(1234, made, made.Add(50*time.Hour), 30*time.Second).Error(), "at 2026-01-02 12:00:03 UTC")
}
