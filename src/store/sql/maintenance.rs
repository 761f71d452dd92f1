//! Maintenance: the key check value, re-encryption under the newest key, retention, and
//! `MaintenanceStore`.

pub(crate) const SCAN_SECRETS: &str = "SELECT app_id, connector_type, version, access_token, \
     refresh_token, client_id, client_secret FROM connections \
     WHERE (app_id, connector_type) > ($1, $2) ORDER BY app_id, connector_type LIMIT $3";

pub(crate) const REWRITE_SECRETS: &str = "UPDATE connections SET access_token = $4, \
     refresh_token = $5, client_secret = $6 \
     WHERE app_id = $1 AND connector_type = $2 AND version = $3";

pub(crate) const SCAN_LINK_CLIENTS: &str = "SELECT secret_hash, client_id, client_secret \
     FROM connect_links WHERE client_secret IS NOT NULL";

pub(crate) const REWRITE_LINK_CLIENT: &str =
    "UPDATE connect_links SET client_secret = $2 WHERE secret_hash = $1";

pub(crate) const SCAN_STATES: &str = "SELECT state_hash, pkce_verifier FROM oauth_states \
     WHERE pkce_verifier IS NOT NULL";

pub(crate) const REWRITE_STATE: &str =
    "UPDATE oauth_states SET pkce_verifier = $2 WHERE state_hash = $1";

pub(crate) const REWRITE_KEY_CHECK: &str =
    "UPDATE tokenbox_meta SET value = $1 WHERE key = 'key_check'";

pub(crate) const SCAN_JWT_KEYS: &str = "SELECT kid, private_key FROM jwt_keys";
pub(crate) const REWRITE_JWT_KEY: &str = "UPDATE jwt_keys SET private_key = $2 WHERE kid = $1";

/// Retention deletes in batches, so that no statement holds its locks for long.
pub(crate) const PRUNE_BATCH: u64 = 5000;

pub(crate) const PRUNE_AUDIT: &str = "DELETE FROM audit_events WHERE id IN \
     (SELECT id FROM audit_events WHERE at < $1 LIMIT 5000)";

pub(crate) const PRUNE_WEBHOOKS: &str = "DELETE FROM webhook_deliveries WHERE id IN \
     (SELECT id FROM webhook_deliveries WHERE delivered_at IS NOT NULL AND delivered_at < $1 \
     LIMIT 5000)";

pub(crate) const SELECT_KEY_CHECK: &str = "SELECT value FROM tokenbox_meta WHERE key = 'key_check'";

pub(crate) const INSERT_KEY_CHECK: &str = "INSERT INTO tokenbox_meta (key, value) \
     VALUES ('key_check', $1) ON CONFLICT (key) DO NOTHING";

/// Implements `MaintenanceStore` for a backend's store type `$store` (its pool a
/// `sqlx::Pool<$db>`, its rows `$row`). Invoked by `sql_store!`, whose
/// `use $crate::store::sql` it relies on.
macro_rules! maintenance_store {
    ($store:ident, $db:ty, $row:ty) => {
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
        impl $crate::store::MaintenanceStore for $store {
            async fn ping(&self) -> Result<(), $crate::store::StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn reencrypt_connections(
                &self,
                after: Option<&$crate::domain::ConnectionKey>,
                limit: i64,
            ) -> Result<$crate::store::Reencrypted, $crate::store::StoreError> {
                use sqlx::Row;
                use $crate::store::crypto::{connection_aad, connection_client_aad};
                let (app, ct) = after
                    .map(|k| (k.app_id.as_str(), k.connector_type.as_str()))
                    .unwrap_or(("", ""));
                let rows = sqlx::query(sql::SCAN_SECRETS)
                    .bind(app)
                    .bind(ct)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                let mut progress = $crate::store::Reencrypted::default();
                for row in &rows {
                    let app: String = row.try_get("app_id")?;
                    let ct: String = row.try_get("connector_type")?;
                    let version: i64 = row.try_get("version")?;
                    let access: Vec<u8> = row.try_get("access_token")?;
                    let refresh: Option<Vec<u8>> = row.try_get("refresh_token")?;
                    let client_id: Option<String> = row.try_get("client_id")?;
                    let client_secret: Option<Vec<u8>> = row.try_get("client_secret")?;
                    progress.scanned += 1;
                    progress.last = Some(sql::parse_key(&app, &ct)?);
                    if self.keys.is_current(&access)
                        && refresh.as_deref().is_none_or(|r| self.keys.is_current(r))
                        && client_secret
                            .as_deref()
                            .is_none_or(|c| self.keys.is_current(c))
                    {
                        continue;
                    }
                    let client_secret = client_secret
                        .map(|c| {
                            let client_id = client_id.as_deref().unwrap_or_default();
                            self.keys
                                .reencrypt(&c, &connection_client_aad(&app, &ct, client_id))
                        })
                        .transpose()?;
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
                        .bind(client_secret)
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

            async fn reencrypt_meta(&self) -> Result<u64, $crate::store::StoreError> {
                use sqlx::Row;
                use $crate::store::crypto::{oauth_state_aad, KEY_CHECK_AAD};
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
                let keys = sqlx::query(sql::SCAN_JWT_KEYS)
                    .fetch_all(&self.pool)
                    .await?;
                for row in &keys {
                    let kid: String = row.try_get("kid")?;
                    let private: Vec<u8> = row.try_get("private_key")?;
                    if self.keys.is_current(&private) {
                        continue;
                    }
                    let aad = $crate::store::crypto::jwt_key_aad(&kid);
                    sqlx::query(sql::REWRITE_JWT_KEY)
                        .bind(&kid)
                        .bind(self.keys.reencrypt(&private, &aad)?)
                        .execute(&self.pool)
                        .await?;
                    rotated += 1;
                }
                let links = sqlx::query(sql::SCAN_LINK_CLIENTS)
                    .fetch_all(&self.pool)
                    .await?;
                for row in &links {
                    let hash = sql::hash32(row.try_get("secret_hash")?)?;
                    let client_id: Option<String> = row.try_get("client_id")?;
                    let secret: Vec<u8> = row.try_get("client_secret")?;
                    if self.keys.is_current(&secret) {
                        continue;
                    }
                    let aad = $crate::store::crypto::link_client_aad(
                        &hash,
                        client_id.as_deref().unwrap_or_default(),
                    );
                    sqlx::query(sql::REWRITE_LINK_CLIENT)
                        .bind(&hash[..])
                        .bind(self.keys.reencrypt(&secret, &aad)?)
                        .execute(&self.pool)
                        .await?;
                    rotated += 1;
                }
                let rows = sqlx::query(sql::SCAN_STATES).fetch_all(&self.pool).await?;
                for row in &rows {
                    let hash = sql::hash32(row.try_get("state_hash")?)?;
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
            ) -> Result<u64, $crate::store::StoreError> {
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

pub(crate) use maintenance_store;
