package versiond

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// tempPrefix names a download in progress. Such a file sits directly in
// the versions directory, never at a runnable path, so a process killed
// mid-download leaves only this, and startup removes it.
const tempPrefix = ".download-"

// ErrNotHTTPS is a version URL that is not https: the bytes would travel
// unauthenticated, so versiond does not fetch them at all.
var ErrNotHTTPS = errors.New("version URLs must be https")

// HashMismatchError is a download, or an installed binary checked before
// a start, whose bytes do not hash to the approved sha256. Its file has
// been deleted; it is never run.
type HashMismatchError struct {
	Name      string
	Want, Got string
}

func (e *HashMismatchError) Error() string {
	return fmt.Sprintf("version %s: sha256 mismatch (approved %s, downloaded %s); the file was deleted and is not run", e.Name, e.Want, e.Got)
}

// TooLargeError is a download longer than the size limit.
type TooLargeError struct {
	Name  string
	Limit int64
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("version %s: download exceeds the limit of %d bytes", e.Name, e.Limit)
}

// installer downloads and installs binaries under root
// (root/<name>/<sha256>/<binary>).
type installer struct {
	root   string
	binary string
	limit  int64
	// stall bounds the wait for the next byte of a download, so a mirror
	// that stops sending does not hold the install forever.
	stall  time.Duration
	client *http.Client
}

// newHTTPClient returns a client that trusts the system roots and, if
// caFile is set, the certificates in it, and that follows no redirect
// away from https.
func newHTTPClient(caFile string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("reading the trusted CA file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("the trusted CA file %s holds no PEM certificate", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(r *http.Request, via []*http.Request) error {
			if r.URL.Scheme != "https" {
				return fmt.Errorf("redirect to %s refused: %w", r.URL.Redacted(), ErrNotHTTPS)
			}
			if len(via) >= 5 {
				return errors.New("more than 5 redirects")
			}
			return nil
		},
	}, nil
}

// versionDir is where every file of the version named name lives.
func (in *installer) versionDir(name string) string { return filepath.Join(in.root, name) }

// path is where v's binary is installed.
func (in *installer) path(v Version) string {
	return filepath.Join(in.root, v.Name, v.SHA256, in.binary)
}

// removeTemps deletes every download left by an interrupted run.
func (in *installer) removeTemps() error {
	entries, err := os.ReadDir(in.root)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tempPrefix) {
			if err := os.Remove(filepath.Join(in.root, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// install makes v's binary present at in.path(v) with the approved hash,
// downloading it unless a verified copy is already there. It returns the
// path, and whether it downloaded.
func (in *installer) install(ctx context.Context, v Version) (path string, fetched bool, err error) {
	dst := in.path(v)
	if err := verify(v, dst); err == nil {
		return dst, false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", false, err // a mismatch: verify deleted the file
	}
	if err := in.download(ctx, v, dst); err != nil {
		return "", true, err
	}
	return dst, true, nil
}

// download fetches v to a temporary file, hashing as it reads, and moves
// it to dst only if the hash matches. The file and its directories are
// synced before and after the rename, so after a crash dst either is
// absent or holds the whole binary.
func (in *installer) download(ctx context.Context, v Version, dst string) (err error) {
	u, err := url.Parse(v.URL)
	if err != nil {
		return fmt.Errorf("version %s: url %q: %w", v.Name, v.URL, err)
	}
	if u.Scheme != "https" {
		return fmt.Errorf("version %s: url %s refused: %w", v.Name, u.Redacted(), ErrNotHTTPS)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var stalled atomic.Bool
	watchdog := time.AfterFunc(in.stall, func() { stalled.Store(true); cancel() })
	defer watchdog.Stop()
	fail := func(err error) error {
		if stalled.Load() {
			return fmt.Errorf("version %s: downloading %s: no byte arrived for %s", v.Name, u.Redacted(), in.stall)
		}
		return fmt.Errorf("version %s: downloading %s: %w", v.Name, u.Redacted(), err)
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.URL, nil)
	if err != nil {
		return err
	}
	resp, err := in.client.Do(req)
	if err != nil {
		return fail(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("version %s: downloading %s: the server answered %s", v.Name, u.Redacted(), resp.Status)
	}
	if resp.ContentLength > in.limit {
		return &TooLargeError{Name: v.Name, Limit: in.limit}
	}

	tmp, err := os.CreateTemp(in.root, tempPrefix+v.Name+"-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	body := &progressReader{r: io.LimitReader(resp.Body, in.limit+1), progress: func() { watchdog.Reset(in.stall) }}
	n, err := io.Copy(io.MultiWriter(tmp, h), body)
	if err != nil {
		return fail(err)
	}
	if n > in.limit {
		return &TooLargeError{Name: v.Name, Limit: in.limit}
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != v.SHA256 {
		return &HashMismatchError{Name: v.Name, Want: v.SHA256, Got: got}
	}
	if err = tmp.Chmod(0o755); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if err = syncDir(in.root); err != nil {
		return err
	}
	dir := filepath.Dir(dst)
	if err = os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err = os.Rename(tmp.Name(), dst); err != nil {
		return err
	}
	// The rename, and the directories it lands in, made durable.
	for _, d := range []string{dir, filepath.Dir(dir), in.root} {
		if err := syncDir(d); err != nil {
			return err
		}
	}
	return nil
}

// verify hashes the file at path against v's approved hash. A file that
// does not match is deleted and reported as a *HashMismatchError; a
// missing file is an error wrapping os.ErrNotExist.
func verify(v Version, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	h := sha256.New()
	_, err = io.Copy(h, f)
	f.Close()
	if err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != v.SHA256 {
		os.Remove(path)
		return &HashMismatchError{Name: v.Name, Want: v.SHA256, Got: got}
	}
	return nil
}

// progressReader calls progress after every read that brought bytes.
type progressReader struct {
	r        io.Reader
	progress func()
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.progress()
	}
	return n, err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Backoff is a delay that starts at Min and doubles after each failure,
// up to Max.
type Backoff struct {
	Min, Max time.Duration
}

// next is the delay after one that was d (zero before the first).
func (b Backoff) next(d time.Duration) time.Duration {
	if d < b.Min {
		return b.Min
	}
	return min(2*d, b.Max)
}

// sleep waits d or until ctx ends, and says whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
