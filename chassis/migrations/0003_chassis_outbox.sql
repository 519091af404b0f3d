-- The transactional outbox: messages written in the service's own transactions, published by
-- the relay of their origin (messaging namespace and service) in commit order. Safe to run
-- more than once.
CREATE TABLE IF NOT EXISTS chassis_outbox (
    seq           BIGSERIAL   PRIMARY KEY,
    origin        TEXT        NOT NULL,
    id            TEXT        NOT NULL UNIQUE,
    kind          TEXT        NOT NULL CHECK (kind IN ('event', 'command')),
    message_type  TEXT        NOT NULL,
    headers       TEXT        NOT NULL,
    body          BYTEA       NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at       TIMESTAMPTZ,
    attempts      INTEGER     NOT NULL DEFAULT 0,
    last_error    TEXT
);
CREATE INDEX IF NOT EXISTS chassis_outbox_unsent ON chassis_outbox (origin, seq) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS chassis_outbox_sent ON chassis_outbox (sent_at) WHERE sent_at IS NOT NULL;
