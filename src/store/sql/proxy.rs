//! The proxy mode's pauses: their statements and `ProxyStore`.

pub(crate) const PROXY_PAUSE: &str =
    "SELECT paused_until FROM proxy_pauses WHERE app_id = $1 AND connector_type = $2";

pub(crate) const PAUSE_PROXY: &str = "INSERT INTO proxy_pauses (app_id, connector_type, \
     paused_until) VALUES ($1, $2, $3) ON CONFLICT (app_id, connector_type) DO UPDATE SET \
     paused_until = CASE WHEN excluded.paused_until > proxy_pauses.paused_until \
     THEN excluded.paused_until ELSE proxy_pauses.paused_until END";

/// Implements `ProxyStore` for a backend's store type `$store`. Invoked by `sql_store!`, whose
/// `use $crate::store::sql` it relies on.
macro_rules! proxy_store {
    ($store:ident, $db:ty, $row:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::ProxyStore for $store {
            async fn proxy_paused_until(
                &self,
                key: &$crate::domain::ConnectionKey,
            ) -> Result<Option<i64>, $crate::store::StoreError> {
                Ok(sqlx::query_scalar(sql::PROXY_PAUSE)
                    .bind(key.app_id.as_str())
                    .bind(key.connector_type.as_str())
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn pause_proxy(
                &self,
                key: &$crate::domain::ConnectionKey,
                until: i64,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(sql::PAUSE_PROXY)
                    .bind(key.app_id.as_str())
                    .bind(key.connector_type.as_str())
                    .bind(until)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }
    };
}

pub(crate) use proxy_store;
