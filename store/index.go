package store

import (
	"context"
	"fmt"

	"github.com/devshard/devshard/session"
)

// indexFlush is how many index rows RebuildIndex writes per call.
const indexFlush = 1024

// RebuildIndex recomputes an escrow's sealed-inference index from its diffs.
// It clears the index, replays every stored diff from nonce 1 through
// session.Apply and writes the rows each diff sealed. It returns the number
// of rows written. If it fails midway, running it again starts over.
func RebuildIndex(ctx context.Context, s Recoverer, escrowID uint64, auth session.Authorizer) (int, error) {
	info, err := s.Session(ctx, escrowID)
	if err != nil {
		return 0, err
	}
	sess, err := session.New(info.Snapshot, auth)
	if err != nil {
		return 0, fmt.Errorf("rebuild index of escrow %d: its stored escrow snapshot does not start a session: %w", escrowID, err)
	}
	if err := s.ClearIndex(ctx, escrowID); err != nil {
		return 0, err
	}
	written := 0
	var pending []Sealed
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		if err := s.IndexSealed(ctx, pending); err != nil {
			return err
		}
		written += len(pending)
		pending = pending[:0]
		return nil
	}
	_, err = replay(ctx, s, escrowID, sess, func(d Diff, res *session.Result) error {
		rows, err := SealedRows(escrowID, d.Nonce, res.Sealed)
		if err != nil {
			return err
		}
		pending = append(pending, rows...)
		if len(pending) >= indexFlush {
			return flush()
		}
		return nil
	})
	if err != nil {
		return written, err
	}
	return written, flush()
}
