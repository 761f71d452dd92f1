-- Connections: one token set per (app_id, connector_type). Secret columns hold AES-256-GCM
-- ciphertexts bound to the row and field (see src/secrets/crypto.rs).
CREATE TABLE connections (
    app_id          TEXT    NOT NULL,
    connector_type  TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'active',
    access_token    BYTEA   NOT NULL,
    refresh_token   BYTEA,
    token_type      TEXT,
    expires_at      BIGINT,
    scope           TEXT,
    metadata        TEXT    NOT NULL DEFAULT '{}',
    version         BIGINT  NOT NULL DEFAULT 1,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    refreshed_at    BIGINT,
    last_error      TEXT,
    last_error_at   BIGINT,
    backoff_until   BIGINT,
    PRIMARY KEY (app_id, connector_type)
);

CREATE INDEX connections_expires_at ON connections (expires_at);

-- Service accounts: the bearer token is never stored, only its SHA-256.
CREATE TABLE service_accounts (
    name        TEXT    NOT NULL PRIMARY KEY,
    role        TEXT    NOT NULL,
    token_hash  BYTEA   NOT NULL UNIQUE,
    created_at  BIGINT  NOT NULL
);

-- Small facts about the database itself (the encryption key check value).
CREATE TABLE tokenbox_meta (
    key    TEXT  NOT NULL PRIMARY KEY,
    value  BYTEA NOT NULL
);
