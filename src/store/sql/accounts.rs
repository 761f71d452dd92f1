//! Service accounts and admin sessions: their statements and `AccountStore`.

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

/// Implements `AccountStore` for a backend's store type `$store` (its pool a
/// `sqlx::Pool<$db>`, its rows `$row`). Invoked by `sql_store!`, whose
/// `use $crate::store::sql` it relies on.
macro_rules! account_store {
    ($store:ident, $db:ty, $row:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::AccountStore for $store {
            async fn create_service_account(
                &self,
                account: &$crate::store::ServiceAccount,
            ) -> Result<(), $crate::store::StoreError> {
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
                    return Err($crate::store::StoreError::AlreadyExists(format!(
                        "service account '{}'",
                        account.name
                    )));
                }
                Ok(())
            }

            async fn list_service_accounts(
                &self,
            ) -> Result<Vec<$crate::store::ServiceAccount>, $crate::store::StoreError> {
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
                            $crate::store::AccountScope {
                                apps: list(apps),
                                connector_types: list(types),
                            }
                        });
                        Ok($crate::store::ServiceAccount {
                            scope,
                            expires_at: row.try_get("expires_at")?,
                            name: row.try_get("name")?,
                            role: $crate::store::Role::parse(&role).ok_or_else(|| {
                                $crate::store::StoreError::Corrupt(format!("unknown role {role}"))
                            })?,
                            token_hash: sql::hash32(row.try_get("token_hash")?)?,
                            created_at: row.try_get("created_at")?,
                        })
                    })
                    .collect()
            }

            async fn delete_service_account(
                &self,
                name: &str,
            ) -> Result<bool, $crate::store::StoreError> {
                let result = sqlx::query(sql::DELETE_ACCOUNT)
                    .bind(name)
                    .execute(&self.pool)
                    .await?;
                Ok(result.rows_affected() > 0)
            }

            async fn create_admin_session(
                &self,
                session: &$crate::store::AdminSession,
            ) -> Result<(), $crate::store::StoreError> {
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
            ) -> Result<Option<$crate::store::AdminSession>, $crate::store::StoreError> {
                use sqlx::Row;
                let row = sqlx::query(sql::SELECT_SESSION)
                    .bind(&id_hash[..])
                    .bind(now)
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(row) = row else { return Ok(None) };
                Ok(Some($crate::store::AdminSession {
                    id_hash: *id_hash,
                    account: row.try_get("account")?,
                    account_token_hash: sql::hash32(row.try_get("account_token_hash")?)?,
                    created_at: row.try_get("created_at")?,
                    expires_at: row.try_get("expires_at")?,
                }))
            }

            async fn delete_admin_session(
                &self,
                id_hash: &[u8; 32],
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(sql::DELETE_SESSION)
                    .bind(&id_hash[..])
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }
    };
}

pub(crate) use account_store;
