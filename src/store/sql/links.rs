//! Connect links and OAuth states: their statements and `LinkStore`.

pub(crate) const INSERT_LINK: &str = "INSERT INTO connect_links (secret_hash, app_id, \
     connector_type, params, return_to, created_at, expires_at, client_id, client_secret, \
     same_account) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

pub(crate) const SELECT_LINK: &str = "SELECT app_id, connector_type, params, return_to, \
     created_at, expires_at, spent_at, client_id, client_secret, same_account FROM connect_links \
     WHERE secret_hash = $1";

pub(crate) const SPEND_LINK: &str = "UPDATE connect_links SET spent_at = $2 \
     WHERE secret_hash = $1 AND spent_at IS NULL AND expires_at > $2";

pub(crate) const UNSPEND_LINK: &str =
    "UPDATE connect_links SET spent_at = NULL WHERE secret_hash = $1";

pub(crate) const DELETE_EXPIRED_STATES: &str = "DELETE FROM oauth_states WHERE expires_at <= $1";

pub(crate) const INSERT_STATE: &str = "INSERT INTO oauth_states (state_hash, link_hash, \
     pkce_verifier, created_at, expires_at, browser_hash) VALUES ($1, $2, $3, $4, $5, $6)";

pub(crate) const TAKE_STATE: &str = "DELETE FROM oauth_states WHERE state_hash = $1 \
     RETURNING link_hash, pkce_verifier, expires_at, browser_hash";

/// Implements `LinkStore` for a backend's store type `$store` (its pool a
/// `sqlx::Pool<$db>`, its rows `$row`). Invoked by `sql_store!`, whose
/// `use $crate::store::sql` it relies on.
macro_rules! link_store {
    ($store:ident, $db:ty, $row:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::LinkStore for $store {
            async fn create_connect_link(
                &self,
                link: &$crate::domain::ConnectLink,
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::crypto::link_client_aad;
                let client = link.client.as_ref();
                let client_secret = client.and_then(|c| {
                    c.client_secret.as_ref().map(|s| {
                        self.keys
                            .encrypt_secret(s, &link_client_aad(&link.secret_hash, &c.client_id))
                    })
                });
                sqlx::query(sql::INSERT_LINK)
                    .bind(&link.secret_hash[..])
                    .bind(link.key.app_id.as_str())
                    .bind(link.key.connector_type.as_str())
                    .bind(serde_json::to_string(&link.params).unwrap_or_else(|_| "{}".into()))
                    .bind(link.return_to.as_deref())
                    .bind(link.created_at)
                    .bind(link.expires_at)
                    .bind(client.map(|c| c.client_id.as_str()))
                    .bind(client_secret)
                    .bind(link.same_account)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn connect_link(
                &self,
                secret_hash: &[u8; 32],
            ) -> Result<Option<$crate::domain::ConnectLink>, $crate::store::StoreError> {
                use sqlx::Row;
                let row = sqlx::query(sql::SELECT_LINK)
                    .bind(&secret_hash[..])
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(row) = row else { return Ok(None) };
                let app: String = row.try_get("app_id")?;
                let ct: String = row.try_get("connector_type")?;
                let params: String = row.try_get("params")?;
                let client_id: Option<String> = row.try_get("client_id")?;
                let client_secret: Option<Vec<u8>> = row.try_get("client_secret")?;
                let client = match client_id {
                    Some(client_id) => Some($crate::domain::TenantClient {
                        client_secret: client_secret
                            .map(|b| {
                                self.keys.decrypt_secret(
                                    &b,
                                    &$crate::store::crypto::link_client_aad(
                                        secret_hash,
                                        &client_id,
                                    ),
                                )
                            })
                            .transpose()?,
                        client_id,
                    }),
                    None => None,
                };
                Ok(Some($crate::domain::ConnectLink {
                    secret_hash: *secret_hash,
                    key: sql::parse_key(&app, &ct)?,
                    params: serde_json::from_str(&params).map_err(|_| {
                        $crate::store::StoreError::Corrupt(
                            "connect link params are not JSON".into(),
                        )
                    })?,
                    return_to: row.try_get("return_to")?,
                    created_at: row.try_get("created_at")?,
                    expires_at: row.try_get("expires_at")?,
                    spent_at: row.try_get("spent_at")?,
                    client,
                    same_account: row.try_get("same_account")?,
                }))
            }

            async fn spend_connect_link(
                &self,
                secret_hash: &[u8; 32],
                now: i64,
            ) -> Result<bool, $crate::store::StoreError> {
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
            ) -> Result<(), $crate::store::StoreError> {
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
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::crypto::oauth_state_aad;
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
            ) -> Result<Option<$crate::domain::OAuthState>, $crate::store::StoreError> {
                use sqlx::Row;
                use $crate::store::crypto::oauth_state_aad;
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
                    browser_hash: browser.map(sql::hash32).transpose()?,
                    link_hash: sql::hash32(row.try_get("link_hash")?)?,
                    pkce_verifier: verifier
                        .map(|v| self.keys.decrypt_secret(&v, &oauth_state_aad(state_hash)))
                        .transpose()?,
                    expires_at,
                }))
            }
        }
    };
}

pub(crate) use link_store;
