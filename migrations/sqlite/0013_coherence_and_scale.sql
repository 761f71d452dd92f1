-- Scale (one node: no change announcements, see the PostgreSQL migration). The background
-- refresher's claim (sql::DUE_WHERE): its two ways of being due, each an index over the
-- refreshable connections only.
CREATE INDEX connections_due_expiry ON connections (expires_at)
    WHERE status = 'active' AND refresh_token IS NOT NULL;
CREATE INDEX connections_due_idle ON connections ((COALESCE(refreshed_at, created_at)))
    WHERE status = 'active' AND refresh_token IS NOT NULL;

-- The listing's filters, in key order.
CREATE INDEX connections_by_status ON connections (status, app_id, connector_type);
CREATE INDEX connections_by_type ON connections (connector_type, app_id);
