//! What the SQL backends share: the statements (written once, with `$N` parameters, which both
//! SQLite and PostgreSQL accept) and the row mapping. `sql_store!` generates the parts of
//! `SecretsStore` that are the same on every backend; each backend file keeps only its
//! dialect: connection options, migrations, and how a refresh holds the row.

pub(crate) const CONNECTION_COLUMNS: &str = "app_id, connector_type, status, access_token, \
     refresh_token, token_type, expires_at, scope, metadata, version, created_at, updated_at, \
     refreshed_at, last_error, backoff_until, refresh_failures, last_error_kind, \
     refresh_interrupted_at";

pub(crate) fn select_connection(suffix: &str) -> String {
    format!(
        "SELECT {CONNECTION_COLUMNS} FROM connections WHERE app_id = $1 AND connector_type = $2{suffix}"
    )
}

pub(crate) fn upsert_connection_sql() -> String {
    format!(
        "INSERT INTO connections (app_id, connector_type, status, access_token, refresh_token, \
         token_type, expires_at, scope, metadata, version, created_at, updated_at, refreshed_at) \
         VALUES ($1, $2, 'active', $3, $4, $5, $6, $7, $8, 1, $9, $9, $10) \
         ON CONFLICT (app_id, connector_type) DO UPDATE SET status = 'active', \
         access_token = excluded.access_token, refresh_token = excluded.refresh_token, \
         token_type = excluded.token_type, expires_at = excluded.expires_at, \
         scope = excluded.scope, metadata = excluded.metadata, \
         version = connections.version + 1, updated_at = excluded.updated_at, \
         refreshed_at = COALESCE(excluded.refreshed_at, connections.refreshed_at), \
         last_error = NULL, last_error_at = NULL, backoff_until = NULL, refresh_failures = 0, \
         last_error_kind = NULL, refresh_interrupted_at = NULL \
         RETURNING {CONNECTION_COLUMNS}"
    )
}

pub(crate) const UPDATE_REFRESHED: &str = "UPDATE connections SET status = 'active', \
     access_token = $4, refresh_token = $5, token_type = $6, expires_at = $7, scope = $8, \
     metadata = $9, version = version + 1, updated_at = $10, refreshed_at = $10, \
     last_error = NULL, last_error_at = NULL, backoff_until = NULL, refresh_failures = 0, \
     refresh_claimed_until = NULL, last_error_kind = NULL, refresh_interrupted_at = NULL, \
     refresh_lease_owner = NULL, refresh_lease_until = NULL \
     WHERE app_id = $1 AND connector_type = $2 AND version = $3";

pub(crate) const UPDATE_REVOKED: &str = "UPDATE connections SET \
     status = 'reauthorization_required', last_error = $4, last_error_at = $5, \
     last_error_kind = 'revoked', \
     version = version + 1, updated_at = $5, refresh_claimed_until = NULL, \
     refresh_lease_owner = NULL, refresh_lease_until = NULL \
     WHERE app_id = $1 AND connector_type = $2 AND version = $3";

pub(crate) const UPDATE_FAILED: &str = "UPDATE connections SET last_error = $4, \
     last_error_at = $5, backoff_until = $6, refresh_failures = refresh_failures + 1, \
     last_error_kind = $7, \
     version = version + 1, updated_at = $5, refresh_claimed_until = NULL, \
     refresh_lease_owner = NULL, refresh_lease_until = NULL \
     WHERE app_id = $1 AND connector_type = $2 AND version = $3";

/// Takes the refresh lease of a connection when it is free, expired, or already ours.
/// An expired lease of another holder means that holder stopped mid-refresh: noted in
/// `refresh_interrupted_at`. `now` is the backend's expression for the current epoch second
/// (the database's clock where several replicas share it, so their clocks need not agree).
/// Parameters: $1 app, $2 type, $3 owner, $4 this process's time (SQLite's `now`), $5 lease
/// length in seconds.
pub(crate) fn take_lease_sql(now: &str) -> String {
    format!(
        "UPDATE connections SET refresh_lease_owner = $3, refresh_lease_until = {now} + $5, \
         refresh_interrupted_at = CASE WHEN refresh_lease_until IS NOT NULL \
         AND refresh_lease_owner <> $3 THEN {now} ELSE refresh_interrupted_at END \
         WHERE app_id = $1 AND connector_type = $2 \
         AND (refresh_lease_until IS NULL OR refresh_lease_until <= {now} \
              OR refresh_lease_owner = $3) \
         RETURNING {CONNECTION_COLUMNS}"
    )
}

/// Whether the connection exists (when the lease could not be taken: it is held elsewhere).
pub(crate) const CONNECTION_EXISTS: &str =
    "SELECT version FROM connections WHERE app_id = $1 AND connector_type = $2";

/// Gives the lease back without writing anything else. $3 owner.
pub(crate) const RELEASE_LEASE: &str = "UPDATE connections SET refresh_lease_owner = NULL, \
     refresh_lease_until = NULL WHERE app_id = $1 AND connector_type = $2 \
     AND refresh_lease_owner = $3";

pub(crate) fn delete_connection_sql() -> String {
    format!(
        "DELETE FROM connections WHERE app_id = $1 AND connector_type = $2 \
         RETURNING {CONNECTION_COLUMNS}"
    )
}

/// Connections the background refresher should refresh now: active, refreshable, not backing
/// off, not claimed by another replica, and either expiring within the window (and past half
/// their lifetime, so short-lived tokens are not refreshed on every pass) or idle for a day.
/// Parameters: $1 now, $2 window (seconds), $3 idle limit (epoch), $4 batch size.
pub(crate) const DUE_WHERE: &str = "status = 'active' AND refresh_token IS NOT NULL \
     AND (backoff_until IS NULL OR backoff_until <= $1) \
     AND (refresh_claimed_until IS NULL OR refresh_claimed_until <= $1) \
     AND (refresh_lease_until IS NULL OR refresh_lease_until <= $1) \
     AND ((expires_at IS NOT NULL AND expires_at - $1 <= $2 \
           AND (refreshed_at IS NULL OR (expires_at - $1) * 2 <= expires_at - refreshed_at)) \
          OR COALESCE(refreshed_at, created_at) <= $3)";

pub(crate) const LIST_CONNECTIONS: &str = "SELECT app_id, connector_type, status, expires_at, \
     scope, refresh_token IS NOT NULL AS has_refresh_token, created_at, updated_at, refreshed_at, \
     last_error FROM connections \
     WHERE (app_id, connector_type) > ($1, $2) \
     AND ($3 = '' OR status = $3) AND ($4 = '' OR connector_type = $4) \
     AND ($5 = '' OR substr(app_id, 1, length($5)) = $5) \
     AND ($6 = 0 OR (expires_at IS NOT NULL AND expires_at <= $6)) \
     ORDER BY app_id, connector_type LIMIT $7";

pub(crate) const COUNT_CONNECTIONS: &str = "SELECT connector_type, status, COUNT(*) AS n \
     FROM connections GROUP BY connector_type, status";

pub(crate) const SCAN_SECRETS: &str = "SELECT app_id, connector_type, version, access_token, \
     refresh_token FROM connections WHERE (app_id, connector_type) > ($1, $2) \
     ORDER BY app_id, connector_type LIMIT $3";
pub(crate) const REWRITE_SECRETS: &str = "UPDATE connections SET access_token = $4, \
     refresh_token = $5 WHERE app_id = $1 AND connector_type = $2 AND version = $3";
pub(crate) const SCAN_STATES: &str = "SELECT state_hash, pkce_verifier FROM oauth_states \
     WHERE pkce_verifier IS NOT NULL";
pub(crate) const REWRITE_STATE: &str =
    "UPDATE oauth_states SET pkce_verifier = $2 WHERE state_hash = $1";
pub(crate) const REWRITE_KEY_CHECK: &str =
    "UPDATE tokenbox_meta SET value = $1 WHERE key = 'key_check'";

pub(crate) const INSERT_AUDIT_HEAD: &str = "INSERT INTO audit_events (at, principal, action, \
     app_id, connector_type, outcome, client_addr, subject, count)";
pub(crate) const READ_AUDIT: &str = "SELECT at, principal, action, app_id, connector_type, \
     outcome, client_addr, subject, count FROM audit_events WHERE at >= $1 AND ($2 = '' OR app_id = $2) \
     ORDER BY id DESC LIMIT $3";

/// Retention deletes in batches, so that no statement holds its locks for long.
pub(crate) const PRUNE_BATCH: u64 = 5000;
pub(crate) const PRUNE_AUDIT: &str = "DELETE FROM audit_events WHERE id IN \
     (SELECT id FROM audit_events WHERE at < $1 LIMIT 5000)";
pub(crate) const PRUNE_WEBHOOKS: &str = "DELETE FROM webhook_deliveries WHERE id IN \
     (SELECT id FROM webhook_deliveries WHERE delivered_at IS NOT NULL AND delivered_at < $1 \
     LIMIT 5000)";

pub(crate) const LIST_JWT_KEYS: &str = "SELECT kid, private_key, public_key, created_at, \
     retire_at FROM jwt_keys ORDER BY created_at, kid";
pub(crate) const RETIRE_JWT_KEYS: &str =
    "UPDATE jwt_keys SET retire_at = $1 WHERE retire_at IS NULL";
pub(crate) const INSERT_JWT_KEY: &str = "INSERT INTO jwt_keys (kid, private_key, public_key, \
     created_at) VALUES ($1, $2, $3, $4)";

pub(crate) const WEBHOOK_COLUMNS: &str = "id, endpoint_url, event_type, body, created_at, \
     attempts, next_attempt_at, delivered_at, last_status, last_error";
pub(crate) const INSERT_WEBHOOK: &str = "INSERT INTO webhook_deliveries (endpoint_url, \
     event_type, body, created_at, next_attempt_at) VALUES ($1, $2, $3, $4, $4)";
/// Due: not delivered, attempt time reached, not claimed by another worker, under 20 attempts.
pub(crate) const WEBHOOK_DUE: &str = "delivered_at IS NULL AND next_attempt_at <= $1 \
     AND (claimed_until IS NULL OR claimed_until <= $1) AND attempts < 20";
pub(crate) const FINISH_WEBHOOK: &str = "UPDATE webhook_deliveries SET attempts = attempts + 1, \
     delivered_at = $2, next_attempt_at = $3, last_status = $4, last_error = $5, \
     claimed_until = NULL WHERE id = $1";

pub(crate) const INSERT_LINK: &str = "INSERT INTO connect_links (secret_hash, app_id, \
     connector_type, params, return_to, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)";
pub(crate) const SELECT_LINK: &str = "SELECT app_id, connector_type, params, return_to, \
     created_at, expires_at, spent_at FROM connect_links WHERE secret_hash = $1";
pub(crate) const SPEND_LINK: &str = "UPDATE connect_links SET spent_at = $2 \
     WHERE secret_hash = $1 AND spent_at IS NULL AND expires_at > $2";
pub(crate) const UNSPEND_LINK: &str =
    "UPDATE connect_links SET spent_at = NULL WHERE secret_hash = $1";
pub(crate) const DELETE_EXPIRED_STATES: &str = "DELETE FROM oauth_states WHERE expires_at <= $1";
pub(crate) const INSERT_STATE: &str = "INSERT INTO oauth_states (state_hash, link_hash, \
     pkce_verifier, created_at, expires_at, browser_hash) VALUES ($1, $2, $3, $4, $5, $6)";
pub(crate) const TAKE_STATE: &str = "DELETE FROM oauth_states WHERE state_hash = $1 \
     RETURNING link_hash, pkce_verifier, expires_at, browser_hash";
pub(crate) const INSERT_ACCOUNT: &str = "INSERT INTO service_accounts (name, role, token_hash, \
     created_at, apps, connector_types, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (name) DO NOTHING";
pub(crate) const LIST_ACCOUNTS: &str = "SELECT name, role, token_hash, created_at, apps, \
     connector_types, expires_at FROM service_accounts ORDER BY name";
pub(crate) const DELETE_ACCOUNT: &str = "DELETE FROM service_accounts WHERE name = $1";
pub(crate) const DELETE_EXPIRED_SESSIONS: &str =
    "DELETE FROM admin_sessions WHERE expires_at <= $1";
pub(crate) const INSERT_SESSION: &str = "INSERT INTO admin_sessions (id_hash, account, \
     account_token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)";
pub(crate) const SELECT_SESSION: &str = "SELECT account, account_token_hash, created_at, \
     expires_at FROM admin_sessions WHERE id_hash = $1 AND expires_at > $2";
pub(crate) const DELETE_SESSION: &str = "DELETE FROM admin_sessions WHERE id_hash = $1";
pub(crate) const SELECT_KEY_CHECK: &str = "SELECT value FROM tokenbox_meta WHERE key = 'key_check'";
pub(crate) const INSERT_KEY_CHECK: &str = "INSERT INTO tokenbox_meta (key, value) \
     VALUES ('key_check', $1) ON CONFLICT (key) DO NOTHING";

/// Generates the backend-independent part of a store: row mapping, the `SecretsStore` methods
/// other than `begin_refresh`, and `write_refresh`, which both refresh guards call.
macro_rules! sql_store {
    ($store:ident, $db:ty, $row:ty) => {
        use $crate::secrets::sql;

        /// Ciphertexts and encoded columns of a token set, ready to bind.
        struct Sealed {
            access_token: Vec<u8>,
            refresh_token: Option<Vec<u8>>,
            metadata: String,
        }

        fn seal(
            keys: &$crate::secrets::crypto::KeyRing,
            key: &$crate::domain::ConnectionKey,
            tokens: &$crate::domain::TokenSet,
        ) -> Sealed {
            use $crate::secrets::crypto::connection_aad;
            let (app, ct) = (key.app_id.as_str(), key.connector_type.as_str());
            Sealed {
                access_token: keys.encrypt_secret(
                    &tokens.access_token,
                    &connection_aad(app, ct, "access_token"),
                ),
                refresh_token: tokens
                    .refresh_token
                    .as_ref()
                    .map(|t| keys.encrypt_secret(t, &connection_aad(app, ct, "refresh_token"))),
                metadata: serde_json::to_string(&tokens.metadata).unwrap_or_else(|_| "{}".into()),
            }
        }

        fn parse_key(
            app: &str,
            ct: &str,
        ) -> Result<$crate::domain::ConnectionKey, $crate::secrets::StoreError> {
            use $crate::secrets::StoreError;
            Ok($crate::domain::ConnectionKey::new(
                $crate::domain::AppId::parse(app).map_err(StoreError::Corrupt)?,
                $crate::domain::ConnectorTypeName::parse(ct).map_err(StoreError::Corrupt)?,
            ))
        }

        fn decode(
            keys: &$crate::secrets::crypto::KeyRing,
            row: &$row,
        ) -> Result<$crate::domain::StoredConnection, $crate::secrets::StoreError> {
            use sqlx::Row;
            use $crate::secrets::crypto::connection_aad;
            use $crate::secrets::StoreError;
            let app: String = row.try_get("app_id")?;
            let ct: String = row.try_get("connector_type")?;
            let access: Vec<u8> = row.try_get("access_token")?;
            let refresh: Option<Vec<u8>> = row.try_get("refresh_token")?;
            let status: String = row.try_get("status")?;
            let metadata: String = row.try_get("metadata")?;
            Ok($crate::domain::StoredConnection {
                tokens: $crate::domain::TokenSet {
                    access_token: keys
                        .decrypt_secret(&access, &connection_aad(&app, &ct, "access_token"))?,
                    refresh_token: refresh
                        .map(|b| {
                            keys.decrypt_secret(&b, &connection_aad(&app, &ct, "refresh_token"))
                        })
                        .transpose()?,
                    token_type: row.try_get("token_type")?,
                    expires_at: row.try_get("expires_at")?,
                    scope: row.try_get("scope")?,
                    metadata: serde_json::from_str(&metadata).map_err(|_| {
                        StoreError::Corrupt("connection metadata is not JSON".into())
                    })?,
                },
                status: $crate::domain::ConnectionStatus::parse(&status).ok_or_else(|| {
                    StoreError::Corrupt(format!("unknown connection status {status}"))
                })?,
                version: row.try_get("version")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
                refreshed_at: row.try_get("refreshed_at")?,
                last_error: row.try_get("last_error")?,
                backoff_until: row.try_get("backoff_until")?,
                refresh_failures: row.try_get("refresh_failures")?,
                last_error_kind: row
                    .try_get::<Option<String>, _>("last_error_kind")?
                    .as_deref()
                    .and_then($crate::domain::FailureKind::parse),
                refresh_interrupted_at: row.try_get("refresh_interrupted_at")?,
                key: parse_key(&app, &ct)?,
            })
        }

        fn decode_webhook(
            row: &$row,
        ) -> Result<$crate::secrets::WebhookDelivery, $crate::secrets::StoreError> {
            use sqlx::Row;
            Ok($crate::secrets::WebhookDelivery {
                id: row.try_get("id")?,
                endpoint_url: row.try_get("endpoint_url")?,
                event_type: row.try_get("event_type")?,
                body: row.try_get("body")?,
                created_at: row.try_get("created_at")?,
                attempts: row.try_get("attempts")?,
                next_attempt_at: row.try_get("next_attempt_at")?,
                delivered_at: row.try_get("delivered_at")?,
                last_status: row.try_get("last_status")?,
                last_error: row.try_get("last_error")?,
            })
        }

        fn hash32(bytes: Vec<u8>) -> Result<[u8; 32], $crate::secrets::StoreError> {
            bytes
                .try_into()
                .map_err(|_| $crate::secrets::StoreError::Corrupt("a hash is not 32 bytes".into()))
        }

        /// Writes a refresh outcome, conditional on the version read; `None` when another
        /// writer changed the row meanwhile.
        async fn write_refresh<'e, E>(
            executor: E,
            keys: &$crate::secrets::crypto::KeyRing,
            current: &$crate::domain::StoredConnection,
            write: $crate::secrets::RefreshWrite,
        ) -> Result<Option<$crate::domain::StoredConnection>, $crate::secrets::StoreError>
        where
            E: sqlx::Executor<'e, Database = $db>,
        {
            use $crate::domain::ConnectionStatus;
            use $crate::secrets::RefreshWrite;
            let key = &current.key;
            let now = $crate::domain::now_epoch();
            let mut next = current.clone();
            next.version += 1;
            next.updated_at = now;
            let query = match write {
                RefreshWrite::Refreshed(tokens) => {
                    let sealed = seal(keys, key, &tokens);
                    next.tokens = tokens;
                    next.status = ConnectionStatus::Active;
                    next.refreshed_at = Some(now);
                    next.last_error = None;
                    next.backoff_until = None;
                    next.refresh_failures = 0;
                    next.last_error_kind = None;
                    sqlx::query(sql::UPDATE_REFRESHED)
                        .bind(key.app_id.as_str())
                        .bind(key.connector_type.as_str())
                        .bind(current.version)
                        .bind(sealed.access_token)
                        .bind(sealed.refresh_token)
                        .bind(next.tokens.token_type.clone())
                        .bind(next.tokens.expires_at)
                        .bind(next.tokens.scope.clone())
                        .bind(sealed.metadata)
                        .bind(now)
                }
                RefreshWrite::Revoked { reason } => {
                    next.status = ConnectionStatus::ReauthorizationRequired;
                    next.last_error = Some(reason.clone());
                    next.last_error_kind = Some($crate::domain::FailureKind::Revoked);
                    sqlx::query(sql::UPDATE_REVOKED)
                        .bind(key.app_id.as_str())
                        .bind(key.connector_type.as_str())
                        .bind(current.version)
                        .bind(reason)
                        .bind(now)
                }
                RefreshWrite::Failed {
                    reason,
                    kind,
                    backoff_until,
                } => {
                    next.last_error = Some(reason.clone());
                    next.backoff_until = Some(backoff_until);
                    next.refresh_failures += 1;
                    next.last_error_kind = Some(kind);
                    sqlx::query(sql::UPDATE_FAILED)
                        .bind(key.app_id.as_str())
                        .bind(key.connector_type.as_str())
                        .bind(current.version)
                        .bind(reason)
                        .bind(now)
                        .bind(backoff_until)
                        .bind(kind.as_str())
                }
            };
            let result = query.execute(executor).await?;
            Ok((result.rows_affected() == 1).then_some(next))
        }

        /// The lease on one connection during a refresh: no database connection or
        /// transaction is held while the provider answers; the write is conditional on the
        /// version read, and clears the lease.
        struct LeaseRefresh {
            pool: sqlx::Pool<$db>,
            keys: std::sync::Arc<$crate::secrets::crypto::KeyRing>,
            owner: std::sync::Arc<str>,
            current: Option<$crate::domain::StoredConnection>,
        }

        impl LeaseRefresh {
            async fn give_back(&self, key: &$crate::domain::ConnectionKey) {
                let released = sqlx::query(sql::RELEASE_LEASE)
                    .bind(key.app_id.as_str())
                    .bind(key.connector_type.as_str())
                    .bind(&*self.owner)
                    .execute(&self.pool)
                    .await;
                if let Err(e) = released {
                    // The lease then ends by itself at its expiry.
                    tracing::warn!(error = %e, "cannot release a refresh lease");
                }
            }
        }

        #[async_trait::async_trait]
        impl $crate::secrets::RefreshGuard for LeaseRefresh {
            fn current(&self) -> &$crate::domain::StoredConnection {
                self.current.as_ref().expect("a guard holds its connection")
            }

            async fn finish(
                self: Box<Self>,
                write: $crate::secrets::RefreshWrite,
            ) -> Result<Option<$crate::domain::StoredConnection>, $crate::secrets::StoreError>
            {
                let current = self.current();
                let written = write_refresh(&self.pool, &self.keys, current, write).await;
                if !matches!(written, Ok(Some(_))) {
                    // Not written (a lost race or an error): the lease is ours to give back.
                    self.give_back(&current.key).await;
                }
                written
            }

            async fn release(self: Box<Self>) {
                self.give_back(&self.current().key).await;
            }
        }

        impl $store {
            async fn read_key_check(
                pool: &sqlx::Pool<$db>,
            ) -> Result<Option<Vec<u8>>, sqlx::Error> {
                sqlx::query_scalar(sql::SELECT_KEY_CHECK)
                    .fetch_optional(pool)
                    .await
            }

            async fn write_key_check(
                pool: &sqlx::Pool<$db>,
                check: Vec<u8>,
            ) -> Result<(), sqlx::Error> {
                sqlx::query(sql::INSERT_KEY_CHECK)
                    .bind(check)
                    .execute(pool)
                    .await
                    .map(|_| ())
            }
        }

        #[async_trait::async_trait]
        impl $crate::secrets::ConnectionStore for $store {
            async fn load(
                &self,
                key: &$crate::domain::ConnectionKey,
            ) -> Result<Option<$crate::domain::StoredConnection>, $crate::secrets::StoreError> {
                let row = sqlx::query(&sql::select_connection(""))
                    .bind(key.app_id.as_str())
                    .bind(key.connector_type.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|r| decode(&self.keys, &r)).transpose()
            }

            async fn upsert_connection(
                &self,
                key: &$crate::domain::ConnectionKey,
                tokens: &$crate::domain::TokenSet,
                obtained_at: Option<i64>,
            ) -> Result<$crate::domain::StoredConnection, $crate::secrets::StoreError> {
                let sealed = seal(&self.keys, key, tokens);
                let row = sqlx::query(&sql::upsert_connection_sql())
                    .bind(key.app_id.as_str())
                    .bind(key.connector_type.as_str())
                    .bind(sealed.access_token)
                    .bind(sealed.refresh_token)
                    .bind(tokens.token_type.as_deref())
                    .bind(tokens.expires_at)
                    .bind(tokens.scope.as_deref())
                    .bind(sealed.metadata)
                    .bind($crate::domain::now_epoch())
                    .bind(obtained_at)
                    .fetch_one(&self.pool)
                    .await?;
                decode(&self.keys, &row)
            }

            async fn begin_refresh(
                &self,
                key: &$crate::domain::ConnectionKey,
                lease_seconds: i64,
            ) -> Result<Option<Box<dyn $crate::secrets::RefreshGuard>>, $crate::secrets::StoreError>
            {
                let (app, ct) = (key.app_id.as_str(), key.connector_type.as_str());
                // Another holder's lease ends by itself within `lease_seconds`: this loop is
                // bounded by it (plus one poll).
                let mut pause = std::time::Duration::from_millis(20);
                loop {
                    let now = $crate::domain::now_epoch();
                    let row = sqlx::query(&sql::take_lease_sql(Self::NOW_SQL))
                        .bind(app)
                        .bind(ct)
                        .bind(&*self.owner)
                        .bind(now)
                        .bind(lease_seconds)
                        .fetch_optional(&self.pool)
                        .await?;
                    if let Some(row) = row {
                        let guard = LeaseRefresh {
                            pool: self.pool.clone(),
                            keys: self.keys.clone(),
                            owner: self.owner.clone(),
                            current: None,
                        };
                        return match decode(&self.keys, &row) {
                            Ok(current) => Ok(Some(Box::new(LeaseRefresh {
                                current: Some(current),
                                ..guard
                            }))),
                            Err(e) => {
                                guard.give_back(key).await;
                                Err(e)
                            }
                        };
                    }
                    let exists: Option<i64> = sqlx::query_scalar(sql::CONNECTION_EXISTS)
                        .bind(app)
                        .bind(ct)
                        .fetch_optional(&self.pool)
                        .await?;
                    if exists.is_none() {
                        return Ok(None);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(250));
                }
            }

            async fn claim_due(
                &self,
                now: i64,
                window: i64,
                idle_before: i64,
                limit: i64,
                lease_until: i64,
            ) -> Result<Vec<$crate::domain::StoredConnection>, $crate::secrets::StoreError> {
                let rows = sqlx::query(&Self::claim_due_sql())
                    .bind(now)
                    .bind(window)
                    .bind(idle_before)
                    .bind(limit)
                    .bind(lease_until)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|r| decode(&self.keys, r)).collect()
            }

            async fn list_connections(
                &self,
                filter: &$crate::domain::ConnectionFilter,
            ) -> Result<Vec<$crate::domain::ConnectionSummary>, $crate::secrets::StoreError> {
                use sqlx::Row;
                let (app, ct) = filter
                    .after
                    .as_ref()
                    .map(|k| (k.app_id.to_string(), k.connector_type.to_string()))
                    .unwrap_or_default();
                let rows = sqlx::query(sql::LIST_CONNECTIONS)
                    .bind(app)
                    .bind(ct)
                    .bind(filter.status.map(|s| s.as_str()).unwrap_or(""))
                    .bind(
                        filter
                            .connector_type
                            .as_ref()
                            .map(|c| c.as_str())
                            .unwrap_or(""),
                    )
                    .bind(filter.app_id_prefix.as_deref().unwrap_or(""))
                    .bind(filter.expiring_before.unwrap_or(0))
                    .bind(filter.limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        let status: String = r.try_get("status")?;
                        Ok($crate::domain::ConnectionSummary {
                            key: parse_key(
                                &r.try_get::<String, _>("app_id")?,
                                &r.try_get::<String, _>("connector_type")?,
                            )?,
                            status: $crate::domain::ConnectionStatus::parse(&status).ok_or_else(
                                || {
                                    $crate::secrets::StoreError::Corrupt(format!(
                                        "unknown connection status {status}"
                                    ))
                                },
                            )?,
                            expires_at: r.try_get("expires_at")?,
                            scope: r.try_get("scope")?,
                            has_refresh_token: r.try_get("has_refresh_token")?,
                            created_at: r.try_get("created_at")?,
                            updated_at: r.try_get("updated_at")?,
                            refreshed_at: r.try_get("refreshed_at")?,
                            last_error: r.try_get("last_error")?,
                        })
                    })
                    .collect()
            }

            async fn count_connections(
                &self,
            ) -> Result<Vec<(String, String, i64)>, $crate::secrets::StoreError> {
                use sqlx::Row;
                let rows = sqlx::query(sql::COUNT_CONNECTIONS)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok((
                            r.try_get("connector_type")?,
                            r.try_get("status")?,
                            r.try_get("n")?,
                        ))
                    })
                    .collect()
            }

            async fn delete_connection(
                &self,
                key: &$crate::domain::ConnectionKey,
            ) -> Result<Option<$crate::domain::StoredConnection>, $crate::secrets::StoreError> {
                let row = sqlx::query(&sql::delete_connection_sql())
                    .bind(key.app_id.as_str())
                    .bind(key.connector_type.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|r| decode(&self.keys, &r)).transpose()
            }
        }

        #[async_trait::async_trait]
        impl $crate::secrets::LinkStore for $store {
            async fn create_connect_link(
                &self,
                link: &$crate::domain::ConnectLink,
            ) -> Result<(), $crate::secrets::StoreError> {
                sqlx::query(sql::INSERT_LINK)
                    .bind(&link.secret_hash[..])
                    .bind(link.key.app_id.as_str())
                    .bind(link.key.connector_type.as_str())
                    .bind(serde_json::to_string(&link.params).unwrap_or_else(|_| "{}".into()))
                    .bind(link.return_to.as_deref())
                    .bind(link.created_at)
                    .bind(link.expires_at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn connect_link(
                &self,
                secret_hash: &[u8; 32],
            ) -> Result<Option<$crate::domain::ConnectLink>, $crate::secrets::StoreError> {
                use sqlx::Row;
                let row = sqlx::query(sql::SELECT_LINK)
                    .bind(&secret_hash[..])
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(row) = row else { return Ok(None) };
                let app: String = row.try_get("app_id")?;
                let ct: String = row.try_get("connector_type")?;
                let params: String = row.try_get("params")?;
                Ok(Some($crate::domain::ConnectLink {
                    secret_hash: *secret_hash,
                    key: parse_key(&app, &ct)?,
                    params: serde_json::from_str(&params).map_err(|_| {
                        $crate::secrets::StoreError::Corrupt(
                            "connect link params are not JSON".into(),
                        )
                    })?,
                    return_to: row.try_get("return_to")?,
                    created_at: row.try_get("created_at")?,
                    expires_at: row.try_get("expires_at")?,
                    spent_at: row.try_get("spent_at")?,
                }))
            }

            async fn spend_connect_link(
                &self,
                secret_hash: &[u8; 32],
                now: i64,
            ) -> Result<bool, $crate::secrets::StoreError> {
                let result = sqlx::query(sql::SPEND_LINK)
                    .bind(&secret_hash[..])
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(result.rows_affected() == 1)
            }

            async fn unspend_connect_link(
                &self,
                secret_hash: &[u8; 32],
            ) -> Result<(), $crate::secrets::StoreError> {
                sqlx::query(sql::UNSPEND_LINK)
                    .bind(&secret_hash[..])
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn create_oauth_state(
                &self,
                state_hash: &[u8; 32],
                state: &$crate::domain::OAuthState,
            ) -> Result<(), $crate::secrets::StoreError> {
                use $crate::secrets::crypto::oauth_state_aad;
                let now = $crate::domain::now_epoch();
                let verifier = state
                    .pkce_verifier
                    .as_ref()
                    .map(|v| self.keys.encrypt_secret(v, &oauth_state_aad(state_hash)));
                let mut tx = self.pool.begin().await?;
                sqlx::query(sql::DELETE_EXPIRED_STATES)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sql::INSERT_STATE)
                    .bind(&state_hash[..])
                    .bind(&state.link_hash[..])
                    .bind(verifier)
                    .bind(now)
                    .bind(state.expires_at)
                    .bind(state.browser_hash.as_ref().map(|h| &h[..]))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn take_oauth_state(
                &self,
                state_hash: &[u8; 32],
                now: i64,
            ) -> Result<Option<$crate::domain::OAuthState>, $crate::secrets::StoreError> {
                use sqlx::Row;
                use $crate::secrets::crypto::oauth_state_aad;
                let row = sqlx::query(sql::TAKE_STATE)
                    .bind(&state_hash[..])
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(row) = row else { return Ok(None) };
                let expires_at: i64 = row.try_get("expires_at")?;
                if expires_at <= now {
                    return Ok(None);
                }
                let verifier: Option<Vec<u8>> = row.try_get("pkce_verifier")?;
                let browser: Option<Vec<u8>> = row.try_get("browser_hash")?;
                Ok(Some($crate::domain::OAuthState {
                    browser_hash: browser.map(hash32).transpose()?,
                    link_hash: hash32(row.try_get("link_hash")?)?,
                    pkce_verifier: verifier
                        .map(|v| self.keys.decrypt_secret(&v, &oauth_state_aad(state_hash)))
                        .transpose()?,
                    expires_at,
                }))
            }
        }

        #[async_trait::async_trait]
        impl $crate::secrets::AuditStore for $store {
            async fn record_audit(
                &self,
                events: &[$crate::domain::AuditEvent],
            ) -> Result<(), $crate::secrets::StoreError> {
                // Multi-row inserts: one statement per 500 events.
                let mut tx = self.pool.begin().await?;
                for chunk in events.chunks(500) {
                    let placeholders: Vec<String> = (0..chunk.len())
                        .map(|i| {
                            let b = i * 9;
                            format!(
                                "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                                b + 1,
                                b + 2,
                                b + 3,
                                b + 4,
                                b + 5,
                                b + 6,
                                b + 7,
                                b + 8,
                                b + 9
                            )
                        })
                        .collect();
                    let statement = format!(
                        "{} VALUES {}",
                        sql::INSERT_AUDIT_HEAD,
                        placeholders.join(", ")
                    );
                    let mut query = sqlx::query(&statement);
                    for e in chunk {
                        query = query
                            .bind(e.at)
                            .bind(&e.principal)
                            .bind(&e.action)
                            .bind(e.app_id.as_deref())
                            .bind(e.connector_type.as_deref())
                            .bind(&e.outcome)
                            .bind(e.client_addr.as_deref())
                            .bind(e.subject.as_deref())
                            .bind(e.count);
                    }
                    query.execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn read_audit(
                &self,
                app_id: Option<&str>,
                since: i64,
                limit: i64,
            ) -> Result<Vec<$crate::domain::AuditEvent>, $crate::secrets::StoreError> {
                use sqlx::Row;
                let rows = sqlx::query(sql::READ_AUDIT)
                    .bind(since)
                    .bind(app_id.unwrap_or(""))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok($crate::domain::AuditEvent {
                            at: r.try_get("at")?,
                            principal: r.try_get("principal")?,
                            action: r.try_get("action")?,
                            app_id: r.try_get("app_id")?,
                            connector_type: r.try_get("connector_type")?,
                            outcome: r.try_get("outcome")?,
                            client_addr: r.try_get("client_addr")?,
                            subject: r.try_get("subject")?,
                            count: r.try_get("count")?,
                        })
                    })
                    .collect()
            }
        }

        #[async_trait::async_trait]
        impl $crate::secrets::WebhookStore for $store {
            async fn enqueue_webhook(
                &self,
                endpoint_url: &str,
                event_type: &str,
                body: &str,
                now: i64,
            ) -> Result<(), $crate::secrets::StoreError> {
                sqlx::query(sql::INSERT_WEBHOOK)
                    .bind(endpoint_url)
                    .bind(event_type)
                    .bind(body)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn claim_webhooks(
                &self,
                now: i64,
                limit: i64,
                lease_until: i64,
            ) -> Result<Vec<$crate::secrets::WebhookDelivery>, $crate::secrets::StoreError> {
                let rows = sqlx::query(&Self::claim_webhooks_sql())
                    .bind(now)
                    .bind(limit)
                    .bind(lease_until)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(decode_webhook).collect()
            }

            async fn finish_webhook(
                &self,
                id: i64,
                delivered_at: Option<i64>,
                next_attempt_at: i64,
                status: Option<i64>,
                error: Option<&str>,
            ) -> Result<(), $crate::secrets::StoreError> {
                sqlx::query(sql::FINISH_WEBHOOK)
                    .bind(id)
                    .bind(delivered_at)
                    .bind(next_attempt_at)
                    .bind(status)
                    .bind(error)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn list_webhooks(
                &self,
                failed_only: bool,
                limit: i64,
            ) -> Result<Vec<$crate::secrets::WebhookDelivery>, $crate::secrets::StoreError> {
                let filter = if failed_only {
                    "WHERE delivered_at IS NULL"
                } else {
                    ""
                };
                let rows = sqlx::query(&format!(
                    "SELECT {} FROM webhook_deliveries {filter} ORDER BY id DESC LIMIT $1",
                    sql::WEBHOOK_COLUMNS
                ))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(decode_webhook).collect()
            }
        }

        #[async_trait::async_trait]
        impl $crate::secrets::SigningKeyStore for $store {
            async fn jwt_keys(
                &self,
            ) -> Result<Vec<$crate::secrets::JwtKeyRecord>, $crate::secrets::StoreError> {
                use sqlx::Row;
                use $crate::secrets::crypto::jwt_key_aad;
                let rows = sqlx::query(sql::LIST_JWT_KEYS)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        let kid: String = r.try_get("kid")?;
                        let private: Vec<u8> = r.try_get("private_key")?;
                        Ok($crate::secrets::JwtKeyRecord {
                            pkcs8: self.keys.decrypt(&private, &jwt_key_aad(&kid))?,
                            public_key: r.try_get("public_key")?,
                            created_at: r.try_get("created_at")?,
                            retire_at: r.try_get("retire_at")?,
                            kid,
                        })
                    })
                    .collect()
            }

            async fn rotate_jwt_key(
                &self,
                key: &$crate::secrets::JwtKeyRecord,
                retire_at: i64,
            ) -> Result<(), $crate::secrets::StoreError> {
                use $crate::secrets::crypto::jwt_key_aad;
                let mut tx = self.pool.begin().await?;
                sqlx::query(sql::RETIRE_JWT_KEYS)
                    .bind(retire_at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sql::INSERT_JWT_KEY)
                    .bind(&key.kid)
                    .bind(self.keys.encrypt(&key.pkcs8, &jwt_key_aad(&key.kid)))
                    .bind(&key.public_key)
                    .bind(key.created_at)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::secrets::AccountStore for $store {
            async fn create_service_account(
                &self,
                account: &$crate::secrets::ServiceAccount,
            ) -> Result<(), $crate::secrets::StoreError> {
                let result = sqlx::query(sql::INSERT_ACCOUNT)
                    .bind(&account.name)
                    .bind(account.role.as_str())
                    .bind(&account.token_hash[..])
                    .bind(account.created_at)
                    .bind(
                        account
                            .scope
                            .as_ref()
                            .map(|s| serde_json::to_string(&s.apps).unwrap_or_default()),
                    )
                    .bind(
                        account
                            .scope
                            .as_ref()
                            .map(|s| serde_json::to_string(&s.connector_types).unwrap_or_default()),
                    )
                    .bind(account.expires_at)
                    .execute(&self.pool)
                    .await?;
                if result.rows_affected() == 0 {
                    return Err($crate::secrets::StoreError::AlreadyExists(format!(
                        "service account '{}'",
                        account.name
                    )));
                }
                Ok(())
            }

            async fn list_service_accounts(
                &self,
            ) -> Result<Vec<$crate::secrets::ServiceAccount>, $crate::secrets::StoreError> {
                use sqlx::Row;
                let rows = sqlx::query(sql::LIST_ACCOUNTS)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        let role: String = row.try_get("role")?;
                        let apps: Option<String> = row.try_get("apps")?;
                        let types: Option<String> = row.try_get("connector_types")?;
                        let list = |v: Option<String>| -> Vec<String> {
                            v.and_then(|v| serde_json::from_str(&v).ok())
                                .unwrap_or_default()
                        };
                        let scope = (apps.is_some() || types.is_some()).then(|| {
                            $crate::secrets::AccountScope {
                                apps: list(apps),
                                connector_types: list(types),
                            }
                        });
                        Ok($crate::secrets::ServiceAccount {
                            scope,
                            expires_at: row.try_get("expires_at")?,
                            name: row.try_get("name")?,
                            role: $crate::secrets::Role::parse(&role).ok_or_else(|| {
                                $crate::secrets::StoreError::Corrupt(format!("unknown role {role}"))
                            })?,
                            token_hash: hash32(row.try_get("token_hash")?)?,
                            created_at: row.try_get("created_at")?,
                        })
                    })
                    .collect()
            }

            async fn delete_service_account(
                &self,
                name: &str,
            ) -> Result<bool, $crate::secrets::StoreError> {
                let result = sqlx::query(sql::DELETE_ACCOUNT)
                    .bind(name)
                    .execute(&self.pool)
                    .await?;
                Ok(result.rows_affected() > 0)
            }

            async fn create_admin_session(
                &self,
                session: &$crate::secrets::AdminSession,
            ) -> Result<(), $crate::secrets::StoreError> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(sql::DELETE_EXPIRED_SESSIONS)
                    .bind(session.created_at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sql::INSERT_SESSION)
                    .bind(&session.id_hash[..])
                    .bind(&session.account)
                    .bind(&session.account_token_hash[..])
                    .bind(session.created_at)
                    .bind(session.expires_at)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn admin_session(
                &self,
                id_hash: &[u8; 32],
                now: i64,
            ) -> Result<Option<$crate::secrets::AdminSession>, $crate::secrets::StoreError> {
                use sqlx::Row;
                let row = sqlx::query(sql::SELECT_SESSION)
                    .bind(&id_hash[..])
                    .bind(now)
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(row) = row else { return Ok(None) };
                Ok(Some($crate::secrets::AdminSession {
                    id_hash: *id_hash,
                    account: row.try_get("account")?,
                    account_token_hash: hash32(row.try_get("account_token_hash")?)?,
                    created_at: row.try_get("created_at")?,
                    expires_at: row.try_get("expires_at")?,
                }))
            }

            async fn delete_admin_session(
                &self,
                id_hash: &[u8; 32],
            ) -> Result<(), $crate::secrets::StoreError> {
                sqlx::query(sql::DELETE_SESSION)
                    .bind(&id_hash[..])
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::secrets::MaintenanceStore for $store {
            async fn ping(&self) -> Result<(), $crate::secrets::StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn reencrypt_connections(
                &self,
                after: Option<&$crate::domain::ConnectionKey>,
                limit: i64,
            ) -> Result<$crate::secrets::Reencrypted, $crate::secrets::StoreError> {
                use sqlx::Row;
                use $crate::secrets::crypto::connection_aad;
                let (app, ct) = after
                    .map(|k| (k.app_id.as_str(), k.connector_type.as_str()))
                    .unwrap_or(("", ""));
                let rows = sqlx::query(sql::SCAN_SECRETS)
                    .bind(app)
                    .bind(ct)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                let mut progress = $crate::secrets::Reencrypted::default();
                for row in &rows {
                    let app: String = row.try_get("app_id")?;
                    let ct: String = row.try_get("connector_type")?;
                    let version: i64 = row.try_get("version")?;
                    let access: Vec<u8> = row.try_get("access_token")?;
                    let refresh: Option<Vec<u8>> = row.try_get("refresh_token")?;
                    progress.scanned += 1;
                    progress.last = Some(parse_key(&app, &ct)?);
                    if self.keys.is_current(&access)
                        && refresh.as_deref().is_none_or(|r| self.keys.is_current(r))
                    {
                        continue;
                    }
                    let access = self
                        .keys
                        .reencrypt(&access, &connection_aad(&app, &ct, "access_token"))?;
                    let refresh = refresh
                        .map(|r| {
                            self.keys
                                .reencrypt(&r, &connection_aad(&app, &ct, "refresh_token"))
                        })
                        .transpose()?;
                    let result = sqlx::query(sql::REWRITE_SECRETS)
                        .bind(&app)
                        .bind(&ct)
                        .bind(version)
                        .bind(access)
                        .bind(refresh)
                        .execute(&self.pool)
                        .await?;
                    if result.rows_affected() == 1 {
                        progress.rotated += 1;
                    } else {
                        progress.raced += 1;
                    }
                }
                Ok(progress)
            }

            async fn reencrypt_meta(&self) -> Result<u64, $crate::secrets::StoreError> {
                use sqlx::Row;
                use $crate::secrets::crypto::{oauth_state_aad, KEY_CHECK_AAD};
                let mut rotated = 0;
                if let Some(check) = Self::read_key_check(&self.pool).await? {
                    if !self.keys.is_current(&check) {
                        let check = self.keys.reencrypt(&check, KEY_CHECK_AAD)?;
                        sqlx::query(sql::REWRITE_KEY_CHECK)
                            .bind(check)
                            .execute(&self.pool)
                            .await?;
                        rotated += 1;
                    }
                }
                let keys = sqlx::query("SELECT kid, private_key FROM jwt_keys")
                    .fetch_all(&self.pool)
                    .await?;
                for row in &keys {
                    let kid: String = row.try_get("kid")?;
                    let private: Vec<u8> = row.try_get("private_key")?;
                    if self.keys.is_current(&private) {
                        continue;
                    }
                    let aad = $crate::secrets::crypto::jwt_key_aad(&kid);
                    sqlx::query("UPDATE jwt_keys SET private_key = $2 WHERE kid = $1")
                        .bind(&kid)
                        .bind(self.keys.reencrypt(&private, &aad)?)
                        .execute(&self.pool)
                        .await?;
                    rotated += 1;
                }
                let rows = sqlx::query(sql::SCAN_STATES).fetch_all(&self.pool).await?;
                for row in &rows {
                    let hash = hash32(row.try_get("state_hash")?)?;
                    let verifier: Vec<u8> = row.try_get("pkce_verifier")?;
                    if self.keys.is_current(&verifier) {
                        continue;
                    }
                    let verifier = self.keys.reencrypt(&verifier, &oauth_state_aad(&hash))?;
                    sqlx::query(sql::REWRITE_STATE)
                        .bind(&hash[..])
                        .bind(verifier)
                        .execute(&self.pool)
                        .await?;
                    rotated += 1;
                }
                Ok(rotated)
            }

            async fn prune(
                &self,
                audit_before: Option<i64>,
                webhooks_before: Option<i64>,
            ) -> Result<u64, $crate::secrets::StoreError> {
                let mut pruned = 0;
                for (statement, before) in [
                    (sql::PRUNE_AUDIT, audit_before),
                    (sql::PRUNE_WEBHOOKS, webhooks_before),
                ] {
                    let Some(before) = before else { continue };
                    loop {
                        let deleted = sqlx::query(statement)
                            .bind(before)
                            .execute(&self.pool)
                            .await?
                            .rows_affected();
                        pruned += deleted;
                        if deleted < sql::PRUNE_BATCH {
                            break;
                        }
                    }
                }
                Ok(pruned)
            }
        }
    };
}

pub(crate) use sql_store;
