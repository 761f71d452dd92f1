-- The background refresher: consecutive failures (for its back-off) and a short lease so that
-- a connection is picked by one replica at a time (claimed with FOR UPDATE SKIP LOCKED).
ALTER TABLE connections ADD COLUMN refresh_failures BIGINT NOT NULL DEFAULT 0;
ALTER TABLE connections ADD COLUMN refresh_claimed_until BIGINT;
CREATE INDEX connections_refreshed_at ON connections (refreshed_at);
