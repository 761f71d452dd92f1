-- Issue 16: when a connection's refresh token dies (from refresh_token_expires_in or the
-- catalog's lifetimes), and the deadline its reauthorization_due warning was sent for (so the
-- warning goes once per connection and deadline).
ALTER TABLE connections ADD COLUMN refresh_expires_at BIGINT;
ALTER TABLE connections ADD COLUMN warned_refresh_expires_at BIGINT;
ALTER TABLE connections ADD COLUMN health_checked_at BIGINT;
