package host

import (
	"errors"
	"fmt"

	"github.com/devshard/devshard/session/sessionpb"
)

// ErrWrongRuntime is an escrow created under another runtime version than
// the one this host process serves (409). Behind versiond every approved
// version runs as its own process with its own storage, and a request
// reaches one by its /devshard/<version>/ route: a request that arrives at
// the wrong one was misrouted, and serving it would keep a second copy of
// the session beside the right runtime's.
var ErrWrongRuntime = errors.New("escrow of another runtime version")

// checkRuntime is nil when this process serves the sessions of snap's
// escrow: it serves the runtime version the escrow was created under, or
// it has no version name (it is not behind versiond, so it is the host's
// only runtime and every request for this host is meant for it).
func (e *Engine) checkRuntime(snap *sessionpb.EscrowSnapshot) error {
	mine := e.cfg.RuntimeVersion
	if mine == "" || snap.RuntimeVersion == mine {
		return nil
	}
	if snap.RuntimeVersion == "" {
		return fmt.Errorf("%w: escrow %d names no runtime version; this host process serves runtime %s, so send it to the host's own URL, not to /devshard/%s/",
			ErrWrongRuntime, snap.EscrowId, mine, mine)
	}
	return fmt.Errorf("%w: escrow %d was created under runtime %s; this host process serves %s, so send it to /devshard/%s/",
		ErrWrongRuntime, snap.EscrowId, snap.RuntimeVersion, mine, snap.RuntimeVersion)
}
