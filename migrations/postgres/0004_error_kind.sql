-- What kind of failure the last refresh had ('unavailable', 'provider_error', 'revoked'), so
-- that callers during the back-off get the right answer without a new provider call.
ALTER TABLE connections ADD COLUMN last_error_kind TEXT;
