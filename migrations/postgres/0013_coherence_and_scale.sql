-- Coherent caches across replicas: every committed change of a connection's content (a new
-- version: refresh, import, reconnect, revocation, a failed refresh's back-off) and every
-- deletion is announced on the channel tokenbox_connections as "app_id connector_type version"
-- ("-" for a deletion). Replicas LISTEN and drop their cached copy. Lease and claim updates
-- leave the version alone and announce nothing.
CREATE FUNCTION tokenbox_announce_connection() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tokenbox_connections', OLD.app_id || ' ' || OLD.connector_type || ' -');
        RETURN OLD;
    END IF;
    PERFORM pg_notify('tokenbox_connections',
        NEW.app_id || ' ' || NEW.connector_type || ' ' || NEW.version::text);
    RETURN NEW;
END
$$;

CREATE TRIGGER connections_announce_insert AFTER INSERT ON connections
    FOR EACH ROW EXECUTE FUNCTION tokenbox_announce_connection();
CREATE TRIGGER connections_announce_update AFTER UPDATE ON connections
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION tokenbox_announce_connection();
CREATE TRIGGER connections_announce_delete AFTER DELETE ON connections
    FOR EACH ROW EXECUTE FUNCTION tokenbox_announce_connection();

-- Scale: the key columns compare bytewise, as in SQLite, so that an app-id prefix is a range of
-- the primary key and listings sort the same on both backends.
ALTER TABLE connections ALTER COLUMN app_id TYPE TEXT COLLATE "C";
ALTER TABLE connections ALTER COLUMN connector_type TYPE TEXT COLLATE "C";

-- The background refresher's claim (sql::DUE_WHERE): its two ways of being due, each an index
-- over the refreshable connections only.
CREATE INDEX connections_due_expiry ON connections (expires_at)
    WHERE status = 'active' AND refresh_token IS NOT NULL;
CREATE INDEX connections_due_idle ON connections ((COALESCE(refreshed_at, created_at)))
    WHERE status = 'active' AND refresh_token IS NOT NULL;

-- The listing's filters, in key order.
CREATE INDEX connections_by_status ON connections (status, app_id, connector_type);
CREATE INDEX connections_by_type ON connections (connector_type, app_id);
