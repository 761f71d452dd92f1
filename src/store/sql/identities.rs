//! Whose account each connection is: its statements and `IdentityStore`.

pub(crate) const SELECT_CONNECTION_ACCOUNT: &str = "SELECT account_id, name, email, \
     organisation, previous_account_id, updated_at FROM connection_accounts \
     WHERE app_id = $1 AND connector_type = $2";

pub(crate) const CONNECTION_ACCOUNTS_BETWEEN: &str = "SELECT app_id, connector_type, \
     account_id, name, email, organisation, previous_account_id, updated_at \
     FROM connection_accounts WHERE (app_id, connector_type) >= ($1, $2) \
     AND (app_id, connector_type) <= ($3, $4) ORDER BY app_id, connector_type";

pub(crate) const UPSERT_CONNECTION_ACCOUNT: &str = "INSERT INTO connection_accounts (app_id, \
     connector_type, account_id, name, email, organisation, previous_account_id, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (app_id, connector_type) DO UPDATE SET \
     account_id = excluded.account_id, name = excluded.name, email = excluded.email, \
     organisation = excluded.organisation, previous_account_id = excluded.previous_account_id, \
     updated_at = excluded.updated_at";

pub(crate) const DELETE_CONNECTION_ACCOUNT: &str =
    "DELETE FROM connection_accounts WHERE app_id = $1 AND connector_type = $2";

/// A stored identity read from a row of `connection_accounts`.
pub(crate) fn connection_account_of<R: sqlx::Row>(
    row: &R,
) -> Result<crate::domain::ConnectionAccount, crate::store::StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(crate::domain::ConnectionAccount {
        account: crate::domain::AccountIdentity {
            id: row.try_get("account_id")?,
            name: row.try_get("name")?,
            email: row.try_get("email")?,
            organisation: row.try_get("organisation")?,
        },
        previous_account_id: row.try_get("previous_account_id")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Implements `IdentityStore` for a backend's store type `$store`. Invoked by `sql_store!`,
/// whose `use $crate::store::sql` it relies on.
macro_rules! identity_store {
    ($store:ident, $db:ty, $row:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::IdentityStore for $store {
            async fn connection_account(
                &self,
                key: &$crate::domain::ConnectionKey,
            ) -> Result<Option<$crate::domain::ConnectionAccount>, $crate::store::StoreError> {
                let row = sqlx::query(sql::SELECT_CONNECTION_ACCOUNT)
                    .bind(key.app_id.as_str())
                    .bind(key.connector_type.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(row) = row else { return Ok(None) };
                Ok(Some(sql::connection_account_of(&row)?))
            }

            async fn connection_accounts_between(
                &self,
                first: &$crate::domain::ConnectionKey,
                last: &$crate::domain::ConnectionKey,
            ) -> Result<
                Vec<(
                    $crate::domain::ConnectionKey,
                    $crate::domain::ConnectionAccount,
                )>,
                $crate::store::StoreError,
            > {
                use sqlx::Row;
                let rows = sqlx::query(sql::CONNECTION_ACCOUNTS_BETWEEN)
                    .bind(first.app_id.as_str())
                    .bind(first.connector_type.as_str())
                    .bind(last.app_id.as_str())
                    .bind(last.connector_type.as_str())
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        let app: String = row.try_get("app_id")?;
                        let ct: String = row.try_get("connector_type")?;
                        Ok((sql::parse_key(&app, &ct)?, sql::connection_account_of(row)?))
                    })
                    .collect()
            }

            async fn save_connection_account(
                &self,
                key: &$crate::domain::ConnectionKey,
                account: &$crate::domain::ConnectionAccount,
            ) -> Result<(), $crate::store::StoreError> {
                let a = &account.account;
                sqlx::query(sql::UPSERT_CONNECTION_ACCOUNT)
                    .bind(key.app_id.as_str())
                    .bind(key.connector_type.as_str())
                    .bind(a.id.as_deref())
                    .bind(a.name.as_deref())
                    .bind(a.email.as_deref())
                    .bind(a.organisation.as_deref())
                    .bind(account.previous_account_id.as_deref())
                    .bind(account.updated_at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn delete_connection_account(
                &self,
                key: &$crate::domain::ConnectionKey,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(sql::DELETE_CONNECTION_ACCOUNT)
                    .bind(key.app_id.as_str())
                    .bind(key.connector_type.as_str())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }
    };
}

pub(crate) use identity_store;
