//! The audit log: its statements and `AuditStore`.

pub(crate) const INSERT_AUDIT_HEAD: &str = "INSERT INTO audit_events (at, principal, action, \
     app_id, connector_type, outcome, client_addr, subject, count, last_at, workload_issuer, \
     workload_subject)";

pub(crate) const READ_AUDIT: &str = "SELECT at, principal, action, app_id, connector_type, \
     outcome, client_addr, subject, count, last_at, workload_issuer, workload_subject FROM audit_events WHERE at >= $1 AND ($2 = '' OR app_id = $2) \
     ORDER BY id DESC LIMIT $3";

/// A multi-row insert of `rows` audit events (twelve parameters each). `numbered`: `$1, $2,
/// ...` placeholders (PostgreSQL); otherwise anonymous `?` ones, which SQLite binds by
/// position without looking each one up by name.
pub(crate) fn insert_audit_sql(rows: usize, numbered: bool) -> String {
    let placeholders: Vec<String> = (0..rows)
        .map(|i| {
            let b = i * 12;
            let row: Vec<String> = (1..=12)
                .map(|p| {
                    if numbered {
                        format!("${}", b + p)
                    } else {
                        "?".to_string()
                    }
                })
                .collect();
            format!("({})", row.join(", "))
        })
        .collect();
    format!("{INSERT_AUDIT_HEAD} VALUES {}", placeholders.join(", "))
}

/// Implements `AuditStore` for a backend's store type `$store` (its pool a
/// `sqlx::Pool<$db>`, its rows `$row`). Invoked by `sql_store!`, whose
/// `use $crate::store::sql` it relies on.
macro_rules! audit_store {
    ($store:ident, $db:ty, $row:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::AuditStore for $store {
            async fn record_audit(
                &self,
                events: &[$crate::domain::AuditEvent],
            ) -> Result<(), $crate::store::StoreError> {
                // Multi-row inserts: one statement per 16 events (SQLite looks each named
                // parameter up by name: a statement's cost grows with the square of its
                // parameters; its placeholders are anonymous).
                let numbered = <$db as sqlx::Database>::NAME == "PostgreSQL";
                let mut tx = self.pool.begin().await?;
                for chunk in events.chunks(16) {
                    let statement = sql::insert_audit_sql(chunk.len(), numbered);
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
                            .bind(e.count)
                            .bind(e.last_at)
                            .bind(e.workload_issuer.as_deref())
                            .bind(e.workload_subject.as_deref());
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
            ) -> Result<Vec<$crate::domain::AuditEvent>, $crate::store::StoreError> {
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
                            last_at: r.try_get("last_at")?,
                            workload_issuer: r.try_get("workload_issuer")?,
                            workload_subject: r.try_get("workload_subject")?,
                        })
                    })
                    .collect()
            }
        }
    };
}

pub(crate) use audit_store;
