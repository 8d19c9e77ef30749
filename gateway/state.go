package gateway

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/internal/sqlitedb"
	"github.com/devshard/devshard/session/sessionpb"
)

// EscrowStatus is where one of the gateway's escrows is in its life.
type EscrowStatus string

// Escrow statuses, in order.
const (
	// StatusOpen: the session takes requests.
	StatusOpen EscrowStatus = "open"
	// StatusSettling: no new requests; the session is being finalized or
	// its settlement is waiting to land on chain.
	StatusSettling EscrowStatus = "settling"
	// StatusSettled: the chain accepted the settlement.
	StatusSettled EscrowStatus = "settled"
)

// State is the gateway's durable state in one SQLite file: its escrows, every
// diff it sequenced (with the request payloads the diffs started), pending
// settlements and usage per API key. A diff is stored before it is sent to
// any host, so after a restart the gateway rebuilds each open session from
// its own diffs and resumes any settlement in flight.
//
// Usage is written behind the answers: AddUsage keeps the counts in memory,
// and they are committed in the transaction of the next diff, or after
// usageFlushEvery when no diff comes, and on Close. A request's usage thus
// never costs a durable write of its own. A crash loses at most the usage of
// the requests answered in the last usageFlushEvery.
type State struct {
	db *sql.DB
	// The statements of every request, prepared once.
	insertDiff, upsertUsage *sql.Stmt

	// fmu is held from taking the usage in memory until its commit ended,
	// so that UsageOf never sees a count both or neither places.
	fmu     sync.Mutex
	umu     sync.Mutex
	pending map[string]Usage // usage not yet committed, by API key
	timer   *time.Timer      // armed while pending is not empty
	closed  bool

	// lostAnswer, when set (by tests only), is asked after each diff write
	// that committed, and its error is returned as if the write had failed:
	// a commit whose answer was lost.
	lostAnswer func(nonce uint64) error
	// failWrite, when set (by tests only), is asked before each diff
	// write; its error fails the write, which then does not happen.
	failWrite func(nonce uint64) error
}

// usageFlushEvery bounds how long usage waits in memory for a diff to ride
// with.
const usageFlushEvery = 100 * time.Millisecond

const stateSchema = `
CREATE TABLE IF NOT EXISTS escrows (
	id         INTEGER PRIMARY KEY,
	snapshot   BLOB NOT NULL,
	status     TEXT NOT NULL,
	settlement BLOB,
	settle_tx  TEXT
);
CREATE TABLE IF NOT EXISTS diffs (
	escrow   INTEGER NOT NULL,
	nonce    INTEGER NOT NULL,
	data     BLOB NOT NULL,
	requests BLOB,
	PRIMARY KEY (escrow, nonce)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage (
	api_key           TEXT PRIMARY KEY,
	requests          INTEGER NOT NULL,
	prompt_tokens     INTEGER NOT NULL,
	completion_tokens INTEGER NOT NULL,
	cost              INTEGER NOT NULL
);
`

// OpenState opens (creating if needed) the state file at path. synchronous
// is SQLite's durability level: FULL fsyncs every commit (the default), NORMAL
// survives a process crash but not power loss.
func OpenState(path, synchronous string) (*State, error) {
	if synchronous == "" {
		synchronous = "FULL"
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	db := sqlitedb.Open(path, sqlitedb.Options{Synchronous: synchronous})
	if _, err := db.Exec(stateSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("gateway state %s: %w", path, err)
	}
	s := &State{db: db, pending: map[string]Usage{}}
	for _, p := range []struct {
		stmt **sql.Stmt
		sql  string
	}{{&s.insertDiff, insertDiffSQL}, {&s.upsertUsage, upsertUsageSQL}} {
		var err error
		if *p.stmt, err = db.Prepare(p.sql); err != nil {
			db.Close()
			return nil, fmt.Errorf("gateway state %s: %w", path, err)
		}
	}
	return s, nil
}

const (
	insertDiffSQL  = `INSERT INTO diffs (escrow, nonce, data, requests) VALUES (?, ?, ?, ?)`
	upsertUsageSQL = `INSERT INTO usage (api_key, requests, prompt_tokens, completion_tokens, cost) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (api_key) DO UPDATE SET requests = requests + excluded.requests, prompt_tokens = prompt_tokens + excluded.prompt_tokens,
		completion_tokens = completion_tokens + excluded.completion_tokens, cost = cost + excluded.cost`
)

// Close commits the usage still in memory and closes the file.
func (s *State) Close() error {
	s.umu.Lock()
	s.closed = true
	if s.timer != nil {
		s.timer.Stop()
	}
	s.umu.Unlock()
	err := s.flushUsage(context.Background())
	return errors.Join(err, s.db.Close())
}

// StoredEscrow is one escrow row.
type StoredEscrow struct {
	Snapshot   *sessionpb.EscrowSnapshot
	Status     EscrowStatus
	Settlement *sessionpb.Settlement // set once the final root is signed
}

// AddEscrow records a new open escrow. Adding the same id again is a no-op.
func (s *State) AddEscrow(ctx context.Context, snap *sessionpb.EscrowSnapshot) error {
	raw, err := snap.Marshal()
	if err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO escrows (id, snapshot, status) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING`,
		snap.EscrowId, raw, StatusOpen)
	return err
}

// SetStatus moves an escrow to status, storing the settlement with it when
// one is given.
func (s *State) SetStatus(ctx context.Context, id uint64, status EscrowStatus, m *sessionpb.Settlement) error {
	var raw []byte
	if m != nil {
		var err error
		if raw, err = m.Marshal(); err != nil {
			return err
		}
	}
	res, err := s.db.ExecContext(ctx, `UPDATE escrows SET status = ?, settlement = COALESCE(?, settlement) WHERE id = ?`, status, raw, id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("gateway state has no escrow %d", id)
	}
	return nil
}

// SetSettled marks an escrow settled by the chain tx txHash.
func (s *State) SetSettled(ctx context.Context, id uint64, txHash string) error {
	_, err := s.db.ExecContext(ctx, `UPDATE escrows SET status = ?, settle_tx = ? WHERE id = ?`, StatusSettled, txHash, id)
	return err
}

// SettledEscrow is an escrow the chain settled, and the tx that did.
type SettledEscrow struct {
	ID     uint64
	TxHash string
}

// Settled lists the settled escrows, by id.
func (s *State) Settled(ctx context.Context) ([]SettledEscrow, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, COALESCE(settle_tx, '') FROM escrows WHERE status = ? ORDER BY id`, StatusSettled)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []SettledEscrow
	for rows.Next() {
		var e SettledEscrow
		if err := rows.Scan(&e.ID, &e.TxHash); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// Escrows lists the escrows that are not settled yet, by id.
func (s *State) Escrows(ctx context.Context) ([]StoredEscrow, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT snapshot, status, settlement FROM escrows WHERE status != ? ORDER BY id`, StatusSettled)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []StoredEscrow
	for rows.Next() {
		var snapRaw, setRaw []byte
		var e StoredEscrow
		if err := rows.Scan(&snapRaw, &e.Status, &setRaw); err != nil {
			return nil, err
		}
		e.Snapshot = &sessionpb.EscrowSnapshot{}
		if err := e.Snapshot.Unmarshal(snapRaw); err != nil {
			return nil, fmt.Errorf("stored escrow snapshot: %w", err)
		}
		if setRaw != nil {
			e.Settlement = &sessionpb.Settlement{}
			if err := e.Settlement.Unmarshal(setRaw); err != nil {
				return nil, fmt.Errorf("stored settlement of escrow %d: %w", e.Snapshot.EscrowId, err)
			}
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// StoredDiff is one diff the gateway sequenced.
type StoredDiff struct {
	Nonce    uint64
	Data     []byte
	Requests map[uint64]executor.Request
}

// PutDiff stores diff nonce of escrow with the payloads it starts. The
// gateway calls it before sending the diff anywhere. Storing a nonce that
// is stored already is an error; after an error, Diffs tells whether the
// write landed all the same.
func (s *State) PutDiff(ctx context.Context, escrow uint64, d StoredDiff) error {
	if s.failWrite != nil {
		if err := s.failWrite(d.Nonce); err != nil {
			return err
		}
	}
	err := s.putDiff(ctx, escrow, d)
	if err == nil && s.lostAnswer != nil {
		err = s.lostAnswer(d.Nonce)
	}
	return err
}

func (s *State) putDiff(ctx context.Context, escrow uint64, d StoredDiff) error {
	var reqs []byte
	if len(d.Requests) > 0 {
		var err error
		if reqs, err = json.Marshal(d.Requests); err != nil {
			return err
		}
	}
	s.fmu.Lock()
	defer s.fmu.Unlock()
	usage := s.takeUsage()
	if len(usage) == 0 {
		_, err := s.insertDiff.ExecContext(ctx, escrow, d.Nonce, d.Data, reqs)
		return err
	}
	// The usage answered since the last commit rides with the diff.
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.StmtContext(ctx, s.insertDiff).ExecContext(ctx, escrow, d.Nonce, d.Data, reqs); err != nil {
			return err
		}
		return s.writeUsage(ctx, tx, usage)
	})
	if err != nil {
		s.giveBack(usage)
	}
	return err
}

func (s *State) inTx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// Diffs returns up to limit diffs of escrow from nonce from on, in nonce
// order. The caller owns the returned slices.
func (s *State) Diffs(ctx context.Context, escrow, from uint64, limit int) ([]StoredDiff, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT nonce, data, requests FROM diffs WHERE escrow = ? AND nonce >= ? ORDER BY nonce LIMIT ?`, escrow, from, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []StoredDiff
	for rows.Next() {
		var d StoredDiff
		var reqs []byte
		if err := rows.Scan(&d.Nonce, &d.Data, &reqs); err != nil {
			return nil, err
		}
		if reqs != nil {
			if err := json.Unmarshal(reqs, &d.Requests); err != nil {
				return nil, fmt.Errorf("stored requests of diff %d: %w", d.Nonce, err)
			}
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// PruneSettled deletes up to limit stored diffs, with the request payloads
// they carry, of escrows the chain has settled, oldest escrow first, and
// returns how many it deleted. Once the settlement has landed, nothing
// reads them: a settled escrow is never resumed, and the chain keeps what
// was paid. The escrow's row (snapshot, settlement, tx) and the usage stay.
// Escrows in live are kept whatever their status: a session that has just
// settled may still be finishing a delivery from its diffs.
func (s *State) PruneSettled(ctx context.Context, limit int, live []uint64) (int, error) {
	if limit <= 0 {
		return 0, nil
	}
	args := []any{StatusSettled}
	except := ""
	if len(live) > 0 {
		except = " AND id NOT IN (?" + strings.Repeat(", ?", len(live)-1) + ")"
		for _, id := range live {
			args = append(args, id)
		}
	}
	args = append(args, limit)
	// Driven by the escrows table, so that a pass seeks each settled
	// escrow's diffs by key instead of scanning every diff of the open ones.
	res, err := s.db.ExecContext(ctx, `DELETE FROM diffs WHERE (escrow, nonce) IN (
		SELECT escrow, nonce FROM diffs WHERE escrow IN (SELECT id FROM escrows WHERE status = ?`+except+`)
		ORDER BY escrow, nonce LIMIT ?)`, args...)
	if err != nil {
		return 0, fmt.Errorf("prune settled diffs: %w", err)
	}
	n, err := res.RowsAffected()
	return int(n), err
}

// Usage is what one API key has consumed.
type Usage struct {
	Requests         uint64 `json:"requests"`
	PromptTokens     uint64 `json:"prompt_tokens"`
	CompletionTokens uint64 `json:"completion_tokens"`
	// Cost is what the key's requests were charged, in the chain's base
	// denomination (tokens × the escrow's price).
	Cost uint64 `json:"cost"`
}

// AddUsage adds one finished request to key's usage. The count is in
// UsageOf at once and committed behind the answer (see State).
func (s *State) AddUsage(_ context.Context, key string, u Usage) error {
	s.umu.Lock()
	defer s.umu.Unlock()
	if s.closed {
		return errors.New("gateway state is closed")
	}
	s.pending[key] = s.pending[key].plus(u)
	if s.timer == nil {
		s.timer = time.AfterFunc(usageFlushEvery, func() {
			if err := s.flushUsage(context.Background()); err != nil {
				s.umu.Lock()
				if !s.closed && s.timer == nil {
					s.timer = time.AfterFunc(usageFlushEvery, func() { _ = s.flushUsage(context.Background()) })
				}
				s.umu.Unlock()
			}
		})
	}
	return nil
}

func (u Usage) plus(v Usage) Usage {
	return Usage{Requests: u.Requests + v.Requests, PromptTokens: u.PromptTokens + v.PromptTokens,
		CompletionTokens: u.CompletionTokens + v.CompletionTokens, Cost: u.Cost + v.Cost}
}

// takeUsage hands over the usage in memory, to be committed by the caller.
func (s *State) takeUsage() map[string]Usage {
	s.umu.Lock()
	defer s.umu.Unlock()
	if len(s.pending) == 0 {
		return nil
	}
	out := s.pending
	s.pending = map[string]Usage{}
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	return out
}

// giveBack returns usage whose commit failed to memory, for the next one.
func (s *State) giveBack(usage map[string]Usage) {
	s.umu.Lock()
	defer s.umu.Unlock()
	for k, u := range usage {
		s.pending[k] = s.pending[k].plus(u)
	}
	if s.timer == nil && !s.closed {
		s.timer = time.AfterFunc(usageFlushEvery, func() { _ = s.flushUsage(context.Background()) })
	}
}

// flushUsage commits the usage in memory on its own.
func (s *State) flushUsage(ctx context.Context) error {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	usage := s.takeUsage()
	if len(usage) == 0 {
		return nil
	}
	err := s.inTx(ctx, func(tx *sql.Tx) error { return s.writeUsage(ctx, tx, usage) })
	if err != nil {
		s.giveBack(usage)
	}
	return err
}

func (s *State) writeUsage(ctx context.Context, tx *sql.Tx, usage map[string]Usage) error {
	stmt := tx.StmtContext(ctx, s.upsertUsage)
	for key, u := range usage {
		if _, err := stmt.ExecContext(ctx, key, u.Requests, u.PromptTokens, u.CompletionTokens, u.Cost); err != nil {
			return err
		}
	}
	return nil
}

// UsageOf returns key's usage, committed and in memory; zero if it has made
// no request.
func (s *State) UsageOf(ctx context.Context, key string) (Usage, error) {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	var u Usage
	err := s.db.QueryRowContext(ctx, `SELECT requests, prompt_tokens, completion_tokens, cost FROM usage WHERE api_key = ?`, key).
		Scan(&u.Requests, &u.PromptTokens, &u.CompletionTokens, &u.Cost)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return Usage{}, err
	}
	s.umu.Lock()
	defer s.umu.Unlock()
	return u.plus(s.pending[key]), nil
}
