// Package keys loads the key a host or gateway signs with: a hex key file,
// or an entry of a Cosmos SDK keyring (the same keyring `devshard chain
// keys` manages), so an operator can keep a warm key where they keep the
// rest of their keys.
package keys

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/cosmos/cosmos-sdk/crypto/keyring"
	"github.com/cosmos/cosmos-sdk/crypto/keys/secp256k1"
	signingtypes "github.com/cosmos/cosmos-sdk/types/tx/signing"

	"github.com/devshard/devshard/chaincfg"
	"github.com/devshard/devshard/signing"
)

// LoadFile reads a key file: 64 hex characters (whitespace around them is
// ignored). The file must not be readable by group or others.
func LoadFile(path string) (*signing.PrivKey, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key file %s has mode %04o; make it private with chmod 600", path, info.Mode().Perm())
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	b, err := hex.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil {
		return nil, fmt.Errorf("key file %s must hold 64 hex characters: %v", path, err)
	}
	k, err := signing.PrivKeyFromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return k, nil
}

// WriteFile creates a new key file with a fresh key from rand. It refuses to
// overwrite an existing file.
func WriteFile(path string, rand io.Reader) (*signing.PrivKey, error) {
	k, err := signing.GenerateKey(rand)
	if err != nil {
		return nil, err
	}
	return k, Save(path, k)
}

// Save writes k to a new key file at path (mode 0600); it never overwrites
// an existing file.
func Save(path string, k *signing.PrivKey) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("key file %s already exists; not overwriting it", path)
		}
		return err
	}
	defer f.Close()
	if _, err := fmt.Fprintln(f, hex.EncodeToString(k.Bytes())); err != nil {
		return err
	}
	return f.Sync()
}

// Keyring signs with a keyring entry. The keyring hashes with SHA-256 and
// returns low-S r||s signatures for secp256k1, exactly what the protocol
// verifies.
type Keyring struct {
	kr   keyring.Keyring
	name string
	pub  signing.PubKey
}

// OpenKeyring opens entry name of a keyring with backend (file, test, os)
// in dir. The file backend reads its passphrase from in.
func OpenKeyring(backend, dir, name string, in io.Reader) (*Keyring, error) {
	enc := chaincfg.MakeEncoding()
	kr, err := keyring.New("devshard", backend, dir, in, enc.Codec)
	if err != nil {
		return nil, fmt.Errorf("open %s keyring in %s: %w", backend, dir, err)
	}
	return FromKeyring(kr, name)
}

// FromKeyring wraps an open keyring's entry.
func FromKeyring(kr keyring.Keyring, name string) (*Keyring, error) {
	rec, err := kr.Key(name)
	if err != nil {
		return nil, fmt.Errorf("key %q: %w", name, err)
	}
	pk, err := rec.GetPubKey()
	if err != nil {
		return nil, fmt.Errorf("key %q: %w", name, err)
	}
	if _, ok := pk.(*secp256k1.PubKey); !ok {
		return nil, fmt.Errorf("key %q is %s; devshard signs with secp256k1 keys", name, pk.Type())
	}
	var pub signing.PubKey
	copy(pub[:], pk.Bytes())
	return &Keyring{kr: kr, name: name, pub: pub}, nil
}

// PubKey implements signing.Signer.
func (k *Keyring) PubKey() signing.PubKey { return k.pub }

// Sign implements signing.Signer.
func (k *Keyring) Sign(msg []byte) ([]byte, error) {
	sig, _, err := k.kr.Sign(k.name, msg, signingtypes.SignMode_SIGN_MODE_DIRECT)
	if err != nil {
		return nil, fmt.Errorf("sign with key %q: %w", k.name, err)
	}
	return sig, nil
}
