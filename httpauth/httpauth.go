// Package httpauth signs and checks HTTP requests between devshard nodes.
// A request carries the signer's public key, a unix time and a secp256k1
// signature over the method, the request URI and that time, so a host can
// tell which account is asking (a group member, the escrow's creator)
// without sessions or passwords.
package httpauth

import (
	"encoding/hex"
	"errors"
	"fmt"
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

func message(method, uri string, unix int64) []byte {
	const tag = "devshard/v1/http"
	b := append([]byte{byte(len(tag))}, tag...)
	return fmt.Appendf(b, "%s\n%s\n%d", method, uri, unix)
}

// Sign adds the auth header to r.
func Sign(r *http.Request, key signing.Signer, now time.Time) error {
	unix := now.Unix()
	sig, err := key.Sign(message(r.Method, r.URL.RequestURI(), unix))
	if err != nil {
		return fmt.Errorf("sign request: %w", err)
	}
	pub := key.PubKey()
	r.Header.Set(Header, fmt.Sprintf("%s:%d:%s", hex.EncodeToString(pub[:]), unix, hex.EncodeToString(sig)))
	return nil
}

// Verify returns the address that signed r, or an error a client can act on.
func Verify(r *http.Request, now time.Time) (signing.Address, error) {
	var zero signing.Address
	h := r.Header.Get(Header)
	if h == "" {
		return zero, ErrUnsigned
	}
	parts := strings.Split(h, ":")
	if len(parts) != 3 {
		return zero, fmt.Errorf("%s must be <pubkey hex>:<unix>:<signature hex>", Header)
	}
	pub, err := hex.DecodeString(parts[0])
	if err != nil {
		return zero, fmt.Errorf("%s public key is not hex", Header)
	}
	unix, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return zero, fmt.Errorf("%s time is not a unix time", Header)
	}
	if skew := now.Sub(time.Unix(unix, 0)); skew > MaxSkew || skew < -MaxSkew {
		return zero, fmt.Errorf("%s time is %s away from the server's clock (at most %s)", Header, skew.Round(time.Second), MaxSkew)
	}
	sig, err := hex.DecodeString(parts[2])
	if err != nil {
		return zero, fmt.Errorf("%s signature is not hex", Header)
	}
	if err := signing.Verify(pub, message(r.Method, r.URL.RequestURI(), unix), sig); err != nil {
		return zero, fmt.Errorf("%s: %w", Header, err)
	}
	p, err := signing.PubKeyFromBytes(pub)
	if err != nil {
		return zero, err
	}
	return p.Address(), nil
}
