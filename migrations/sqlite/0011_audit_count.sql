-- Anonymous refusals are aggregated: one row stands for `count` events of the same action,
-- outcome and client address within a window.
ALTER TABLE audit_events ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
-- Retention of delivered webhooks is by delivery time.
CREATE INDEX webhook_deliveries_delivered ON webhook_deliveries (delivered_at);
