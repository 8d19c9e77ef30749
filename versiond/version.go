// Package versiond keeps a host's runtime versions in step with the chain.
// The chain approves runtime versions by governance; versiond installs
// every approved version, runs each as a child process beside the others,
// routes /devshard/<name>/... to it, and retires a version that leaves the
// list once its open traffic has drained. A protocol upgrade therefore
// never stops a serving network: the new version starts beside the old one,
// and clients move over as the runtime config tells them to.
//
// Nothing here is run unless its bytes hash to the approved sha256: the
// hash is checked as a download is read, and again before every start.
package versiond

import (
	"context"
	"encoding/hex"
	"fmt"
	"regexp"
)

// Version is one runtime version the chain approves: the chain's
// approved_versions entry {name, url, sha256}.
type Version struct {
	// Name is the version's route, /devshard/<name>/, and its directory.
	Name string `json:"name"`
	// URL is where its binary is downloaded from; https only.
	URL string `json:"url"`
	// SHA256 is the binary's hash, 64 lowercase hex digits.
	SHA256 string `json:"sha256"`
}

// validName keeps a name usable both as one URL path segment and as one
// directory name: no separators, no dot-only names.
var validName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$`)

// Check says whether v can be installed. The chain validates the same
// params, but a list read from anywhere is checked again before it names
// a directory on disk.
func (v Version) Check() error {
	if !validName.MatchString(v.Name) {
		return fmt.Errorf("version name %q must be 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-'", v.Name)
	}
	if b, err := hex.DecodeString(v.SHA256); err != nil || len(b) != 32 || hex.EncodeToString(b) != v.SHA256 {
		return fmt.Errorf("version %q: sha256 %q must be 64 lowercase hex digits", v.Name, v.SHA256)
	}
	return nil
}

// Source delivers the approved version list. Watch calls apply with the
// whole list each time it changes (at least once, with the list as it is
// when Watch starts) and returns when ctx ends or the source fails.
//
// The list's order is the chain's order: governance appends a new version,
// so the last entry is the newest. versiond prefers the newest serving
// version by this order.
//
// A Source must not deliver a list it read from a node that is still
// catching up (syncing blocks): such a list may be old, and applying it
// would retire versions the chain still approves. It waits until its node
// is in sync and delivers nothing meanwhile; an empty list from a synced
// node is a real list and retires everything.
//
// apply is called from one goroutine at a time; it does not block, and
// the list it receives is its own.
type Source interface {
	Watch(ctx context.Context, apply func(list []Version)) error
}

// StaticSource is a fixed list, delivered once: for tests and for a host
// run from a list given on its command line.
type StaticSource []Version

// Watch delivers the list and waits for ctx to end.
func (s StaticSource) Watch(ctx context.Context, apply func([]Version)) error {
	apply(append([]Version(nil), s...))
	<-ctx.Done()
	return nil
}

// ChanSource delivers each list sent on it, in order: for tests that
// change the approved list while versiond runs.
type ChanSource chan []Version

// Watch delivers each list received until ctx ends or the channel is
// closed.
func (s ChanSource) Watch(ctx context.Context, apply func([]Version)) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case list, ok := <-s:
			if !ok {
				<-ctx.Done()
				return nil
			}
			apply(append([]Version(nil), list...))
		}
	}
}
