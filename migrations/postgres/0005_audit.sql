-- The audit trail: who did what to which connection, when, from where, with what outcome.
CREATE TABLE audit_events (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              BIGINT NOT NULL,
    principal       TEXT   NOT NULL,
    action          TEXT   NOT NULL,
    app_id          TEXT,
    connector_type  TEXT,
    outcome         TEXT   NOT NULL,
    client_addr     TEXT,
    subject         TEXT
);
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_app ON audit_events (app_id, at);
