package versiond

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config is how a Manager installs, runs and retires versions. Zero
// fields take the defaults in parentheses.
type Config struct {
	// Dir is versiond's directory; binaries are installed under
	// Dir/versions/<name>/<sha256>/<BinaryName> and each child runs in
	// Dir/versions/<name>/work. Required.
	Dir string
	// Source delivers the approved version list. Required.
	Source Source
	// Command is the child's command line, a template: {binary} is the
	// installed binary, {listen} the child's loopback address
	// (127.0.0.1:port), {name} the version's name and {workdir} its
	// working directory. The child also finds DEVSHARD_VERSION and
	// DEVSHARD_LISTEN in its environment. It must serve GET /readyz on
	// {listen}, answering 200 once it takes traffic.
	// ({binary} host --listen {listen})
	Command []string
	// BinaryName is the installed file's name. (devshard)
	BinaryName string
	// TrustedCA is a PEM file of certificates trusted for downloads
	// besides the system roots: for test servers and private mirrors.
	TrustedCA string
	// MaxDownload bounds a binary's size in bytes. (512 MiB)
	MaxDownload int64
	// DownloadStall bounds the wait for the next byte of a download; a
	// download that stalls longer fails and is retried. (1m)
	DownloadStall time.Duration
	// DownloadBackoff spaces retries of a failed download. (2s to 5m)
	DownloadBackoff Backoff
	// RestartBackoff spaces restarts of a child that exited. (1s to 1m)
	RestartBackoff Backoff
	// ReadyPoll is how often /readyz is polled while a child starts, and
	// the open-sessions probe while a version drains. (250ms)
	ReadyPoll time.Duration
	// ReadyTimeout bounds a child's start: one that has not answered
	// /readyz with 200 this long after it started is stopped and started
	// again after the restart backoff, and its last error says so. (60s)
	ReadyTimeout time.Duration
	// StopTimeout is how long a child has to exit after SIGTERM before it
	// is killed. (10s)
	StopTimeout time.Duration
	// DrainBound is the longest a retired version keeps serving its open
	// traffic. (10m)
	DrainBound time.Duration
	// OpenSessionsPath is the child's optional probe of open sessions:
	// GET answering 200 with {"open_sessions": n}. A draining version
	// whose child reports 0, with no proxied request still open, is
	// stopped before DrainBound. A child without it drains for the whole
	// bound. Empty turns the probe off. (/devshard/open-sessions)
	OpenSessionsPath string
	// MaxWait bounds the wait of a runtime config long poll. (60s)
	MaxWait time.Duration
	// Registerer gets versiond's metrics. (a fresh registry)
	Registerer prometheus.Registerer
	// Logger gets versiond's log. (slog.Default())
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if len(c.Command) == 0 {
		c.Command = []string{"{binary}", "host", "--listen", "{listen}"}
	}
	if c.BinaryName == "" {
		c.BinaryName = "devshard"
	}
	if c.MaxDownload == 0 {
		c.MaxDownload = 512 << 20
	}
	if c.DownloadStall == 0 {
		c.DownloadStall = time.Minute
	}
	if c.DownloadBackoff == (Backoff{}) {
		c.DownloadBackoff = Backoff{Min: 2 * time.Second, Max: 5 * time.Minute}
	}
	if c.RestartBackoff == (Backoff{}) {
		c.RestartBackoff = Backoff{Min: time.Second, Max: time.Minute}
	}
	if c.ReadyPoll == 0 {
		c.ReadyPoll = 250 * time.Millisecond
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = time.Minute
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = 10 * time.Second
	}
	if c.DrainBound == 0 {
		c.DrainBound = 10 * time.Minute
	}
	if c.OpenSessionsPath == "" {
		c.OpenSessionsPath = "/devshard/open-sessions"
	}
	if c.MaxWait == 0 {
		c.MaxWait = 60 * time.Second
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Manager keeps this host's versions in step with the approved list. Run
// drives it; Handler serves its routes, runtime config and service
// discovery; Status reports it.
type Manager struct {
	cfg Config
	in  *installer
	m   *metrics

	// wake is signalled when a new list arrives or a retired version is
	// gone, so the list is applied again.
	wake chan struct{}
	wg   sync.WaitGroup // one per unit run and per drain

	mu       sync.Mutex
	pending  []Version // the latest list from the source
	approved []string  // the applied list's names, in its order
	units    map[string]*unit
	revision uint64
	changed  chan struct{} // closed and replaced when revision moves
}

// New checks cfg and registers the metrics. Nothing runs until Run.
func New(cfg Config) (*Manager, error) {
	if cfg.Dir == "" {
		return nil, errors.New("versiond needs a directory (Config.Dir)")
	}
	if cfg.Source == nil {
		return nil, errors.New("versiond needs a source of the approved list (Config.Source)")
	}
	cfg.setDefaults()
	if cfg.DownloadBackoff.Min <= 0 || cfg.DownloadBackoff.Max < cfg.DownloadBackoff.Min ||
		cfg.RestartBackoff.Min <= 0 || cfg.RestartBackoff.Max < cfg.RestartBackoff.Min {
		return nil, errors.New("each backoff needs 0 < Min <= Max")
	}
	if cfg.ReadyTimeout < 0 {
		return nil, fmt.Errorf("the ready timeout is %s; it must be positive (0 takes the default, 1m)", cfg.ReadyTimeout)
	}
	client, err := newHTTPClient(cfg.TrustedCA)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("registering versiond's metrics: %w", err)
	}
	root := filepath.Join(cfg.Dir, "versions")
	return &Manager{
		cfg:     cfg,
		in:      &installer{root: root, binary: cfg.BinaryName, limit: cfg.MaxDownload, stall: cfg.DownloadStall, client: client},
		m:       m,
		wake:    make(chan struct{}, 1),
		units:   map[string]*unit{},
		changed: make(chan struct{}),
	}, nil
}

// Run removes what an interrupted download left, then applies each list
// the source delivers until ctx ends or the source fails. It stops every
// child before it returns. Call it once.
func (m *Manager) Run(ctx context.Context) error {
	if err := os.MkdirAll(m.in.root, 0o755); err != nil {
		return err
	}
	if err := m.in.removeTemps(); err != nil {
		return fmt.Errorf("removing interrupted downloads: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watchErr := make(chan error, 1)
	go func() { watchErr <- m.cfg.Source.Watch(ctx, m.offer) }()

	var err error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err = <-watchErr:
			if err != nil {
				err = fmt.Errorf("the version source failed: %w", err)
			} else if ctx.Err() == nil {
				err = errors.New("the version source stopped before versiond did")
			}
			break loop
		case <-m.wake:
			m.apply(ctx)
		}
	}
	cancel()
	m.wg.Wait()
	return err
}

// offer takes a list from the source; the loop in Run applies it.
func (m *Manager) offer(list []Version) {
	m.mu.Lock()
	m.pending = list
	m.mu.Unlock()
	m.signal()
}

func (m *Manager) signal() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// apply brings the units in step with the latest list: a new version is
// installed and started, one that left the list drains, and one that came
// back before its drain ended serves again.
func (m *Manager) apply(ctx context.Context) {
	m.mu.Lock()
	list := m.pending
	m.mu.Unlock()
	want, order := m.usable(list)
	m.stopReplaced(want)

	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweepLocked(want)
	m.approved = order
	for name, v := range want {
		u, ok := m.units[name]
		switch {
		case !ok:
			m.startLocked(ctx, v)
		case u.retiring:
			// Being removed; its removal wakes this loop again.
		default:
			u.mu.Lock()
			if u.draining {
				u.draining = false
				u.drainStop()
			}
			u.mu.Unlock()
		}
	}
	for name, u := range m.units {
		if _, ok := want[name]; !ok {
			m.drainLocked(ctx, u)
		}
	}
	m.bumpLocked()
}

// usable is the list's versions that pass their check, by name, and their
// names in the list's order. A version that fails its check, or repeats
// a name, is logged and skipped; the others are applied.
func (m *Manager) usable(list []Version) (map[string]Version, []string) {
	want := map[string]Version{}
	var order []string
	for _, v := range list {
		if err := v.Check(); err != nil {
			m.cfg.Logger.Warn("versiond: approved version skipped", "err", err)
			continue
		}
		if _, dup := want[v.Name]; dup {
			m.cfg.Logger.Warn("versiond: approved version skipped: its name appears twice", "version", v.Name)
			continue
		}
		want[v.Name] = v
		order = append(order, v.Name)
	}
	return want, order
}

// stopReplaced stops, without a drain, each version whose name is
// approved with another hash, and removes its binary. A changed hash is a
// different binary under the same name: the old one is no longer
// approved, so it must not serve on.
func (m *Manager) stopReplaced(want map[string]Version) {
	m.mu.Lock()
	var replaced []*unit
	for name, u := range m.units {
		if v, ok := want[name]; ok && v.SHA256 != u.v.SHA256 && !u.retiring {
			delete(m.units, name)
			replaced = append(replaced, u)
		}
	}
	m.mu.Unlock()
	for _, u := range replaced {
		u.cancel()
		<-u.done
		m.removeAll(filepath.Dir(m.in.path(u.v)))
	}
}

// drainLocked starts u's drain unless it drains already. The caller holds
// m.mu.
func (m *Manager) drainLocked(ctx context.Context, u *unit) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.draining || u.retiring {
		return
	}
	dctx, stop := context.WithTimeout(ctx, m.cfg.DrainBound)
	u.draining, u.drainStop = true, stop
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer stop()
		m.drain(ctx, dctx, u)
	}()
}

// sweepLocked removes the files of versions that are neither approved
// nor still on this host (left by a run that ended while they drained, or
// that was down when they left the list), and binaries of an approved
// name under a hash that is no longer its own. The caller holds m.mu.
func (m *Manager) sweepLocked(want map[string]Version) {
	names, err := os.ReadDir(m.in.root)
	if err != nil {
		m.cfg.Logger.Warn("versiond: listing installed versions", "err", err)
		return
	}
	for _, e := range names {
		name := e.Name()
		if strings.HasPrefix(name, tempPrefix) || m.units[name] != nil {
			continue
		}
		v, ok := want[name]
		if !ok {
			m.retireFiles(name)
			continue
		}
		hashes, _ := os.ReadDir(filepath.Join(m.in.root, name))
		for _, h := range hashes {
			if h.Name() != v.SHA256 && h.Name() != workDir {
				m.removeAll(filepath.Join(m.in.root, name, h.Name()))
			}
		}
	}
}

// retireFiles removes the files of the version named name, but first
// moves its working directory to <dir>/retired/<name>-<unix time>/: the
// child's storage there holds its sessions' signed states, which pay the
// host if an escrow still settles from them (docs/versiond.md). versiond
// never deletes a retired working directory; the operator does, once its
// escrows are settled. If the move fails, nothing is removed.
func (m *Manager) retireFiles(name string) {
	dir := m.in.versionDir(name)
	work := filepath.Join(dir, workDir)
	if _, err := os.Stat(work); err == nil {
		retired := filepath.Join(filepath.Dir(m.in.root), retiredDir)
		dest := filepath.Join(retired, fmt.Sprintf("%s-%d", name, time.Now().Unix()))
		if err := os.MkdirAll(retired, 0o755); err != nil {
			m.cfg.Logger.Warn("versiond: keeping the files of a retired version where they are", "version", name, "err", err)
			return
		}
		if err := os.Rename(work, dest); err != nil {
			m.cfg.Logger.Warn("versiond: keeping the files of a retired version where they are", "version", name, "err", err)
			return
		}
		m.cfg.Logger.Info("versiond: a retired version's working directory is kept", "version", name, "path", dest)
	}
	m.removeAll(dir)
}

// retiredDir, beside versions/, keeps the working directories of retired
// versions.
const retiredDir = "retired"

func (m *Manager) removeAll(path string) {
	if err := os.RemoveAll(path); err != nil {
		m.cfg.Logger.Warn("versiond: removing files of a version no longer approved", "path", path, "err", err)
	}
}

// startLocked creates v's unit and runs it. The caller holds m.mu.
func (m *Manager) startLocked(ctx context.Context, v Version) {
	uctx, cancel := context.WithCancel(ctx)
	u := &unit{
		v: v, cfg: &m.cfg, in: m.in, m: m.m, notify: m.bump,
		cancel: cancel, done: make(chan struct{}), phase: StateInstalling,
	}
	m.units[v.Name] = u
	m.wg.Add(1)
	go func() { defer m.wg.Done(); u.run(uctx) }()
}

// drain waits until u has no open traffic or dctx (the drain bound) ends,
// then stops its child and removes its files. It does neither when u was
// approved again or replaced meanwhile, nor when versiond is shutting
// down (ctx ended): the next start removes the files of a version that is
// not approved.
func (m *Manager) drain(ctx, dctx context.Context, u *unit) {
	m.cfg.Logger.Info("versiond: version left the approved list; draining", "version", u.v.Name, "bound", m.cfg.DrainBound)
	for sleep(dctx, m.cfg.ReadyPoll) {
		if u.inflight.Load() > 0 {
			continue
		}
		// A version that never served and runs no child (still
		// installing, or a child that exits at start) got no traffic and
		// has nothing to drain; it would otherwise keep retrying for the
		// whole bound.
		if u.neverRan() {
			break
		}
		if n, ok := u.openSessions(ctx); ok && n == 0 {
			break
		}
	}
	m.mu.Lock()
	u.mu.Lock()
	again := !u.draining || m.units[u.v.Name] != u || ctx.Err() != nil
	u.retiring = !again
	u.mu.Unlock()
	m.mu.Unlock()
	if again {
		return
	}
	u.cancel()
	<-u.done
	m.retireFiles(u.v.Name)
	m.cfg.Logger.Info("versiond: version retired; its child stopped and its files removed", "version", u.v.Name)
	m.mu.Lock()
	if m.units[u.v.Name] == u {
		delete(m.units, u.v.Name)
	}
	m.bumpLocked()
	m.mu.Unlock()
	m.signal() // it may have been approved again while it was removed
}

// bump records a change of what Status and the runtime config show.
func (m *Manager) bump() {
	m.mu.Lock()
	m.bumpLocked()
	m.mu.Unlock()
}

func (m *Manager) bumpLocked() {
	m.revision++
	close(m.changed)
	m.changed = make(chan struct{})
	m.m.setStates(m.statusLocked().Versions)
}

// Status is what versiond knows of every version on this host.
type Status struct {
	// Revision moves on every change.
	Revision uint64 `json:"revision"`
	// Preferred is the version new sessions should use: the newest
	// serving one, by the approved list's order (the last one there is the
	// newest). Empty when none serves.
	Preferred string `json:"preferred"`
	// Versions are in the approved list's order, then the draining ones
	// by name.
	Versions []VersionStatus `json:"versions"`
}

// Status reports every version on this host.
func (m *Manager) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.statusLocked()
}

func (m *Manager) statusLocked() Status {
	st := Status{Revision: m.revision}
	seen := map[string]bool{}
	for _, name := range m.approved {
		if u, ok := m.units[name]; ok {
			vs := u.snapshot()
			st.Versions = append(st.Versions, vs)
			seen[name] = true
			if vs.State == StateServing {
				st.Preferred = name
			}
		}
	}
	var rest []VersionStatus
	for name, u := range m.units {
		if !seen[name] {
			rest = append(rest, u.snapshot())
		}
	}
	slices.SortFunc(rest, func(a, b VersionStatus) int { return strings.Compare(a.Name, b.Name) })
	st.Versions = append(st.Versions, rest...)
	return st
}
