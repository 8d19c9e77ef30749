package chainload

import "testing"

// Each gateway probes gas with its settlement paying the most distinct
// hosts, the first of them on a tie: a probe of a cheaper group sets a
// limit the dearer ones run out of.
func TestProbeForPicksTheMostDistinctHosts(t *testing.T) {
	s := []settlement{
		{gateway: 0, hosts: 1}, {gateway: 1, hosts: 2}, {gateway: 0, hosts: 4},
		{gateway: 1, hosts: 2}, {gateway: 0, hosts: 3}, {gateway: 0, hosts: 4},
	}
	if got := probeFor(s, 0); got != 2 {
		t.Errorf("gateway 0 probes settlement %d, want 2 (four hosts, the first such)", got)
	}
	if got := probeFor(s, 1); got != 1 {
		t.Errorf("gateway 1 probes settlement %d, want 1 (first of the ties)", got)
	}
	if got := probeFor(s, 2); got != -1 {
		t.Errorf("a gateway with no settlement probes %d, want -1", got)
	}
}
