// Package httpauth signs and checks HTTP requests between devshard nodes.
// A request carries the signer's public key, a unix time and a secp256k1
// signature over the chain id, the audience (the account of the host the
// request is for), the method, the request URI, the time and the SHA-256 of
// the body, so a host can tell which account is asking (a group member, the
// escrow's creator) without sessions or passwords, and a signed request
// cannot be replayed to another host, on another chain, or with another
// body.
//
// Within MaxSkew the same signed request may be replayed to the same host:
// the routes that take signed requests are idempotent reads, or writes the
// host takes once (a replayed diff is a replay, a replayed tx is pooled
// once, an inference runs once).
package httpauth

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/devshard/devshard/signing"
)

// Header carries "<pubkey hex>:<unix seconds>:<signature hex>".
const Header = "X-Devshard-Auth"

// MaxSkew is how far a request's time may be from the server's.
const MaxSkew = 2 * time.Minute

// ErrUnsigned is a request without the header.
var ErrUnsigned = errors.New("request is not signed")

// Audience names whom a signed request is for: the chain it belongs to and
// the account of the host it is sent to. The sender knows the host's
// account from the escrow's group; an address in the signed bytes, unlike
// the Host header, survives proxies.
type Audience struct {
	ChainID string
	Host    signing.Address
}

// message is the signed byte layout: a length-prefixed tag, then the chain
// id, the audience's address (hex), the method, the request URI, the unix
// time and the body's SHA-256 (hex), each on its own line. The chain id is
// length-prefixed, so no chain id can end where another field starts.
func message(to Audience, method, uri string, unix int64, body []byte) []byte {
	const tag = "devshard/v2/http"
	b := append([]byte{byte(len(tag))}, tag...)
	sum := sha256.Sum256(body)
	return fmt.Appendf(b, "%d:%s\n%s\n%s\n%s\n%d\n%s", len(to.ChainID), to.ChainID, to.Host, method, uri, unix, hex.EncodeToString(sum[:]))
}

// Sign adds the auth header to r, whose body is body (nil for none), for
// the host and chain in to.
func Sign(r *http.Request, body []byte, key signing.Signer, to Audience, now time.Time) error {
	unix := now.Unix()
	sig, err := key.Sign(message(to, r.Method, r.URL.RequestURI(), unix, body))
	if err != nil {
		return fmt.Errorf("sign request: %w", err)
	}
	pub := key.PubKey()
	r.Header.Set(Header, fmt.Sprintf("%s:%d:%s", hex.EncodeToString(pub[:]), unix, hex.EncodeToString(sig)))
	return nil
}

// Verify checks that r is signed for me and returns the address that signed
// it, with the body it read (at most maxBody bytes, else an
// *http.MaxBytesError): the handler must use these bytes, the ones the
// signature covers, and r.Body is replaced by a reader over them. Errors
// are sentences a client can act on. The header is checked before the body
// is read, so an unsigned or stale request costs no body.
func Verify(r *http.Request, me Audience, maxBody int64, now time.Time) (signing.Address, []byte, error) {
	var zero signing.Address
	h := r.Header.Get(Header)
	if h == "" {
		return zero, nil, ErrUnsigned
	}
	parts := strings.Split(h, ":")
	if len(parts) != 3 {
		return zero, nil, fmt.Errorf("%s must be <pubkey hex>:<unix>:<signature hex>", Header)
	}
	pub, err := hex.DecodeString(parts[0])
	if err != nil {
		return zero, nil, fmt.Errorf("%s public key is not hex", Header)
	}
	unix, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return zero, nil, fmt.Errorf("%s time is not a unix time", Header)
	}
	if skew := now.Sub(time.Unix(unix, 0)); skew > MaxSkew || skew < -MaxSkew {
		return zero, nil, fmt.Errorf("%s time is %s away from the server's clock (at most %s)", Header, skew.Round(time.Second), MaxSkew)
	}
	sig, err := hex.DecodeString(parts[2])
	if err != nil {
		return zero, nil, fmt.Errorf("%s signature is not hex", Header)
	}
	p, err := signing.PubKeyFromBytes(pub)
	if err != nil {
		return zero, nil, fmt.Errorf("%s public key: %w", Header, err)
	}
	body, err := readBody(r, maxBody)
	if err != nil {
		return zero, nil, err
	}
	if err := signing.Verify(pub, message(me, r.Method, r.URL.RequestURI(), unix, body), sig); err != nil {
		return zero, nil, fmt.Errorf("%s does not verify for this request to host %s on chain %q (signed for another host or chain, or the URI or body changed): %w", Header, me.Host, me.ChainID, err)
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return p.Address(), body, nil
}

// readBody reads r's body, at most maxBody bytes.
func readBody(r *http.Request, maxBody int64) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, err
		}
		return nil, fmt.Errorf("read the request body: %w", err)
	}
	if int64(len(body)) > maxBody {
		return nil, &http.MaxBytesError{Limit: maxBody}
	}
	return body, nil
}
