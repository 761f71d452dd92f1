-- Scoped service accounts: the app-id patterns and connector types an account may use (JSON
-- arrays; NULL means unrestricted), and an optional expiry.
ALTER TABLE service_accounts ADD COLUMN apps TEXT;
ALTER TABLE service_accounts ADD COLUMN connector_types TEXT;
ALTER TABLE service_accounts ADD COLUMN expires_at INTEGER;
