-- Payments: one row per (idempotency key, account); the key leads the unique
-- index, so listing an account's payments has no index to use (the auditor
-- has something to say about it).
CREATE TABLE payments (
    id BIGSERIAL PRIMARY KEY,
    account TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    amount_cents BIGINT NOT NULL,
    currency TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE UNIQUE INDEX payments_key_account ON payments (idempotency_key, account);

CREATE TABLE agents (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    version BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
