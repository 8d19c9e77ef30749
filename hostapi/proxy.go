package hostapi

import (
	"context"
	"encoding/json"
	"time"

	"github.com/devshard/devshard/signing"
)

// Follow is the read route of a proxy host (docs/workers.md, "The proxy
// host"): a validation node that keeps no storage of its own reads the
// sessions of its primary through it. Only the primary's own account, or a
// warm key the account granted, is answered; it changes nothing on the
// primary. It is a POST because the request names every session the proxy
// follows, which does not fit a query string.
var Follow = Route{"POST", "/v1/proxy/follow"}

// Bounds of a follow request and its answer.
const (
	// MaxFollowSessions bounds the sessions one request names.
	MaxFollowSessions = 4096
	// MaxFollowWait bounds how long the primary holds a request open while
	// it has nothing new (a long poll).
	MaxFollowWait = 30 * time.Second
	// MaxFollowDiffs bounds the diffs of one session in one answer; the
	// proxy asks again from where it got to.
	MaxFollowDiffs = MaxDiffsPerDelivery
)

// FollowRequest is the body of POST /v1/proxy/follow.
type FollowRequest struct {
	// Sessions are the sessions the proxy follows: escrow id → the nonce
	// its replica has applied (0: none yet).
	Sessions map[uint64]uint64 `json:"sessions"`
	// WaitMS is how long the primary may wait for something new before it
	// answers, in milliseconds: 0 answers at once, at most MaxFollowWait.
	WaitMS int64 `json:"wait_ms"`
}

// FollowResponse answers POST /v1/proxy/follow.
type FollowResponse struct {
	Sessions []FollowedSession `json:"sessions"`
}

// FollowedSession is one session as the primary holds it.
type FollowedSession struct {
	Escrow uint64 `json:"escrow"`
	// Nonce is the primary's applied nonce.
	Nonce uint64 `json:"nonce"`
	// Done says the session is in its settlement phase: nothing more is
	// validated in it, and a proxy that has caught up forgets it.
	Done bool `json:"done,omitempty"`
	// Gone says the primary no longer serves the session.
	Gone bool `json:"gone,omitempty"`
	// Diffs are the primary's stored diffs after the proxy's nonce,
	// consecutive, each with the payloads of the inferences it starts that
	// other hosts execute (the ones to validate).
	Diffs []DiffItem `json:"diffs,omitempty"`
}

// Follow asks the primary at baseURL, whose account is to, for what is new
// in its sessions since req's nonces. The client's timeout must exceed
// req's wait.
func (c *Client) Follow(ctx context.Context, baseURL string, to signing.Address, req FollowRequest) (*FollowResponse, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var out FollowResponse
	if _, err := c.send(ctx, Follow, baseURL, Follow.Path, to, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
