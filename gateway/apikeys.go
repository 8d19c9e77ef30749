package gateway

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// APIKey is one app's credential as the gateway keeps it: an id, which
// names the key in usage accounting, logs and metrics, and the SHA-256 of
// the secret. The secret itself is never kept, logged or shown again.
type APIKey struct {
	ID   string
	Hash [32]byte
	// Created is when the key was added, to the second; zero when its line
	// does not say.
	Created time.Time
}

// NewAPIKey returns a fresh random secret and the APIKey that admits it
// under id.
func NewAPIKey(id string) (APIKey, string) {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	secret := "sk-devshard-" + hex.EncodeToString(b)
	return APIKey{ID: id, Hash: sha256.Sum256([]byte(secret))}, secret
}

// HashAPIKey returns the APIKey that admits secret under id.
func HashAPIKey(id, secret string) (APIKey, error) {
	if err := checkKeyID(id); err != nil {
		return APIKey{}, err
	}
	if len(secret) < minSecret {
		return APIKey{}, fmt.Errorf("the API key with id %q is %d characters long; use at least %d", id, len(secret), minSecret)
	}
	return APIKey{ID: id, Hash: sha256.Sum256([]byte(secret))}, nil
}

// minSecret is the shortest secret HashAPIKey takes.
const minSecret = 16

// Line is k's line in a keys file: its id, a space, its hash in hex and,
// when known, its creation time (RFC 3339, UTC).
func (k APIKey) Line() string {
	line := k.ID + " " + hex.EncodeToString(k.Hash[:])
	if !k.Created.IsZero() {
		line += " " + k.Created.UTC().Format(time.RFC3339)
	}
	return line
}

// ParseAPIKeys reads a keys file: one "<id> <sha256 of the key, hex>
// [created]" per line (APIKey.Line), blank lines and lines starting with #
// skipped. Ids and hashes must be unique.
func ParseAPIKeys(text string) ([]APIKey, error) {
	var out []APIKey
	ids, hashes := map[string]bool{}, map[[32]byte]string{}
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 && len(fields) != 3 {
			return nil, fmt.Errorf("line %d: expected \"<id> <sha256 of the key, 64 hex characters> [created, RFC 3339]\", got %d fields; keys are kept hashed, never in plain text", n+1, len(fields))
		}
		id, hexHash := fields[0], fields[1]
		if err := checkKeyID(id); err != nil {
			return nil, fmt.Errorf("line %d: %w", n+1, err)
		}
		raw, err := hex.DecodeString(hexHash)
		if err != nil || len(raw) != sha256.Size {
			// Not quoted: a key pasted where its hash goes must not reach the logs.
			return nil, fmt.Errorf("line %d: the hash of key %q must be 64 hex characters (SHA-256), got %d characters that are not", n+1, id, len(hexHash))
		}
		k := APIKey{ID: id}
		copy(k.Hash[:], raw)
		if len(fields) == 3 {
			if k.Created, err = time.Parse(time.RFC3339, fields[2]); err != nil {
				return nil, fmt.Errorf("line %d: the creation time of key %q must be RFC 3339 (2006-01-02T15:04:05Z), got %q", n+1, id, fields[2])
			}
		}
		if ids[id] {
			return nil, fmt.Errorf("line %d: the id %q is listed twice; each key needs its own id", n+1, id)
		}
		if other, dup := hashes[k.Hash]; dup {
			return nil, fmt.Errorf("line %d: key %q has the same hash as key %q; one key must not have two ids", n+1, id, other)
		}
		ids[id], hashes[k.Hash] = true, id
		out = append(out, k)
	}
	return out, nil
}

// checkKeyID: ids name keys in logs, metrics and the usage table, so they
// are short and plain.
func checkKeyID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("an API key id must be 1 to 64 characters, got %d", len(id))
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("the API key id %q may hold only letters, digits, '-', '_' and '.'", id)
		}
	}
	return nil
}

// Keyring is the set of API keys the API admits. A keyring opened on a
// keys file follows the file: each Lookup checks whether the file changed
// (its identity, size or modification time) and re-reads it when it did,
// so a key added is admitted, and a key revoked refused, from the next
// request on, without a restart.
type Keyring struct {
	path  string   // the keys file; "" for a fixed set
	fixed []APIKey // admitted whatever the file says (the environment's)
	log   *slog.Logger

	mu  sync.Mutex // held while re-reading
	cur atomic.Pointer[ring]
}

// ring is one reading of the keys.
type ring struct {
	keys []APIKey
	file os.FileInfo // the file as read; nil when it did not exist
}

// NewKeyring admits exactly keys.
func NewKeyring(keys []APIKey) *Keyring {
	r := &Keyring{fixed: append([]APIKey(nil), keys...), log: slog.Default()}
	r.cur.Store(&ring{keys: r.fixed})
	return r
}

// OpenKeyring admits fixed and the keys in the file at path, read now and
// again whenever it changes. A missing file lists no keys. A file that no
// longer parses keeps the keys last read, and the error is logged.
func OpenKeyring(path string, fixed []APIKey, log *slog.Logger) (*Keyring, error) {
	if log == nil {
		log = slog.Default()
	}
	r := &Keyring{path: path, fixed: append([]APIKey(nil), fixed...), log: log}
	fi, _ := os.Stat(path)
	keys, err := r.read()
	if err != nil {
		return nil, err
	}
	r.cur.Store(&ring{keys: keys, file: fi})
	return r, nil
}

// read reads the file and joins the fixed keys to it.
func (r *Keyring) read() ([]APIKey, error) {
	raw, err := os.ReadFile(r.path)
	if errors.Is(err, os.ErrNotExist) {
		return r.fixed, nil
	}
	if err != nil {
		return nil, err
	}
	fileKeys, err := ParseAPIKeys(string(raw))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.path, err)
	}
	ids := map[string]bool{}
	for _, k := range r.fixed {
		ids[k.ID] = true
	}
	for _, k := range fileKeys {
		if ids[k.ID] {
			return nil, fmt.Errorf("the API key id %q is given twice (environment and keys file %s); each key needs its own id", k.ID, r.path)
		}
	}
	return append(append([]APIKey(nil), r.fixed...), fileKeys...), nil
}

// Keys lists the keys admitted now.
func (r *Keyring) Keys() []APIKey {
	return append([]APIKey(nil), r.current().keys...)
}

// Lookup returns the id of the key whose hash is that of token. Every key
// is compared, in constant time, so the answer's timing does not tell how
// close a guess came.
func (r *Keyring) Lookup(token string) (string, bool) {
	h := sha256.Sum256([]byte(token))
	id, found := "", false
	for _, k := range r.current().keys {
		if subtle.ConstantTimeCompare(h[:], k.Hash[:]) == 1 {
			id, found = k.ID, true
		}
	}
	return id, found
}

// current is the latest reading, re-read first if the file changed.
func (r *Keyring) current() *ring {
	cur := r.cur.Load()
	if r.path == "" {
		return cur
	}
	fi, _ := os.Stat(r.path)
	if sameFile(cur.file, fi) {
		return cur
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur = r.cur.Load(); sameFile(cur.file, fi) {
		return cur // another request re-read it meanwhile
	}
	keys, err := r.read()
	if err != nil {
		// Remembering the file as seen reports the error once per change.
		r.log.Error("API keys file not re-read; the keys read before stay in force", "err", err)
		keys = cur.keys
	} else {
		r.log.Info("API keys re-read", "file", r.path, "keys", len(keys))
	}
	next := &ring{keys: keys, file: fi}
	r.cur.Store(next)
	return next
}

// sameFile: a and b describe the same file at the same size and
// modification time, or both are missing.
func sameFile(a, b os.FileInfo) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}
