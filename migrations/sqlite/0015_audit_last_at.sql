-- A row that counts several token reads keeps the time of the last one (the first is `at`).
ALTER TABLE audit_events ADD COLUMN last_at INTEGER;
