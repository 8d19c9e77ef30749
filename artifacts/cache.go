// Package artifacts keeps prepared artifacts (models compiled or converted
// for this machine) on disk across restarts, and never hands out one it has
// not just verified.
//
// Layout under the root directory:
//
//	<root>/<env hash>/<id>       the artifact
//	<root>/<env hash>/<id>.sum   its checksum, hex, one line
//	<root>/<env hash>/.tmp-*     preparations and checksums being written
//
// An artifact is installed by renaming it into place after its checksum
// file; the rename is the commit point. An artifact without a checksum
// file is never loaded, and a temp file is never loaded at all.
package artifacts

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultMaxBytes is the byte bound when Options.MaxBytes is zero.
const DefaultMaxBytes int64 = 10 << 30

// MaxIDLen bounds an artifact id, so that "<id>.sum" and the temp names
// stay within a file name's 255 bytes.
const MaxIDLen = 128

const (
	sumSuffix = ".sum"
	tmpPrefix = ".tmp-"
	// sumFileSize is the size of a checksum file: 64 hex digits and a newline.
	sumFileSize = 2*sha256.Size + 1
	// sumDomain separates artifact checksums from every other sha256.
	sumDomain = "devshard/artifacts/sum/v1"
)

// Options tune a Cache. The zero value is usable.
type Options struct {
	// MaxBytes bounds the bytes of installed artifacts and their checksum
	// files; DefaultMaxBytes if zero. A preparation in flight adds its
	// temp file until it is installed or refused.
	MaxBytes   int64
	Registerer prometheus.Registerer // metrics are registered here if set
	Logger     *slog.Logger          // discards if nil
	Now        func() time.Time      // time.Now if nil; times preparations
}

// Stats are the cache's counters since Open, and its state now.
type Stats struct {
	BytesUsed           int64 // installed artifacts, their checksum files, and space reserved by installs under way
	Entries             int
	Hits                int64 // Acquires served by an existing artifact, verified
	Misses              int64 // Acquires that waited for a preparation, their own or a shared one
	Preparations        int64 // prepare funcs run
	ChecksumFailures    int64 // artifacts found not to match their checksum, and discarded
	Evictions           int64
	ConstructionRetries int64 // Discard calls
}

// Cache is the persistent, verified cache of one environment's artifacts.
// It is safe for concurrent use; only one process may open a root at a
// time.
type Cache struct {
	dir     string
	envHash string
	max     int64
	log     *slog.Logger
	now     func() time.Time
	m       *metrics

	mu      sync.Mutex
	entries map[string]*entry
	flights map[string]*flight
	// ghosts are artifacts taken out of the index (discarded, or found not
	// to match) while someone still held them: their files stay, and
	// count in used, until a new preparation of the id is renamed over
	// them or the last holder releases them.
	ghosts map[string]*entry
	used   int64  // bytes of entries, ghosts and reservations for installs under way
	tick   uint64 // the LRU clock
	stats  Stats
}

// entry is one installed artifact. Its fields are guarded by Cache.mu.
type entry struct {
	id       string
	size     int64 // the artifact and its checksum file
	sum      string
	pins     int
	lastUse  uint64
	discard  bool // Discard was called while it was pinned
	detached bool // no longer in the index; its files are not its own any more
}

// flight is one preparation that concurrent Acquires of its id share.
type flight struct {
	done chan struct{}
	e    *entry // installed and pinned once for each waiter, if err is nil
	err  error
	// waiters are the Acquires waiting on it; the leader pins the entry
	// for each of them as it installs it, so none loses it to eviction.
	waiters int
}

// Open opens the cache of env under root. It deletes the directories of
// other environments, temp files left by a process that died, checksum
// files without an artifact and artifacts without a well-formed checksum
// file, then evicts down to the bound if it is lower than before.
// The content of each artifact is verified when it is acquired, not here.
func Open(root string, env Env, opts Options) (*Cache, error) {
	if opts.MaxBytes < 0 {
		return nil, fmt.Errorf("artifact cache bound is %d bytes; want a positive size, or 0 for the default", opts.MaxBytes)
	}
	c := &Cache{
		envHash: env.Hash(),
		max:     opts.MaxBytes,
		log:     opts.Logger,
		now:     opts.Now,
		entries: map[string]*entry{},
		flights: map[string]*flight{},
		ghosts:  map[string]*entry{},
	}
	if c.max == 0 {
		c.max = DefaultMaxBytes
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	c.dir = filepath.Join(root, c.envHash)
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, fmt.Errorf("create the artifact cache directory: %w", err)
	}
	if err := c.removeOtherEnvs(root); err != nil {
		return nil, err
	}
	if err := c.load(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	err := c.evictLocked(0)
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if err := syncDir(c.dir); err != nil {
		return nil, err
	}
	c.m = newMetrics(c)
	if opts.Registerer != nil {
		if err := c.m.register(opts.Registerer); err != nil {
			return nil, err
		}
	}
	c.log.Info("artifact cache opened", "dir", c.dir, "entries", len(c.entries), "bytes", c.used, "max_bytes", c.max)
	return c, nil
}

// removeOtherEnvs deletes the directories under root named like an
// environment hash other than ours. Other names are left alone, so a root
// set by mistake to a directory with other content loses none of it.
func (c *Cache) removeOtherEnvs(root string) error {
	des, err := os.ReadDir(root)
	if err != nil {
		return fmt.Errorf("list the artifact cache root: %w", err)
	}
	for _, de := range des {
		if !de.IsDir() || de.Name() == c.envHash || !isHexSHA256(de.Name()) {
			continue
		}
		c.log.Info("removing the artifacts of another environment", "dir", de.Name())
		if err := os.RemoveAll(filepath.Join(root, de.Name())); err != nil {
			return fmt.Errorf("remove the artifacts of another environment: %w", err)
		}
	}
	return nil
}

func isHexSHA256(name string) bool {
	if len(name) != 2*sha256.Size {
		return false
	}
	_, err := hex.DecodeString(name)
	return err == nil && strings.ToLower(name) == name
}

// load indexes the artifacts in the env directory and deletes everything
// there that is not an artifact with a well-formed checksum file.
func (c *Cache) load() error {
	des, err := os.ReadDir(c.dir)
	if err != nil {
		return fmt.Errorf("list the artifact cache: %w", err)
	}
	var kept []*entry
	mod := map[*entry]time.Time{}
	remove := func(name, why string) error {
		c.log.Warn("removing a file from the artifact cache", "file", name, "reason", why)
		if err := os.RemoveAll(filepath.Join(c.dir, name)); err != nil {
			return fmt.Errorf("clean the artifact cache: %w", err)
		}
		return nil
	}
	for _, de := range des {
		name := de.Name()
		switch {
		case strings.HasPrefix(name, tmpPrefix):
			err = remove(name, "left by an unfinished preparation")
		case strings.HasSuffix(name, sumSuffix):
			id := strings.TrimSuffix(name, sumSuffix)
			if validID(id) != nil {
				err = remove(name, "not a checksum file")
			} else if _, serr := os.Lstat(filepath.Join(c.dir, id)); errors.Is(serr, os.ErrNotExist) {
				err = remove(name, "a checksum without its artifact")
			}
		case validID(name) != nil || !de.Type().IsRegular():
			err = remove(name, "not an artifact")
		default:
			var e *entry
			var t time.Time
			if e, t, err = c.loadOne(name); e != nil {
				kept = append(kept, e)
				mod[e] = t
			} else if err == nil {
				// Its checksum file, if any, is malformed: both go.
				err = remove(name, "no well-formed checksum file")
				if err == nil {
					err = remove(name+sumSuffix, "malformed")
				}
			}
		}
		if err != nil {
			return err
		}
	}
	// The least recently written is the first to go.
	slices.SortFunc(kept, func(a, b *entry) int { return mod[a].Compare(mod[b]) })
	for _, e := range kept {
		c.tick++
		e.lastUse = c.tick
		c.entries[e.id] = e
		c.used += e.size
	}
	return nil
}

// loadOne reads the checksum file of artifact id and returns its entry and
// the artifact's modification time. It returns no entry and no error if
// the checksum file is missing or malformed.
func (c *Cache) loadOne(id string) (*entry, time.Time, error) {
	fi, err := os.Stat(filepath.Join(c.dir, id))
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("read the artifact cache: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(c.dir, id+sumSuffix))
	if errors.Is(err, os.ErrNotExist) {
		return nil, time.Time{}, nil
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("read the checksum of artifact %q: %w", id, err)
	}
	sum, ok := strings.CutSuffix(string(b), "\n")
	if !ok || len(b) != sumFileSize || !isHexSHA256(sum) {
		return nil, time.Time{}, nil
	}
	return &entry{id: id, size: fi.Size() + sumFileSize, sum: sum}, fi.ModTime(), nil
}

// validID refuses ids that are not a plain, bounded file name of their own:
// no separators, no leading dot (so never ".", ".." or a temp name), and
// not ending as a checksum file does.
func validID(id string) error {
	switch {
	case id == "":
		return &IDError{ID: id, Reason: "empty"}
	case len(id) > MaxIDLen:
		return &IDError{ID: id, Reason: fmt.Sprintf("%d bytes long, more than %d", len(id), MaxIDLen)}
	case strings.HasSuffix(id, sumSuffix):
		return &IDError{ID: id, Reason: "ends in " + sumSuffix}
	}
	for i, r := range id {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || (i > 0 && (r == '.' || r == '-' || r == '_'))
		if !ok {
			return &IDError{ID: id, Reason: "only letters, digits and, after the first character, '.', '-' and '_' are allowed"}
		}
	}
	return nil
}

// Handle is a verified artifact, pinned: it is not evicted until Release.
type Handle struct {
	c    *Cache
	e    *entry
	path string
	once sync.Once
}

// Path is the artifact's file. Read it, do not change it.
func (h *Handle) Path() string { return h.path }

// Release unpins the artifact. Calling it again does nothing.
func (h *Handle) Release() { h.once.Do(func() { h.c.unpin(h.e) }) }

func (c *Cache) unpin(e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.pins--
	if e.pins == 0 && e.discard && !e.detached {
		c.removeLocked(e)
	}
	c.dropGhostLocked(e.id)
}

// dropGhostLocked deletes the files of id's ghost once no one holds it,
// unless a preparation of id is under way: that one replaces them.
func (c *Cache) dropGhostLocked(id string) {
	g := c.ghosts[id]
	if g == nil || g.pins > 0 || c.flights[id] != nil {
		return
	}
	delete(c.ghosts, id)
	c.used -= g.size
	c.unlinkLocked(id)
}

// Acquire returns artifact id, verified against its checksum just before
// it returns, and pinned until the Handle is released. If the artifact is
// missing, or does not match its checksum (counted, and discarded),
// prepare writes it at tmpPath; the cache then makes it durable, records
// its checksum and installs it. Concurrent Acquires of one id share one
// preparation. A failed preparation is a *PrepareError; an artifact that
// cannot fit under the bound is a *FullError; a refused id an *IDError.
func (c *Cache) Acquire(ctx context.Context, id string, prepare func(ctx context.Context, tmpPath string) error) (*Handle, error) {
	if err := validID(id); err != nil {
		return nil, err
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		c.mu.Lock()
		if f := c.flights[id]; f != nil {
			f.waiters++
			c.stats.Misses++
			c.mu.Unlock()
			c.m.misses.Inc()
			h, retry, err := c.wait(ctx, f)
			if retry {
				continue
			}
			return h, err
		}
		if e := c.entries[id]; e != nil && e.discard {
			// Discarded while others held it: prepare it afresh now. Those
			// still holding it keep its path, where the new one appears.
			c.removeLocked(e)
		}
		if e := c.entries[id]; e != nil {
			e.pins++
			c.mu.Unlock()
			if h := c.verify(e); h != nil {
				return h, nil
			}
			continue // it did not match: prepare it afresh
		}
		f := &flight{done: make(chan struct{})}
		c.flights[id] = f
		c.stats.Misses++
		c.mu.Unlock()
		c.m.misses.Inc()
		return c.lead(ctx, id, f, prepare)
	}
}

// wait waits for another Acquire's preparation. It retries if that one
// gave up because its own context ended while ours has not.
func (c *Cache) wait(ctx context.Context, f *flight) (h *Handle, retry bool, err error) {
	select {
	case <-f.done:
	case <-ctx.Done():
		c.mu.Lock()
		select {
		case <-f.done:
			// Installed meanwhile, with a pin for us: give it back.
			if f.err == nil {
				c.mu.Unlock()
				c.unpin(f.e)
				return nil, false, ctx.Err()
			}
		default:
			f.waiters--
		}
		c.mu.Unlock()
		return nil, false, ctx.Err()
	}
	if f.err != nil {
		if errors.Is(f.err, context.Canceled) || errors.Is(f.err, context.DeadlineExceeded) {
			return nil, ctx.Err() == nil, f.err
		}
		return nil, false, f.err
	}
	return c.handle(f.e), false, nil
}

func (c *Cache) handle(e *entry) *Handle {
	return &Handle{c: c, e: e, path: filepath.Join(c.dir, e.id)}
}

// verify checks pinned entry e against its checksum. It returns a handle
// if it matches; if not, it counts the failure, unpins e, discards it and
// returns nil.
func (c *Cache) verify(e *entry) *Handle {
	sum, _, err := checksum(filepath.Join(c.dir, e.id), c.envHash, e.id)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil && sum == e.sum {
		c.tick++
		e.lastUse = c.tick
		c.stats.Hits++
		c.m.hits.Inc()
		return c.handle(e)
	}
	e.pins--
	if e.detached {
		c.dropGhostLocked(e.id)
		return nil // someone else found it bad first, or replaced it
	}
	c.stats.ChecksumFailures++
	c.m.checksumFailures.Inc()
	c.log.Warn("artifact does not match its checksum; preparing it again", "id", e.id, "want", e.sum, "got", sum, "err", err)
	c.removeLocked(e)
	return nil
}

// lead runs the preparation of flight f and installs its artifact.
func (c *Cache) lead(ctx context.Context, id string, f *flight, prepare func(context.Context, string) error) (h *Handle, err error) {
	defer func() {
		c.mu.Lock()
		delete(c.flights, id)
		c.dropGhostLocked(id) // if it failed, the ghost is nobody's now
		if err == nil && f.e == nil {
			// prepare panicked: the waiters must not wait for ever.
			err = &PrepareError{ID: id, Err: errors.New("prepare panicked")}
		}
		if err == nil {
			f.e.pins += f.waiters
		}
		f.err = err
		close(f.done)
		c.mu.Unlock()
	}()
	tmp, err := c.prepare(ctx, id, prepare)
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp) // a no-op once installed
	e, err := c.install(id, tmp)
	if err != nil {
		return nil, err
	}
	f.e = e
	return c.handle(e), nil
}

// prepare runs the caller's prepare func on a fresh temp file and returns
// its path.
func (c *Cache) prepare(ctx context.Context, id string, prepare func(context.Context, string) error) (string, error) {
	tf, err := os.CreateTemp(c.dir, tmpPrefix+id+"-*")
	if err != nil {
		return "", fmt.Errorf("create a temp file for artifact %q: %w", id, err)
	}
	tmp := tf.Name()
	if err := tf.Close(); err != nil {
		os.Remove(tmp)
		return "", err
	}
	c.mu.Lock()
	c.stats.Preparations++
	c.mu.Unlock()
	start := c.now()
	err = prepare(ctx, tmp)
	c.m.preparations.Inc()
	c.m.prepareSeconds.Observe(c.now().Sub(start).Seconds())
	if err != nil {
		os.Remove(tmp)
		return "", &PrepareError{ID: id, Err: err}
	}
	return tmp, nil
}

// install makes the prepared file tmp durable, reserves its room under
// the bound, writes its checksum and renames it into place. The entry it
// returns is pinned once.
func (c *Cache) install(id, tmp string) (*entry, error) {
	sum, size, err := syncAndSum(tmp, c.envHash, id)
	if err != nil {
		return nil, fmt.Errorf("install artifact %q: %w", id, err)
	}
	size += sumFileSize
	c.mu.Lock()
	if err := c.evictLocked(size); err != nil {
		c.mu.Unlock()
		var full *FullError
		if errors.As(err, &full) {
			full.ID = id
		}
		return nil, err
	}
	c.used += size // reserved while the files are written
	c.mu.Unlock()
	path := filepath.Join(c.dir, id)
	err = writeFileAtomic(c.dir, path+sumSuffix, []byte(sum+"\n"))
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(c.dir)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.used -= size
		os.Remove(path)
		os.Remove(path + sumSuffix)
		return nil, fmt.Errorf("install artifact %q: %w", id, err)
	}
	if g := c.ghosts[id]; g != nil {
		// Renamed over: its holders read the new artifact from now on.
		delete(c.ghosts, id)
		c.used -= g.size
	}
	c.tick++
	e := &entry{id: id, size: size, sum: sum, pins: 1, lastUse: c.tick}
	c.entries[id] = e
	return e, nil
}

// evictLocked evicts the least recently used unpinned artifacts until
// size more bytes fit under the bound. It evicts nothing if they cannot
// fit even with every unpinned artifact gone.
func (c *Cache) evictLocked(size int64) error {
	if c.used+size <= c.max {
		return nil
	}
	var free int64
	var victims []*entry
	for _, e := range c.entries {
		if e.pins == 0 {
			victims = append(victims, e)
			free += e.size
		}
	}
	if size > c.max || c.used-free+size > c.max {
		return &FullError{Size: size, Pinned: c.used - free, MaxBytes: c.max}
	}
	slices.SortFunc(victims, func(a, b *entry) int { return cmp.Compare(a.lastUse, b.lastUse) })
	for _, e := range victims {
		if c.used+size <= c.max {
			break
		}
		c.log.Info("evicting artifact", "id", e.id, "bytes", e.size)
		c.removeLocked(e)
		c.stats.Evictions++
		if c.m != nil {
			c.m.evictions.Inc()
		}
	}
	return nil
}

// removeLocked takes e out of the index and deletes its files, or, if
// someone holds it, makes it id's ghost: a holder's file never vanishes
// under it. It is called with c.mu held, so no preparation of the same id
// can be writing them: a preparation starts only while its id is not in
// the index.
func (c *Cache) removeLocked(e *entry) {
	if e.detached {
		return
	}
	e.detached = true
	delete(c.entries, e.id)
	if e.pins > 0 {
		c.ghosts[e.id] = e
		return
	}
	c.used -= e.size
	c.unlinkLocked(e.id)
}

func (c *Cache) unlinkLocked(id string) {
	path := filepath.Join(c.dir, id)
	// The artifact goes first: a checksum left without it is cleaned at Open.
	for _, p := range []string{path, path + sumSuffix} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			c.log.Error("cannot remove a discarded artifact", "file", p, "err", err)
		}
	}
}

// Discard removes artifact id after it failed to load or start (a
// construction error), so that the next Acquire prepares it again. If
// someone holds it, it is removed when the last holder releases it; if it
// is acquired before that, the new preparation is renamed over it, so a
// holder's path stays readable throughout. Each call counts as a
// construction retry.
func (c *Cache) Discard(id string) error {
	if err := validID(id); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.ConstructionRetries++
	c.m.constructionRetries.Inc()
	e := c.entries[id]
	if e == nil {
		return nil
	}
	c.log.Warn("artifact discarded after a construction error", "id", id, "holders", e.pins)
	if e.pins == 0 {
		c.removeLocked(e)
	} else {
		e.discard = true
	}
	return nil
}

// Stats returns the counters and the state now.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.BytesUsed = c.used
	s.Entries = len(c.entries)
	return s
}

// Dir is the directory of this environment's artifacts.
func (c *Cache) Dir() string { return c.dir }

// checksum hashes the file at path, salted with the environment hash and
// the id, and returns it in hex with the file's size.
func checksum(path, envHash, id string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	return sumReader(f, envHash, id)
}

func sumReader(r io.Reader, envHash, id string) (string, int64, error) {
	h := sha256.New()
	writeField(h, sumDomain)
	writeField(h, envHash)
	writeField(h, id)
	n, err := io.Copy(h, r)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// syncAndSum flushes the prepared file to disk and returns its checksum
// and size.
func syncAndSum(path, envHash, id string) (string, int64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return "", 0, err
	}
	return sumReader(f, envHash, id)
}

// writeFileAtomic writes data to path through a synced temp file in dir
// and a rename.
func writeFileAtomic(dir, path string, data []byte) error {
	f, err := os.CreateTemp(dir, tmpPrefix+"sum-*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync the artifact cache directory: %w", err)
	}
	return nil
}
