-- Whose account each connection is (the identity request or the ID token), and the account it
-- had before a reconnection with a different one. A row per connection, deleted with it.
CREATE TABLE connection_accounts (
    app_id TEXT NOT NULL,
    connector_type TEXT NOT NULL,
    account_id TEXT,
    name TEXT,
    email TEXT,
    organisation TEXT,
    previous_account_id TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (app_id, connector_type)
);

-- A connect link may require the connection's current account (same_account).
ALTER TABLE connect_links ADD COLUMN same_account BOOLEAN NOT NULL DEFAULT 0;
