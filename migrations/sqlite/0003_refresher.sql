-- The background refresher: consecutive failures (for its back-off) and a short lease so that
-- a connection is picked by one pass at a time.
ALTER TABLE connections ADD COLUMN refresh_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE connections ADD COLUMN refresh_claimed_until INTEGER;
CREATE INDEX connections_refreshed_at ON connections (refreshed_at);
