-- A refresh holds a lease on its connection (owner, expiry) instead of a database transaction
-- held across the provider call. A lease found expired at the next refresh means the refresh
-- it covered was interrupted (a crash): refresh_interrupted_at records when that was noticed.
ALTER TABLE connections ADD COLUMN refresh_lease_owner TEXT;
ALTER TABLE connections ADD COLUMN refresh_lease_until INTEGER;
ALTER TABLE connections ADD COLUMN refresh_interrupted_at INTEGER;
