-- Idempotency keys of the HTTP layer, and processed message ids of the idempotent consumer.
-- Safe to run more than once.
CREATE TABLE IF NOT EXISTS chassis_idempotency (
    key          TEXT PRIMARY KEY,
    fingerprint  TEXT        NOT NULL,
    token        TEXT        NOT NULL,
    state        TEXT        NOT NULL CHECK (state IN ('in_flight', 'done')),
    status       INTEGER,
    headers      TEXT,
    body         BYTEA,
    expires_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS chassis_idempotency_expires_at ON chassis_idempotency (expires_at);

CREATE TABLE IF NOT EXISTS chassis_processed_messages (
    consumer      TEXT        NOT NULL,
    message_id    TEXT        NOT NULL,
    processed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
