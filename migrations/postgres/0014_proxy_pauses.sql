-- The proxy mode's pauses: a provider that answered 429 or 503 with a wait is left alone until
-- then, by every replica.
CREATE TABLE proxy_pauses (
    app_id TEXT NOT NULL,
    connector_type TEXT NOT NULL,
    paused_until BIGINT NOT NULL,
    PRIMARY KEY (app_id, connector_type)
);
