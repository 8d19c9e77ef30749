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

	"github.com/devshard/devshard/chainclient"
	"github.com/devshard/devshard/internal/httpserve"
	"github.com/devshard/devshard/versiond"
)

// versiondFlags are the settings of `devshard versiond`.
type versiondFlags struct {
	dir, listen, trustedCA, command string
	versions                        []string
	drain, readyTimeout             time.Duration
	maxDownload                     int64
	// The chain's nodes, named as the host names them (chain.rpc,
	// chain.grpc, chain.stall_after), and how often the list is read
	// besides at new blocks.
	chainRPC, chainGRPC        string
	chainStallAfter, chainPoll time.Duration
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
GET /devshard/sd (Prometheus service discovery of the children),
GET /devshard/status (to this machine only; see 'devshard versiond status')
and GET /metrics. See docs/versiond.md.

The approved list is the chain's: x/devshard's approved_versions, read from
the nodes at --chain-grpc at every new block (learned from --chain-rpc's
websocket) and every --chain-poll besides. A list read from a node still
catching up, or whose latest block is older than --chain-stall-after, is not
acted on: versiond logs why and waits.

--version replaces the chain with a fixed list, for tests. Examples:

  devshard versiond --dir /var/lib/devshard/versiond \
    --chain-grpc node1:9090,node2:9090 --chain-rpc http://node1:26657,http://node2:26657

  devshard versiond --dir /tmp/versiond \
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
	fs.StringVar(&f.chainGRPC, "chain-grpc", "127.0.0.1:9090", "gRPC of the chain's nodes, host:port, comma-separated: the approved list is read from the first that answers, and the next once it stops")
	fs.StringVar(&f.chainRPC, "chain-rpc", "http://127.0.0.1:26657", "CometBFT RPC of the chain's nodes (http://host:port), comma-separated, tried in turn: new blocks; a subscription that drops is made again on the next")
	fs.DurationVar(&f.chainStallAfter, "chain-stall-after", 30*time.Second, "a node whose latest block is older than this may be lagging: its approved list is not acted on until it has a newer block (0: only the node's own catching-up flag counts)")
	fs.DurationVar(&f.chainPoll, "chain-poll", 30*time.Second, "how often the approved list is read besides at new blocks (all the reading there is while the block subscription is down)")
	fs.StringArrayVar(&f.versions, "version", nil, "an approved version, name=NAME,url=URL,sha256=HEX, used instead of the chain's list (for tests); repeat in the chain's order, newest last")
	fs.StringVar(&f.trustedCA, "trusted-ca", "", "PEM file of certificates trusted for downloads besides the system roots")
	fs.StringVar(&f.command, "command", "{binary} host --listen {listen}", "the child's command line; {binary}, {listen}, {name} and {workdir} are filled in")
	fs.DurationVar(&f.drain, "drain", 10*time.Minute, "longest a version that left the list keeps serving its open traffic")
	fs.DurationVar(&f.readyTimeout, "ready-timeout", time.Minute, "longest a child may take to answer /readyz with 200; one that has not is stopped and started again")
	fs.Int64Var(&f.maxDownload, "max-download", 512<<20, "largest binary downloaded, in bytes")
	cmd.AddCommand(newVersiondStatusCommand())
	return cmd
}

func runVersiond(ctx context.Context, f versiondFlags, log *slog.Logger) error {
	src, closeSrc, err := versionSource(f, log)
	if err != nil {
		return err
	}
	defer closeSrc()
	reg := prometheus.NewRegistry()
	m, err := versiond.New(versiond.Config{
		Dir: f.dir, Source: src, Command: strings.Fields(f.command), TrustedCA: f.trustedCA,
		DrainBound: f.drain, ReadyTimeout: f.readyTimeout, MaxDownload: f.maxDownload, Registerer: reg, Logger: log,
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
	log.Info("versiond listening", "addr", ln.Addr().String())

	ran := m.Run(ctx)
	shut, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(shut)
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return ran
}

// versionSource is the --version list when one is given, else the chain's
// list read through a client of the --chain-* nodes; close releases the
// client.
func versionSource(f versiondFlags, log *slog.Logger) (versiond.Source, func(), error) {
	if len(f.versions) > 0 {
		var list versiond.StaticSource
		for _, s := range f.versions {
			v, err := parseVersionFlag(s)
			if err != nil {
				return nil, nil, err
			}
			list = append(list, v)
		}
		log.Info("versiond: the approved list is the --version list, not the chain's", "versions", len(list))
		return list, func() {}, nil
	}
	c, err := chainclient.Dial(chainclient.Config{GRPC: f.chainGRPC, RPC: f.chainRPC, Logger: log})
	if err != nil {
		return nil, nil, fmt.Errorf("%w (or give the approved list with --version)", err)
	}
	src := versiond.ChainSource{Chain: c, Poll: f.chainPoll, StallAfter: f.chainStallAfter, Logger: log}
	return src, func() { _ = c.Close() }, nil
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
