package chain

import (
	"context"
	"slices"

	gogogrpc "github.com/cosmos/gogoproto/grpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cosmos/cosmos-sdk/client/grpc/cmtservice"
	txtypes "github.com/cosmos/cosmos-sdk/types/tx"
)

// RegisterGRPCServerWithSkipCheckHeader serves the app's gRPC services as
// the SDK does, with one difference: the methods that carry a whole tx and
// never read the app's state through a query context (txBytesMethods) are
// served without the SDK's query interceptor.
//
// That interceptor builds a query context for every call and, before the
// handler runs, formats the whole request with %#v for a debug line,
// whatever the log level. A request to broadcast or simulate a tx holds
// the tx's bytes, and %#v prints each byte as a Go literal: for a tx the
// size of 32 settlements (100 KB), a broadcast cost the node 7.9 ms against
// 0.45 ms without (BenchmarkBroadcastTx), about as much as checking the
// quorums of those 32 settlements. Gateways and hosts simulate and
// broadcast every tx through gRPC, so the node they use paid it for every
// tx, again for every resend of a tx still waiting for its block, and for
// any flood of large requests anyone could send it.
//
// What these methods lose: the interceptor's answer header naming the
// height queried (they query no height; no devshard client reads it).
// They never read the height header it parses, and a panic in one is
// still the caller's Internal error (recovering).
func (app *App) RegisterGRPCServerWithSkipCheckHeader(server gogogrpc.Server, skipCheckHeader bool) {
	app.BaseApp.RegisterGRPCServerWithSkipCheckHeader(directServer{server}, skipCheckHeader)
}

// txBytesMethods are the methods served directly, by service and method
// name, each with its generated handler. None uses the query context the
// interceptor would build: BroadcastTx hands the bytes to CometBFT's
// mempool, Simulate runs the app's simulation on its own state, and
// ABCIQuery goes through the app's ABCI Query, which opens its own.
var txBytesMethods = map[string]map[string]grpc.MethodHandler{
	txtypes.Service_serviceDesc.ServiceName: {
		"BroadcastTx": handlerOf(&txtypes.Service_serviceDesc, "BroadcastTx"),
		"Simulate":    handlerOf(&txtypes.Service_serviceDesc, "Simulate"),
	},
	cmtservice.Service_serviceDesc.ServiceName: {
		"ABCIQuery": handlerOf(&cmtservice.Service_serviceDesc, "ABCIQuery"),
	},
}

// handlerOf returns the generated handler of a method of desc. It panics at
// start-up if the SDK renamed the method.
func handlerOf(desc *grpc.ServiceDesc, method string) grpc.MethodHandler {
	for _, m := range desc.Methods {
		if m.MethodName == method {
			return m.Handler
		}
	}
	panic("chain: the SDK's gRPC service " + desc.ServiceName + " has no method " + method)
}

// directServer registers services on the gRPC server, swapping in the
// direct handler of each method of txBytesMethods.
type directServer struct{ gogogrpc.Server }

func (s directServer) RegisterService(desc *grpc.ServiceDesc, impl any) {
	direct, ok := txBytesMethods[desc.ServiceName]
	if !ok {
		s.Server.RegisterService(desc, impl)
		return
	}
	d := *desc
	d.Methods = slices.Clone(desc.Methods)
	for i, m := range d.Methods {
		if h, ok := direct[m.MethodName]; ok {
			d.Methods[i].Handler = recovering(h)
		}
	}
	s.Server.RegisterService(&d, impl)
}

// recovering calls a generated handler with no interceptor, turning a
// panic into an Internal error as the SDK's chain does, so one bad request
// cannot take the node down.
func recovering(h grpc.MethodHandler) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				resp, err = nil, status.Errorf(codes.Internal, "the node failed serving the request: %v", r)
			}
		}()
		return h(srv, ctx, dec, nil)
	}
}
