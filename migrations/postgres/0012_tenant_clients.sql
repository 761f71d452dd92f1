-- A connection (and a connect link) may bring the tenant's own OAuth client: its id in plain
-- text, its secret encrypted like the tokens (AES-256-GCM bound to the row).
ALTER TABLE connections ADD COLUMN client_id TEXT;
ALTER TABLE connections ADD COLUMN client_secret BYTEA;
ALTER TABLE connect_links ADD COLUMN client_id TEXT;
ALTER TABLE connect_links ADD COLUMN client_secret BYTEA;
