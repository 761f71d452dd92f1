-- Connect links: single-use, expiring URLs a tenant opens to run the signup. The secret part of
-- the URL is a bearer credential: only its SHA-256 is stored.
CREATE TABLE connect_links (
    secret_hash     BLOB    NOT NULL PRIMARY KEY,
    app_id          TEXT    NOT NULL,
    connector_type  TEXT    NOT NULL,
    params          TEXT    NOT NULL DEFAULT '{}',
    return_to       TEXT,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    spent_at        INTEGER
);

-- OAuth authorization requests in flight: the state (hashed) and the PKCE verifier (encrypted,
-- bound to the state), consumed once by the callback.
CREATE TABLE oauth_states (
    state_hash      BLOB    NOT NULL PRIMARY KEY,
    link_hash       BLOB    NOT NULL,
    pkce_verifier   BLOB,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL
);
CREATE INDEX oauth_states_expires_at ON oauth_states (expires_at);
