package keys

import (
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/cosmos/cosmos-sdk/crypto/hd"
	"github.com/cosmos/cosmos-sdk/crypto/keyring"
	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/chain"
	"github.com/devshard/devshard/signing"
)

func TestKeyFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "host.key")
	k, err := WriteFile(path, rand.New(rand.NewSource(1)))
	require.NoError(t, err)
	got, err := LoadFile(path)
	require.NoError(t, err)
	require.Equal(t, k.PubKey(), got.PubKey())
	_, err = WriteFile(path, rand.New(rand.NewSource(2)))
	require.ErrorContains(t, err, "already exists; not overwriting it")

	require.NoError(t, os.Chmod(path, 0o644))
	_, err = LoadFile(path)
	require.ErrorContains(t, err, "chmod 600")
	bad := filepath.Join(t.TempDir(), "bad.key")
	require.NoError(t, os.WriteFile(bad, []byte("not hex\n"), 0o600))
	_, err = LoadFile(bad)
	require.ErrorContains(t, err, "must hold 64 hex characters")
	_, err = LoadFile(filepath.Join(t.TempDir(), "missing"))
	require.ErrorContains(t, err, "no such file")
}

// A keyring entry signs what the protocol verifies, under the account
// address the chain knows.
func TestKeyringSignsForTheProtocol(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	enc := chain.MakeEncoding()
	kr, err := keyring.New("devshard", keyring.BackendTest, dir, nil, enc.Codec)
	require.NoError(t, err)
	rec, _, err := kr.NewMnemonic("warm", keyring.English, hd.CreateHDPath(118, 0, 0).String(), "", hd.Secp256k1)
	require.NoError(t, err)
	k, err := OpenKeyring(keyring.BackendTest, dir, "warm", nil)
	require.NoError(t, err)
	msg := []byte("devshard state")
	sig, err := k.Sign(msg)
	require.NoError(t, err)
	pub := k.PubKey()
	require.NoError(t, signing.Verify(pub[:], msg, sig))
	addr, err := rec.GetAddress()
	require.NoError(t, err)
	require.Equal(t, []byte(addr), pub.Address().Bytes(), "same address as the chain's account")

	_, err = OpenKeyring(keyring.BackendTest, dir, "nope", nil)
	require.ErrorContains(t, err, `key "nope"`)
}
