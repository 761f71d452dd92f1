//! The webhook outbox: its statements, its row mapping and `WebhookStore`.

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

/// Recent deliveries, newest first; `failed_only`: not delivered yet. $1 limit.
pub(crate) fn list_webhooks_sql(failed_only: bool) -> String {
    let filter = if failed_only {
        "WHERE delivered_at IS NULL"
    } else {
        ""
    };
    format!("SELECT {WEBHOOK_COLUMNS} FROM webhook_deliveries {filter} ORDER BY id DESC LIMIT $1")
}

/// Implements `WebhookStore` for a backend's store type `$store` (its pool a
/// `sqlx::Pool<$db>`, its rows `$row`). Invoked by `sql_store!`, whose
/// `use $crate::store::sql` it relies on.
macro_rules! webhook_store {
    ($store:ident, $db:ty, $row:ty) => {
        fn decode_webhook(
            row: &$row,
        ) -> Result<$crate::store::WebhookDelivery, $crate::store::StoreError> {
            use sqlx::Row;
            Ok($crate::store::WebhookDelivery {
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

        #[async_trait::async_trait]
        impl $crate::store::WebhookStore for $store {
            async fn enqueue_webhook(
                &self,
                endpoint_url: &str,
                event_type: &str,
                body: &str,
                now: i64,
            ) -> Result<(), $crate::store::StoreError> {
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
            ) -> Result<Vec<$crate::store::WebhookDelivery>, $crate::store::StoreError> {
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
            ) -> Result<(), $crate::store::StoreError> {
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
            ) -> Result<Vec<$crate::store::WebhookDelivery>, $crate::store::StoreError> {
                let rows = sqlx::query(&sql::list_webhooks_sql(failed_only))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(decode_webhook).collect()
            }
        }
    };
}

pub(crate) use webhook_store;
