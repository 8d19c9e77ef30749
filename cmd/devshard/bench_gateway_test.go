package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestVersusProxyLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		v    versusProxy
		want string
	}{
		{
			name: "the gateway adds more than the proxy",
			v:    versusProxy{gateway: 1.5, proxy: 0.25},
			want: "added_latency_p50 gateway 1.500 ms proxy 0.250 ms difference 1.250 ms ratio 6.00",
		},
		{
			name: "the gateway adds less than the proxy",
			v:    versusProxy{gateway: 0.1, proxy: 0.4},
			want: "added_latency_p50 gateway 0.100 ms proxy 0.400 ms difference -0.300 ms ratio 0.25",
		},
		{
			name: "the proxy added nothing measurable",
			v:    versusProxy{gateway: 0.8, proxy: 0},
			want: "added_latency_p50 gateway 0.800 ms proxy 0.000 ms difference 0.800 ms ratio n/a (the proxy added nothing measurable)",
		},
		{
			name: "noise put the proxy below the direct model",
			v:    versusProxy{gateway: 0.8, proxy: -0.01},
			want: "added_latency_p50 gateway 0.800 ms proxy -0.010 ms difference 0.810 ms ratio n/a (the proxy added nothing measurable)",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.want, tc.v.line("added_latency_p50"))
		})
	}
}

func TestThroughputVersusProxy(t *testing.T) {
	t.Parallel()
	require.Equal(t, "throughput gateway 250.0 requests/s proxy 1000.0 requests/s ratio 0.250", throughputVersusProxy(250, 1000))
	require.Equal(t, "throughput gateway 250.0 requests/s proxy 0.0 requests/s ratio n/a (the proxy completed nothing)", throughputVersusProxy(250, 0))
}
