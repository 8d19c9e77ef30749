package httpauth

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/signing"
)

func keys(t *testing.T) (key *signing.PrivKey, host, other signing.Address) {
	t.Helper()
	r := rand.New(rand.NewSource(1))
	key, err := signing.GenerateKey(r)
	require.NoError(t, err)
	h, err := signing.GenerateKey(r)
	require.NoError(t, err)
	o, err := signing.GenerateKey(r)
	require.NoError(t, err)
	return key, h.Address(), o.Address()
}

func TestSignVerify(t *testing.T) {
	t.Parallel()
	key, host, _ := keys(t)
	me := Audience{ChainID: "devshard-1", Host: host}
	now := time.Unix(1_700_000_000, 0)
	r := httptest.NewRequest("GET", "/v1/sessions/7/diffs?from=3", nil)
	require.NoError(t, Sign(r, nil, key, me, now))
	addr, body, err := Verify(r, me, 1<<10, now.Add(time.Second))
	require.NoError(t, err)
	require.Equal(t, key.Address(), addr)
	require.Empty(t, body)

	_, _, err = Verify(r, me, 1<<10, now.Add(10*time.Minute))
	require.ErrorContains(t, err, "away from the server's clock")

	other := httptest.NewRequest("GET", "/v1/sessions/7/diffs?from=1", nil)
	other.Header.Set(Header, r.Header.Get(Header))
	_, _, err = Verify(other, me, 1<<10, now)
	require.ErrorIs(t, err, signing.ErrMismatch, "a signature covers the exact URI")

	_, _, err = Verify(httptest.NewRequest("GET", "/", nil), me, 1<<10, now)
	require.ErrorIs(t, err, ErrUnsigned)
	bad := httptest.NewRequest("GET", "/", nil)
	bad.Header.Set(Header, "zz:1:2")
	_, _, err = Verify(bad, me, 1<<10, now)
	require.ErrorContains(t, err, "public key is not hex")
	bad.Header.Set(Header, "nothing")
	_, _, err = Verify(bad, me, 1<<10, now)
	require.ErrorContains(t, err, "must be <pubkey hex>:<unix>:<signature hex>")
}

// A signed request holds only for the host, the chain and the body it was
// signed for. On the old layout (method, URI, time) each of the three
// requests below verified.
func TestSignatureBindsAudienceChainAndBody(t *testing.T) {
	t.Parallel()
	key, host, otherHost := keys(t)
	me := Audience{ChainID: "devshard-1", Host: host}
	now := time.Unix(1_700_000_000, 0)
	body := []byte(`{"tx":"AAAA"}`)
	signed := func() *http.Request {
		r := httptest.NewRequest("POST", "/v1/sessions/7/gossip", bytes.NewReader(body))
		require.NoError(t, Sign(r, body, key, me, now))
		return r
	}
	addr, got, err := Verify(signed(), me, 1<<10, now)
	require.NoError(t, err)
	require.Equal(t, key.Address(), addr)
	require.Equal(t, body, got)

	_, _, err = Verify(signed(), Audience{ChainID: me.ChainID, Host: otherHost}, 1<<10, now)
	require.ErrorIs(t, err, signing.ErrMismatch, "replayed to another host")
	_, _, err = Verify(signed(), Audience{ChainID: "devshard-2", Host: host}, 1<<10, now)
	require.ErrorIs(t, err, signing.ErrMismatch, "replayed on another chain")

	tampered := httptest.NewRequest("POST", "/v1/sessions/7/gossip", strings.NewReader(`{"tx":"BBBB"}`))
	tampered.Header.Set(Header, signed().Header.Get(Header))
	_, _, err = Verify(tampered, me, 1<<10, now)
	require.ErrorIs(t, err, signing.ErrMismatch, "another body")
}

// The handler reads the bytes the signature covers, and no more than the
// bound.
func TestVerifyHandsOnTheVerifiedBody(t *testing.T) {
	t.Parallel()
	key, host, _ := keys(t)
	me := Audience{ChainID: "devshard-1", Host: host}
	now := time.Unix(1_700_000_000, 0)
	body := []byte(`{"diff":"CCo="}`)
	r := httptest.NewRequest("POST", "/v1/sessions/7/diffs", bytes.NewReader(body))
	require.NoError(t, Sign(r, body, key, me, now))
	_, _, err := Verify(r, me, 1<<10, now)
	require.NoError(t, err)
	again, err := io.ReadAll(r.Body)
	require.NoError(t, err)
	require.Equal(t, body, again)

	big := bytes.Repeat([]byte("a"), 2048)
	r = httptest.NewRequest("POST", "/v1/sessions/7/diffs", bytes.NewReader(big))
	require.NoError(t, Sign(r, big, key, me, now))
	_, _, err = Verify(r, me, 1<<10, now)
	var mbe *http.MaxBytesError
	require.True(t, errors.As(err, &mbe), "%v", err)
	require.Equal(t, int64(1<<10), mbe.Limit)
}
