-- Saga state, one row per saga instance. Safe to run more than once.
CREATE TABLE IF NOT EXISTS chassis_sagas (
    saga         TEXT        NOT NULL,
    id           TEXT        NOT NULL,
    status       TEXT        NOT NULL CHECK (status IN ('running', 'compensating', 'completed', 'compensated', 'failed')),
    step         INTEGER     NOT NULL,
    data         JSONB       NOT NULL,
    failed_step  TEXT,
    error        TEXT,
    version      BIGINT      NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (saga, id)
);
CREATE INDEX IF NOT EXISTS chassis_sagas_unfinished
    ON chassis_sagas (saga, updated_at) WHERE status IN ('running', 'compensating');
