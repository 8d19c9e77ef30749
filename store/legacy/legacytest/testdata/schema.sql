-- The single-file store of devshard hosts before epoch-partitioned
-- storage: every session and every diff in one database, with no epoch
-- split. store/legacy moves it into the current layout on first boot.
-- legacytest.Write generates databases with this schema.
CREATE TABLE sessions (
    escrow_id  INTEGER PRIMARY KEY,
    snapshot   BLOB    NOT NULL, -- marshalled sessionpb.EscrowSnapshot
    nonce      INTEGER NOT NULL, -- last applied nonce, 0 before any diff
    root       BLOB    NOT NULL, -- state root after nonce
    updated_at INTEGER NOT NULL  -- unix seconds
);

CREATE TABLE diffs (
    escrow_id INTEGER NOT NULL,
    nonce     INTEGER NOT NULL,
    data      BLOB    NOT NULL, -- marshalled sessionpb.Diff
    PRIMARY KEY (escrow_id, nonce)
);
