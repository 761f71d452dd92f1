-- Connect links: single-use, expiring URLs a tenant opens to run the signup. The secret part of
-- the URL is a bearer credential: only its SHA-256 is stored.
CREATE TABLE connect_links (
    secret_hash     BYTEA   NOT NULL PRIMARY KEY,
    app_id          TEXT    NOT NULL,
    connector_type  TEXT    NOT NULL,
    params          TEXT    NOT NULL DEFAULT '{}',
    return_to       TEXT,
    created_at      BIGINT  NOT NULL,
    expires_at      BIGINT  NOT NULL,
    spent_at        BIGINT
);

-- OAuth authorization requests in flight: the state (hashed) and the PKCE verifier (encrypted,
-- bound to the state), consumed once by the callback.
CREATE TABLE oauth_states (
    state_hash      BYTEA   NOT NULL PRIMARY KEY,
    link_hash       BYTEA   NOT NULL,
    pkce_verifier   BYTEA,
    created_at      BIGINT  NOT NULL,
    expires_at      BIGINT  NOT NULL
);
CREATE INDEX oauth_states_expires_at ON oauth_states (expires_at);
