-- The host store's schema. Every table keyed by an escrow is partitioned
-- by RANGE (epoch_id), one partition per epoch, created by the store when an
-- epoch is first used (or ahead of it). Pruning an epoch drops its
-- partitions, found from the catalog: a table added here later is pruned
-- too, as long as it is PARTITION BY RANGE (epoch_id).

-- +goose Up
CREATE TABLE store_epochs (
    epoch_id   bigint PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Set when the epoch's partitions were dropped. Nothing is created in a
    -- pruned epoch again.
    pruned_at  timestamptz
);

CREATE TABLE sessions (
    epoch_id   bigint      NOT NULL,
    escrow_id  bigint      NOT NULL,
    snapshot   bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (epoch_id, escrow_id)
) PARTITION BY RANGE (epoch_id);
-- Routing: which epoch holds an escrow. Uniqueness across epochs is kept by
-- CreateSession under an advisory lock per escrow.
CREATE INDEX sessions_escrow ON sessions (escrow_id);

CREATE TABLE diffs (
    epoch_id  bigint NOT NULL,
    escrow_id bigint NOT NULL,
    nonce     bigint NOT NULL,
    root      bytea  NOT NULL,
    data      bytea  NOT NULL,
    PRIMARY KEY (epoch_id, escrow_id, nonce)
) PARTITION BY RANGE (epoch_id);

CREATE TABLE signatures (
    epoch_id  bigint NOT NULL,
    escrow_id bigint NOT NULL,
    nonce     bigint NOT NULL,
    slot      bigint NOT NULL,
    data      bytea  NOT NULL,
    PRIMARY KEY (epoch_id, escrow_id, nonce, slot)
) PARTITION BY RANGE (epoch_id);

CREATE TABLE snapshots (
    epoch_id  bigint NOT NULL,
    escrow_id bigint NOT NULL,
    nonce     bigint NOT NULL,
    root      bytea  NOT NULL,
    state     bytea  NOT NULL,
    PRIMARY KEY (epoch_id, escrow_id)
) PARTITION BY RANGE (epoch_id);

CREATE TABLE sealed (
    epoch_id     bigint NOT NULL,
    escrow_id    bigint NOT NULL,
    inference_id bigint NOT NULL,
    nonce        bigint NOT NULL,
    record       bytea  NOT NULL,
    PRIMARY KEY (epoch_id, escrow_id, inference_id)
) PARTITION BY RANGE (epoch_id);

-- +goose Down
DROP TABLE sealed;
DROP TABLE snapshots;
DROP TABLE signatures;
DROP TABLE diffs;
DROP TABLE sessions;
DROP TABLE store_epochs;
