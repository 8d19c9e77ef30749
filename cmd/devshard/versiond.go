package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/devshard/devshard/internal/httpserve"
	"github.com/devshard/devshard/versiond"
)

// versiondFlags are the settings of `devshard versiond`.
type versiondFlags struct {
	dir, listen, trustedCA, command string
	versions                        []string
	drain                           time.Duration
	maxDownload                     int64
}

func newVersiondCommand() *cobra.Command {
	var f versiondFlags
	cmd := &cobra.Command{
		Use:   "versiond",
		Short: "Run every approved runtime version side by side, routed at /devshard/<name>/",
		Long: `versiond installs each approved runtime version (downloaded over https and
checked against its sha256), runs each as a child process on its own loopback
port, and serves them all on one address at /devshard/<name>/. A version that
leaves the list drains and is then stopped and removed.

It also serves GET /devshard/runtime (the runtime config, a long poll),
GET /devshard/sd (Prometheus service discovery of the children) and
GET /metrics. See docs/versiond.md.

The approved list is given with --version for now; the chain-backed list
comes later. Example:

  devshard versiond --dir /var/lib/devshard/versiond \
    --version name=v3,url=https://dl.example/devshard-v3,sha256=<64 hex>`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runVersiond(ctx, f, slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil)))
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.dir, "dir", "versiond", "directory of installed versions and their working directories")
	fs.StringVar(&f.listen, "listen", "127.0.0.1:8090", "the host's public address, serving every version at /devshard/<name>/")
	fs.StringArrayVar(&f.versions, "version", nil, "an approved version, name=NAME,url=URL,sha256=HEX; repeat in the chain's order, newest last")
	fs.StringVar(&f.trustedCA, "trusted-ca", "", "PEM file of certificates trusted for downloads besides the system roots")
	fs.StringVar(&f.command, "command", "{binary} host --listen {listen}", "the child's command line; {binary}, {listen}, {name} and {workdir} are filled in")
	fs.DurationVar(&f.drain, "drain", 10*time.Minute, "longest a version that left the list keeps serving its open traffic")
	fs.Int64Var(&f.maxDownload, "max-download", 512<<20, "largest binary downloaded, in bytes")
	return cmd
}

func runVersiond(ctx context.Context, f versiondFlags, log *slog.Logger) error {
	var list versiond.StaticSource
	for _, s := range f.versions {
		v, err := parseVersionFlag(s)
		if err != nil {
			return err
		}
		list = append(list, v)
	}
	reg := prometheus.NewRegistry()
	m, err := versiond.New(versiond.Config{
		Dir: f.dir, Source: list, Command: strings.Fields(f.command), TrustedCA: f.trustedCA,
		DrainBound: f.drain, MaxDownload: f.maxDownload, Registerer: reg, Logger: log,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/", m.Handler())
	srv := httpserve.Server(mux)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("versiond listening", "addr", ln.Addr().String(), "versions", len(list))

	ran := m.Run(ctx)
	shut, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(shut)
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return ran
}

// parseVersionFlag reads name=NAME,url=URL,sha256=HEX.
func parseVersionFlag(s string) (versiond.Version, error) {
	var v versiond.Version
	for _, kv := range strings.Split(s, ",") {
		k, val, ok := strings.Cut(kv, "=")
		switch {
		case !ok:
			return v, fmt.Errorf("--version %q: %q is not key=value; give name=NAME,url=URL,sha256=HEX", s, kv)
		case k == "name":
			v.Name = val
		case k == "url":
			v.URL = val
		case k == "sha256":
			v.SHA256 = val
		default:
			return v, fmt.Errorf("--version %q: unknown key %q; the keys are name, url and sha256", s, k)
		}
	}
	if v.URL == "" {
		return v, fmt.Errorf("--version %q has no url", s)
	}
	if err := v.Check(); err != nil {
		return v, fmt.Errorf("--version %q: %w", s, err)
	}
	return v, nil
}
