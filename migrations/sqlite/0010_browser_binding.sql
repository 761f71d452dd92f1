-- The browser that started a signup: the SHA-256 of the random value of the cookie set by
-- `POST /connect/{secret}`. The callback completes only from a browser that presents it.
ALTER TABLE oauth_states ADD COLUMN browser_hash BLOB;

-- Sessions of the /admin status page. The cookie carries a random session id; only its SHA-256
-- is stored, with the account it belongs to (and that account's token hash, so a re-created
-- account does not inherit the sessions of the old one).
CREATE TABLE admin_sessions (
    id_hash             BLOB    NOT NULL PRIMARY KEY,
    account             TEXT    NOT NULL,
    account_token_hash  BLOB    NOT NULL,
    created_at          INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL
);
CREATE INDEX admin_sessions_expires_at ON admin_sessions (expires_at);
