package httpauth

import (
	"math/rand"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/signing"
)

func TestSignVerify(t *testing.T) {
	t.Parallel()
	key, err := signing.GenerateKey(rand.New(rand.NewSource(1)))
	require.NoError(t, err)
	now := time.Unix(1_700_000_000, 0)
	r := httptest.NewRequest("GET", "/v1/sessions/7/diffs?from=3", nil)
	require.NoError(t, Sign(r, key, now))
	addr, err := Verify(r, now.Add(time.Second))
	require.NoError(t, err)
	require.Equal(t, key.Address(), addr)

	_, err = Verify(r, now.Add(10*time.Minute))
	require.ErrorContains(t, err, "away from the server's clock")

	other := httptest.NewRequest("GET", "/v1/sessions/7/diffs?from=1", nil)
	other.Header.Set(Header, r.Header.Get(Header))
	_, err = Verify(other, now)
	require.ErrorIs(t, err, signing.ErrMismatch, "a signature covers the exact URI")

	_, err = Verify(httptest.NewRequest("GET", "/", nil), now)
	require.ErrorIs(t, err, ErrUnsigned)
	bad := httptest.NewRequest("GET", "/", nil)
	bad.Header.Set(Header, "zz:1:2")
	_, err = Verify(bad, now)
	require.ErrorContains(t, err, "public key is not hex")
	bad.Header.Set(Header, "nothing")
	_, err = Verify(bad, now)
	require.ErrorContains(t, err, "must be <pubkey hex>:<unix>:<signature hex>")
}
