package chainclient

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseEndpoints(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, list string
		rpc        bool
		want       []string
		err        string
	}{
		{name: "one gRPC node, as before", list: "127.0.0.1:9090", want: []string{"127.0.0.1:9090"}},
		{name: "three gRPC nodes, blanks dropped", list: "a:9090, b:9091 ,c.example:9092", want: []string{"a:9090", "b:9091", "c.example:9092"}},
		{name: "an IPv6 gRPC node", list: "[::1]:9090", want: []string{"[::1]:9090"}},
		{name: "no gRPC node", list: " ", err: "no gRPC endpoint is given"},
		{name: "a gRPC node without a port", list: "127.0.0.1", err: `gRPC endpoint "127.0.0.1" is malformed: it is not host:port`},
		{name: "a gRPC URL", list: "a:9090,http://b:9090", err: `gRPC endpoint 2 of 2, "http://b:9090", is malformed: it is not host:port`},
		{name: "a gRPC port out of range", list: "a:90900", err: `gRPC endpoint "a:90900" is malformed: its port "90900" is not a number from 1 to 65535`},
		{name: "a gRPC node without a host", list: ":9090", err: `gRPC endpoint ":9090" is malformed: it names no host`},
		{name: "an empty element", list: "a:9090,,b:9090", err: `gRPC endpoint 2 of 3 in "a:9090,,b:9090" is empty`},

		{name: "one RPC node", rpc: true, list: "http://127.0.0.1:26657", want: []string{"http://127.0.0.1:26657"}},
		{name: "RPC nodes of every scheme", rpc: true, list: "tcp://a:26657,https://rpc.example,ws://b:1,wss://c:2", want: []string{"tcp://a:26657", "https://rpc.example", "ws://b:1", "wss://c:2"}},
		{name: "no RPC node is none", rpc: true, list: "", want: nil},
		{name: "an RPC node without a scheme", rpc: true, list: "http://a:26657,b:26657", err: `CometBFT RPC endpoint 2 of 2, "b:26657", is malformed: it does not start with http://, https://, tcp://, ws://, wss://`},
		{name: "an RPC node without a host", rpc: true, list: "http://:26657", err: `CometBFT RPC endpoint "http://:26657" is malformed: it names no host`},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			parse := ParseGRPC
			if c.rpc {
				parse = ParseRPC
			}
			got, err := parse(c.list)
			if c.err != "" {
				require.ErrorContains(t, err, c.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, c.want, got)
		})
	}
}

// Dial refuses a malformed endpoint with the sentence that names it.
func TestDialRefusesAMalformedEndpoint(t *testing.T) {
	t.Parallel()
	_, err := Dial(Config{GRPC: "127.0.0.1:9090,127.0.0.1"})
	require.ErrorContains(t, err, `gRPC endpoint 2 of 2, "127.0.0.1", is malformed`)
	_, err = Dial(Config{GRPC: "127.0.0.1:9090", RPC: "127.0.0.1:26657"})
	require.ErrorContains(t, err, `CometBFT RPC endpoint "127.0.0.1:26657" is malformed`)
}
