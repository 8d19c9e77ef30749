package gateway

import (
	"net/http"
	"time"

	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/signing"
)

// newPeers is the gateway's client of its hosts' API, signed as the
// gateway, with a pool of idle connections per host deep enough for the
// requests in flight to one host, so the hot path never dials.
func newPeers(key signing.Signer, chainID string, timeout time.Duration) *hostapi.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second}
	return hostapi.NewClient(key, chainID, &http.Client{Transport: tr, Timeout: timeout})
}
