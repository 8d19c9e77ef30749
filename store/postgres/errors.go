package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/devshard/devshard/store"
)

// fail turns a database error into a store error: ErrUnavailable when the
// server cannot be reached, ErrEpochPruned when the epoch's partition is
// gone.
func (s *Store) fail(err error, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	switch {
	case s.closed.Load():
		return store.Wrap(store.ErrClosed, err, "%s: the store is closed", msg)
	case Unavailable(err):
		return store.Wrap(store.ErrUnavailable, err, "%s: Postgres %s is unavailable", msg, s.name)
	case noPartition(err):
		return store.Wrap(store.ErrEpochPruned, err, "%s: the epoch's partition is gone (pruned)", msg)
	}
	return fmt.Errorf("%s: %w", msg, err)
}

// Unavailable reports whether err means the server could not be reached or
// went away, rather than refusing the statement.
func Unavailable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "08"): // connection exception
			return true
		case pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03": // shutdown, crash, starting up
			return true
		case pgErr.Code == "53300": // too many connections
			return true
		}
		return false
	}
	var connErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connErr) || errors.As(err, &netErr) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		pgconn.Timeout(err) || pgconn.SafeToRetry(err) ||
		strings.Contains(err.Error(), "conn closed") || strings.Contains(err.Error(), "closed pool")
}

// noPartition reports an insert whose epoch has no partition.
func noPartition(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23514" && strings.Contains(pgErr.Message, "no partition")
}

func notFound(escrowID uint64) error {
	return store.Errorf(store.ErrNotFound, "escrow %d has no session in this store (never created here, or its epoch was pruned)", escrowID)
}
