package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/internal/httpserve"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/signing"
)

// ProxyConfig is a proxy host process (proxy.go): a validation node for
// one primary host, with no storage of its own.
type ProxyConfig struct {
	// Listen is the address of its API: health, version, metrics and the
	// worker routes its workers use.
	Listen string
	// Primary is the base URL of the primary host's API.
	Primary string
	// Account is the primary's participant account.
	Account signing.Address
	// Key is the proxy's own key: a warm key Account granted through
	// x/authz. It signs the votes and the requests to the primary.
	Key signing.Signer
	// Chain is read for escrows and grants; ChainGRPC and ChainRPC name
	// its nodes in what the proxy says while they do not answer.
	Chain               Chain
	ChainGRPC, ChainRPC string
	// Executor re-runs validations when no external worker is listed.
	Executor executor.Executor
	// Workers are the accounts of the external workers accepted on the
	// worker routes; none runs the validations in process.
	Workers []signing.Address
	Version string
	Logger  *slog.Logger
}

// OpenProxy starts a proxy host: it binds its listener, waits for its
// chain, checks that the primary's account granted its key, and follows
// the primary until Close. Its job queue is in memory: a job lost to a
// restart is asked again, since the restarted proxy samples the primary's
// sessions afresh.
func OpenProxy(ctx context.Context, cfg ProxyConfig) (_ *Daemon, err error) {
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:8082"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	switch {
	case cfg.Key == nil:
		return nil, errors.New("proxy host: a signing key is required")
	case cfg.Chain == nil:
		return nil, errors.New("proxy host: a chain to read is required")
	case cfg.Executor == nil:
		return nil, errors.New("proxy host: an executor is required")
	case cfg.Primary == "":
		return nil, errors.New("proxy host: the primary host's URL is required (--proxy)")
	case cfg.Account == (signing.Address{}):
		return nil, errors.New("proxy host: the primary's account is required")
	}
	log := cfg.Logger
	d := &Daemon{served: make(chan error, 1), stop: func() {}}
	defer func() {
		if err != nil {
			d.release()
		}
	}()
	if d.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("cannot listen on %q (%v): set listen (--listen) to a free host:port, another than the primary's", cfg.Listen, err)
	}
	auth := cfg.Chain.Authorizer()
	escrows := chainEscrows{cfg.Chain}
	d.Engine = NewProxy(Config{Key: cfg.Key, Account: cfg.Account, Escrows: escrows, Seq: escrows, UnseenWait: DefaultUnseenWait, Executor: cfg.Executor,
		Auth: auth, Logger: log, Metrics: NewMetrics(), Workers: cfg.Workers})
	d.srv = httpserve.Server(d.explainReadyz(Handler(d.Engine, cfg.Version)))
	go func() { d.served <- d.srv.Serve(d.ln) }()
	log.Info("proxy host listening", "addr", d.Addr(), "primary", cfg.Primary, "account", cfg.Chain.Address(cfg.Account), "key", cfg.Chain.Address(cfg.Key.PubKey().Address()))

	chainID, err := d.awaitChain(ctx, DaemonConfig{Chain: cfg.Chain, ChainGRPC: cfg.ChainGRPC, ChainRPC: cfg.ChainRPC, Logger: log})
	if err != nil {
		return nil, err
	}
	if err := checkGrant(cfg.Key.PubKey().Address(), cfg.Account, auth, cfg.Chain); err != nil {
		return nil, err
	}
	d.Engine.SetChainID(chainID)
	d.Engine.MarkReady()
	if len(cfg.Workers) == 0 {
		log.Info("validations run in process: no external worker is configured")
	} else {
		log.Info("validations wait for external workers", "workers", len(cfg.Workers))
	}
	run, stop := context.WithCancel(context.WithoutCancel(ctx))
	d.stop = stop
	primary := strings.TrimRight(cfg.Primary, "/")
	d.spawn(func() { d.Engine.FollowPrimary(run, primary) })
	return d, nil
}

// checkGrant refuses to start a proxy whose key may not sign the
// account's validations: every vote it cast would be refused.
func checkGrant(key, account signing.Address, auth session.Authorizer, c Chain) error {
	if key == account || (auth != nil && auth.MayActFor(account, key, session.KindValidation)) {
		return nil
	}
	return fmt.Errorf("the proxy's key %s is not granted by the primary's account %s, so its votes would be refused: grant it with 'devshard chain tx authz grant %s generic --msg-type /devshard.devshard.v1.MsgSignSession --from <the account's key>'",
		c.Address(key), c.Address(account), c.Address(key))
}
