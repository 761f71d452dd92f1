-- bench/run.sh scale: 1,000,000 connections loaded with generate_series (not through the API),
-- then the plans of the background refresher's claim and of the listing with each filter.
-- The statements mirror src/store/postgres.rs claim_due_sql (with sql::DUE_WHERE) and
-- src/store/sql/connections.rs list_connections_sql. :now is set by the caller.
\set ON_ERROR_STOP on
\timing off
-- The load announces nothing (no replica listens on a scratch database anyway).
ALTER TABLE connections DISABLE TRIGGER USER;
INSERT INTO connections (app_id, connector_type, status, access_token, refresh_token,
    token_type, expires_at, scope, metadata, version, created_at, updated_at, refreshed_at,
    refresh_failures)
SELECT 'app-' || lpad(i::text, 7, '0'),
       (ARRAY['github', 'hubspot', 'salesforce', 'slack'])[1 + i % 4],
       CASE WHEN i % 100 = 0 THEN 'reauthorization_required' ELSE 'active' END,
       '\x00'::bytea,
       CASE WHEN i % 20 = 0 THEN NULL ELSE '\x00'::bytea END,
       'bearer',
       -- Spread over a week: about 0.1 % expire within the refresher's 10-minute window.
       :now + (i * 7919) % 604800,
       'read', '{}', 1,
       :now - 30 * 86400, :now - 3600,
       -- Refreshed within the last 25 hours: about 4 % idle for more than a day.
       :now - (i * 104729) % 90000,
       0
FROM generate_series(1::bigint, 1000000::bigint) AS i;
ALTER TABLE connections ENABLE TRIGGER USER;
ANALYZE connections;
SELECT count(*) AS connections,
       count(*) FILTER (WHERE status = 'active' AND refresh_token IS NOT NULL
                        AND expires_at <= :now + 600) AS expiring_in_window,
       count(*) FILTER (WHERE status = 'active' AND refresh_token IS NOT NULL
                        AND COALESCE(refreshed_at, created_at) <= :now - 86400) AS idle_a_day
FROM connections;

\echo '== claim_due (batch of 32; run and rolled back)'
BEGIN;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
UPDATE connections AS c SET refresh_claimed_until = :now + 120 FROM
  (SELECT app_id AS due_app, connector_type AS due_type FROM connections
   WHERE status = 'active' AND refresh_token IS NOT NULL
     AND (backoff_until IS NULL OR backoff_until <= :now)
     AND (refresh_claimed_until IS NULL OR refresh_claimed_until <= :now)
     AND (refresh_lease_until IS NULL OR refresh_lease_until <= :now)
     AND ((expires_at IS NOT NULL AND expires_at <= :now + 600
           AND (refreshed_at IS NULL OR (expires_at - :now) * 2 <= expires_at - refreshed_at))
          OR COALESCE(refreshed_at, created_at) <= :now - 86400)
   ORDER BY expires_at NULLS LAST LIMIT 32 FOR UPDATE SKIP LOCKED) AS due
WHERE c.app_id = due.due_app AND c.connector_type = due.due_type
RETURNING c.app_id;
ROLLBACK;

\echo '== claim_due, generic plan (as a prepared statement may run it)'
SET plan_cache_mode = force_generic_plan;
PREPARE claim(bigint, bigint, bigint, bigint, bigint) AS
UPDATE connections AS c SET refresh_claimed_until = $5 FROM
  (SELECT app_id AS due_app, connector_type AS due_type FROM connections
   WHERE status = 'active' AND refresh_token IS NOT NULL
     AND (backoff_until IS NULL OR backoff_until <= $1)
     AND (refresh_claimed_until IS NULL OR refresh_claimed_until <= $1)
     AND (refresh_lease_until IS NULL OR refresh_lease_until <= $1)
     AND ((expires_at IS NOT NULL AND expires_at <= $1 + $2
           AND (refreshed_at IS NULL OR (expires_at - $1) * 2 <= expires_at - refreshed_at))
          OR COALESCE(refreshed_at, created_at) <= $3)
   ORDER BY expires_at NULLS LAST LIMIT $4 FOR UPDATE SKIP LOCKED) AS due
WHERE c.app_id = due.due_app AND c.connector_type = due.due_type
RETURNING c.app_id;
EXPLAIN (COSTS OFF) EXECUTE claim(:now, 600, :now - 86400, 32, :now + 120);
RESET plan_cache_mode;

\echo '== listing: first page (limit 100)'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT app_id, connector_type, status FROM connections
WHERE TRUE ORDER BY app_id, connector_type LIMIT 100;
\echo '== listing: a later page (after a key)'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT app_id, connector_type, status FROM connections
WHERE TRUE AND (app_id, connector_type) > ('app-0500000', 'github')
ORDER BY app_id, connector_type LIMIT 100;
\echo '== listing: status = reauthorization_required'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT app_id, connector_type, status FROM connections
WHERE TRUE AND status = 'reauthorization_required' ORDER BY app_id, connector_type LIMIT 100;
\echo '== listing: connector_type = slack, after a key'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT app_id, connector_type, status FROM connections
WHERE TRUE AND (app_id, connector_type) > ('app-0500000', 'github') AND connector_type = 'slack'
ORDER BY app_id, connector_type LIMIT 100;
\echo '== listing: app id prefix app-00012'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT app_id, connector_type, status FROM connections
WHERE TRUE AND app_id >= 'app-00012' AND app_id < 'app-00012' || chr(1114111)
  AND substr(app_id, 1, length('app-00012')) = 'app-00012'
ORDER BY app_id, connector_type LIMIT 100;
\echo '== listing: expiring within the hour'
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT app_id, connector_type, status FROM connections
WHERE TRUE AND expires_at IS NOT NULL AND expires_at <= :now + 3600
ORDER BY app_id, connector_type LIMIT 100;
