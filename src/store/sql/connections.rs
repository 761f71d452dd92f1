//! Connections: their statements, the row mapping (`decode`), the refresh lease and its write
//! (`write_refresh`), and `ConnectionStore`.

pub(crate) const CONNECTION_COLUMNS: &str = "app_id, connector_type, status, access_token, \
     refresh_token, token_type, expires_at, scope, metadata, version, created_at, updated_at, \
     refreshed_at, last_error, backoff_until, refresh_failures, last_error_kind, \
     refresh_interrupted_at, client_id, client_secret, refresh_expires_at, \
     warned_refresh_expires_at";

pub(crate) fn select_connection(suffix: &str) -> String {
    format!(
        "SELECT {CONNECTION_COLUMNS} FROM connections WHERE app_id = $1 AND connector_type = $2{suffix}"
    )
}

pub(crate) fn upsert_connection_sql() -> String {
    format!(
        "INSERT INTO connections (app_id, connector_type, status, access_token, refresh_token, \
         token_type, expires_at, scope, metadata, version, created_at, updated_at, refreshed_at, \
         client_id, client_secret, refresh_expires_at) \
         VALUES ($1, $2, 'active', $3, $4, $5, $6, $7, $8, 1, $9, $9, $10, $11, $12, $13) \
         ON CONFLICT (app_id, connector_type) DO UPDATE SET status = 'active', \
         access_token = excluded.access_token, refresh_token = excluded.refresh_token, \
         client_id = excluded.client_id, client_secret = excluded.client_secret, \
         token_type = excluded.token_type, expires_at = excluded.expires_at, \
         scope = excluded.scope, metadata = excluded.metadata, \
         refresh_expires_at = excluded.refresh_expires_at, \
         version = connections.version + 1, updated_at = excluded.updated_at, \
         refreshed_at = COALESCE(excluded.refreshed_at, connections.refreshed_at), \
         last_error = NULL, last_error_at = NULL, backoff_until = NULL, refresh_failures = 0, \
         last_error_kind = NULL, refresh_interrupted_at = NULL \
         RETURNING {CONNECTION_COLUMNS}"
    )
}

pub(crate) const UPDATE_REFRESHED: &str = "UPDATE connections SET status = 'active', \
     access_token = $4, refresh_token = $5, token_type = $6, expires_at = $7, scope = $8, \
     metadata = $9, refresh_expires_at = $11, version = version + 1, updated_at = $10, \
     refreshed_at = $10, \
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
     AND ((expires_at IS NOT NULL AND expires_at <= $1 + $2 \
           AND (refreshed_at IS NULL OR (expires_at - $1) * 2 <= expires_at - refreshed_at)) \
          OR COALESCE(refreshed_at, created_at) <= $3)";

/// The listing's statement for the filters present, and its parameters in order, so that each
/// filter can use its index (a generic `($3 = '' OR status = $3)` cannot): the keyset walks the
/// primary key, `status` and `connector_type` have their indexes (migration 0013), a prefix of
/// the app id becomes a range of the primary key (the key columns compare bytewise on both
/// backends: SQLite's `BINARY`, PostgreSQL's `COLLATE "C"`).
pub(crate) fn list_connections_sql(
    filter: &crate::domain::ConnectionFilter,
) -> (String, Vec<ListParam>) {
    let mut sql = String::from(
        "SELECT app_id, connector_type, status, expires_at, scope, refresh_expires_at, \
         refresh_token IS NOT NULL AS has_refresh_token, created_at, updated_at, refreshed_at, \
         last_error FROM connections WHERE TRUE",
    );
    let mut params = Vec::new();
    let mut next = |sql: &mut String, clause: &str, values: Vec<ListParam>| {
        let mut clause = clause.to_string();
        for (i, value) in values.into_iter().enumerate() {
            params.push(value);
            clause = clause.replace(&format!("${}", i + 1), &format!("${}", params.len()));
        }
        sql.push_str(" AND ");
        sql.push_str(&clause);
    };
    if let Some(after) = &filter.after {
        next(
            &mut sql,
            "(app_id, connector_type) > ($1, $2)",
            vec![
                ListParam::Text(after.app_id.to_string()),
                ListParam::Text(after.connector_type.to_string()),
            ],
        );
    }
    if let Some(status) = filter.status {
        next(
            &mut sql,
            "status = $1",
            vec![ListParam::Text(status.as_str().into())],
        );
    }
    if let Some(ct) = &filter.connector_type {
        next(
            &mut sql,
            "connector_type = $1",
            vec![ListParam::Text(ct.to_string())],
        );
    }
    if let Some(prefix) = filter.app_id_prefix.as_deref().filter(|p| !p.is_empty()) {
        next(
            &mut sql,
            "app_id >= $1 AND app_id < $2 AND substr(app_id, 1, length($1)) = $1",
            vec![
                ListParam::Text(prefix.into()),
                ListParam::Text(format!("{prefix}{}", char::MAX)),
            ],
        );
    }
    if let Some(before) = filter.expiring_before.filter(|b| *b != 0) {
        next(
            &mut sql,
            "expires_at IS NOT NULL AND expires_at <= $1",
            vec![ListParam::Int(before)],
        );
    }
    if let Some(before) = filter.refresh_expiring_before {
        next(
            &mut sql,
            "status = 'active' AND refresh_expires_at IS NOT NULL AND refresh_expires_at <= $1",
            vec![ListParam::Int(before)],
        );
    }
    if let Some(scope) = filter.missing_scope.as_deref() {
        // The granted scopes are stored as the provider wrote them, separated by spaces or
        // commas: the scope is missing when no whole item equals it. The LIKE patterns
        // escape their wildcards so that `a_b` does not match `axb`.
        let escaped = like_escape(scope);
        next(
            &mut sql,
            "NOT (COALESCE(' ' || replace(scope, ',', ' ') || ' ', '') LIKE $1 ESCAPE '\\')",
            vec![ListParam::Text(format!("% {escaped} %"))],
        );
    }
    params.push(ListParam::Int(filter.limit));
    sql.push_str(&format!(
        " ORDER BY app_id, connector_type LIMIT ${}",
        params.len()
    ));
    (sql, params)
}

/// `value` as a literal inside a LIKE pattern (escape character `\`).
pub(crate) fn like_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A parameter of the listing's statement.
pub(crate) enum ListParam {
    Text(String),
    Int(i64),
}

/// $1 app, $2 type, $3 the deadline warned about.
pub(crate) const MARK_WARNED: &str = "UPDATE connections SET warned_refresh_expires_at = $3 \
     WHERE app_id = $1 AND connector_type = $2 AND refresh_expires_at = $3 \
     AND (warned_refresh_expires_at IS NULL OR warned_refresh_expires_at <> $3)";

/// $1 before, $2 limit.
pub(crate) const UNWARNED_DUE: &str = "SELECT app_id, connector_type, refresh_expires_at \
     FROM connections WHERE status = 'active' AND refresh_expires_at IS NOT NULL \
     AND refresh_expires_at <= $1 \
     AND (warned_refresh_expires_at IS NULL OR warned_refresh_expires_at <> refresh_expires_at) \
     ORDER BY refresh_expires_at LIMIT $2";

/// Health checks to run: $1 now, $2 checked before, $3 limit, then the connector types
/// ($4, $5, ...).
pub(crate) fn claim_health_checks_sql(types: usize) -> String {
    let list: Vec<String> = (0..types).map(|i| format!("${}", i + 4)).collect();
    format!(
        "UPDATE connections SET health_checked_at = $1 WHERE (app_id, connector_type) IN \
         (SELECT app_id, connector_type FROM connections WHERE status = 'active' \
          AND connector_type IN ({}) \
          AND (health_checked_at IS NULL OR health_checked_at <= $2) \
          ORDER BY COALESCE(health_checked_at, 0), app_id, connector_type LIMIT $3) \
         AND (health_checked_at IS NULL OR health_checked_at <= $2) \
         RETURNING app_id, connector_type",
        list.join(", ")
    )
}

/// $1 before.
pub(crate) const COUNT_DUE: &str = "SELECT connector_type, COUNT(*) AS n FROM connections \
     WHERE status = 'active' AND refresh_expires_at IS NOT NULL AND refresh_expires_at <= $1 \
     GROUP BY connector_type";

pub(crate) const COUNT_CONNECTIONS: &str = "SELECT connector_type, status, COUNT(*) AS n \
     FROM connections GROUP BY connector_type, status";

/// Implements `ConnectionStore` for a backend's store type `$store` (its pool a
/// `sqlx::Pool<$db>`, its rows `$row`). Invoked by `sql_store!`, whose
/// `use $crate::store::sql` it relies on.
macro_rules! connection_store {
    ($store:ident, $db:ty, $row:ty) => {
        fn decode(
            keys: &$crate::store::crypto::KeyRing,
            row: &$row,
        ) -> Result<$crate::domain::StoredConnection, $crate::store::StoreError> {
            use sqlx::Row;
            use $crate::store::crypto::{connection_aad, connection_client_aad};
            use $crate::store::StoreError;
            let app: String = row.try_get("app_id")?;
            let ct: String = row.try_get("connector_type")?;
            let access: Vec<u8> = row.try_get("access_token")?;
            let refresh: Option<Vec<u8>> = row.try_get("refresh_token")?;
            let status: String = row.try_get("status")?;
            let metadata: String = row.try_get("metadata")?;
            let client_id: Option<String> = row.try_get("client_id")?;
            let client_secret: Option<Vec<u8>> = row.try_get("client_secret")?;
            let client = match (client_id, client_secret) {
                (Some(client_id), secret) => Some($crate::domain::TenantClient {
                    client_secret: secret
                        .map(|b| {
                            keys.decrypt_secret(&b, &connection_client_aad(&app, &ct, &client_id))
                        })
                        .transpose()?,
                    client_id,
                }),
                (None, Some(_)) => {
                    return Err(StoreError::Corrupt(
                        "a connection has a client secret without a client id".into(),
                    ))
                }
                (None, None) => None,
            };
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
                    refresh_expires_at: row.try_get("refresh_expires_at")?,
                    metadata: serde_json::from_str(&metadata).map_err(|_| {
                        StoreError::Corrupt("connection metadata is not JSON".into())
                    })?,
                    client,
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
                warned_refresh_expires_at: row.try_get("warned_refresh_expires_at")?,
                key: sql::parse_key(&app, &ct)?,
            })
        }

        /// Writes a refresh outcome, conditional on the version read; `None` when another
        /// writer changed the row meanwhile.
        async fn write_refresh<'e, E>(
            executor: E,
            keys: &$crate::store::crypto::KeyRing,
            current: &$crate::domain::StoredConnection,
            write: $crate::store::RefreshWrite,
        ) -> Result<Option<$crate::domain::StoredConnection>, $crate::store::StoreError>
        where
            E: sqlx::Executor<'e, Database = $db>,
        {
            use $crate::domain::ConnectionStatus;
            use $crate::store::RefreshWrite;
            let key = &current.key;
            let now = $crate::domain::now_epoch();
            let mut next = current.clone();
            next.version += 1;
            next.updated_at = now;
            let query = match write {
                RefreshWrite::Refreshed(tokens) => {
                    let sealed = sql::seal(keys, key, &tokens);
                    next.tokens = tokens;
                    // A refresh never changes the connection's own client (its columns are
                    // not written): what is returned is what the row holds.
                    next.tokens.client = current.tokens.client.clone();
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
                        .bind(next.tokens.refresh_expires_at)
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

        /// Refresh outcomes committed together (group commit): each refresh's write is a
        /// statement of its own, conditional on the version it read, but the writes queued
        /// while a commit is under way share the next transaction, and so its one fsync.
        /// A refresh is acknowledged only once its transaction committed, as before; a batch
        /// that fails is written again one refresh per transaction, so that one bad write
        /// cannot cost the others their rotated refresh tokens.
        #[derive(Clone)]
        pub(crate) struct RefreshCommitter {
            sender: tokio::sync::mpsc::Sender<CommitJob>,
        }

        struct CommitJob {
            current: $crate::domain::StoredConnection,
            write: $crate::store::RefreshWrite,
            reply: tokio::sync::oneshot::Sender<
                Result<Option<$crate::domain::StoredConnection>, $crate::store::StoreError>,
            >,
        }

        /// Writes gathered into one transaction at most.
        const COMMIT_BATCH: usize = 128;

        impl RefreshCommitter {
            /// Starts the committing task; it ends when the last clone is dropped.
            pub(crate) fn start(
                pool: sqlx::Pool<$db>,
                keys: std::sync::Arc<$crate::store::crypto::KeyRing>,
            ) -> Self {
                let (sender, mut receiver) = tokio::sync::mpsc::channel::<CommitJob>(1024);
                tokio::spawn(async move {
                    let mut jobs = Vec::with_capacity(COMMIT_BATCH);
                    while receiver.recv_many(&mut jobs, COMMIT_BATCH).await > 0 {
                        let results = Self::commit(&pool, &keys, &jobs).await;
                        for (job, result) in jobs.drain(..).zip(results) {
                            // A caller that went away (shut down) no longer waits.
                            let _ = job.reply.send(result);
                        }
                    }
                });
                Self { sender }
            }

            async fn commit(
                pool: &sqlx::Pool<$db>,
                keys: &$crate::store::crypto::KeyRing,
                jobs: &[CommitJob],
            ) -> Vec<Result<Option<$crate::domain::StoredConnection>, $crate::store::StoreError>>
            {
                if jobs.len() > 1 {
                    let together = async {
                        let mut tx = pool.begin().await?;
                        let mut written = Vec::with_capacity(jobs.len());
                        for job in jobs {
                            written.push(
                                write_refresh(&mut *tx, keys, &job.current, job.write.clone())
                                    .await?,
                            );
                        }
                        tx.commit().await?;
                        Ok::<_, $crate::store::StoreError>(written)
                    };
                    match together.await {
                        Ok(written) => {
                            tracing::debug!(writes = jobs.len(), "refresh outcomes committed together");
                            return written.into_iter().map(Ok).collect();
                        }
                        Err(e) => tracing::warn!(error = %e, writes = jobs.len(), "a group commit of refreshes failed; writing them one by one"),
                    }
                }
                let mut results = Vec::with_capacity(jobs.len());
                for job in jobs {
                    results.push(write_refresh(pool, keys, &job.current, job.write.clone()).await);
                }
                results
            }

            async fn write(
                &self,
                current: &$crate::domain::StoredConnection,
                write: $crate::store::RefreshWrite,
            ) -> Result<Option<$crate::domain::StoredConnection>, $crate::store::StoreError>
            {
                let (reply, answer) = tokio::sync::oneshot::channel();
                let job = CommitJob {
                    current: current.clone(),
                    write,
                    reply,
                };
                // The committing task stops only with the runtime: the database is gone.
                let gone = || $crate::store::StoreError::Database(sqlx::Error::PoolClosed);
                self.sender.send(job).await.map_err(|_| gone())?;
                answer.await.map_err(|_| gone())?
            }
        }

        /// The lease on one connection during a refresh: no database connection or
        /// transaction is held while the provider answers; the write is conditional on the
        /// version read, and clears the lease.
        struct LeaseRefresh {
            /// Where the lease is given back (the store's `lease_pool`).
            lease_pool: sqlx::Pool<$db>,
            /// Where the outcome is written (with the lease cleared).
            committer: RefreshCommitter,
            owner: std::sync::Arc<str>,
            current: Option<$crate::domain::StoredConnection>,
        }

        impl LeaseRefresh {
            async fn give_back(&self, key: &$crate::domain::ConnectionKey) {
                let released = sqlx::query(sql::RELEASE_LEASE)
                    .bind(key.app_id.as_str())
                    .bind(key.connector_type.as_str())
                    .bind(&*self.owner)
                    .execute(&self.lease_pool)
                    .await;
                if let Err(e) = released {
                    // The lease then ends by itself at its expiry.
                    tracing::warn!(error = %e, "cannot release a refresh lease");
                }
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::RefreshGuard for LeaseRefresh {
            fn current(&self) -> &$crate::domain::StoredConnection {
                self.current.as_ref().expect("a guard holds its connection")
            }

            async fn finish(
                self: Box<Self>,
                write: $crate::store::RefreshWrite,
            ) -> Result<Option<$crate::domain::StoredConnection>, $crate::store::StoreError>
            {
                let current = self.current();
                let written = self.committer.write(current, write).await;
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

        #[async_trait::async_trait]
        impl $crate::store::ConnectionStore for $store {
            async fn load(
                &self,
                key: &$crate::domain::ConnectionKey,
            ) -> Result<Option<$crate::domain::StoredConnection>, $crate::store::StoreError> {
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
            ) -> Result<$crate::domain::StoredConnection, $crate::store::StoreError> {
                let sealed = sql::seal(&self.keys, key, tokens);
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
                    .bind(sealed.client_id)
                    .bind(sealed.client_secret)
                    .bind(tokens.refresh_expires_at)
                    .fetch_one(&self.pool)
                    .await?;
                decode(&self.keys, &row)
            }

            async fn begin_refresh(
                &self,
                key: &$crate::domain::ConnectionKey,
                lease_seconds: i64,
            ) -> Result<Option<Box<dyn $crate::store::RefreshGuard>>, $crate::store::StoreError>
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
                        .fetch_optional(self.lease_pool())
                        .await?;
                    if let Some(row) = row {
                        let guard = LeaseRefresh {
                            lease_pool: self.lease_pool().clone(),
                            committer: self.committer.clone(),
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
            ) -> Result<Vec<$crate::domain::StoredConnection>, $crate::store::StoreError> {
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
            ) -> Result<Vec<$crate::domain::ConnectionSummary>, $crate::store::StoreError> {
                use sqlx::Row;
                let (statement, params) = sql::list_connections_sql(filter);
                let mut query = sqlx::query(&statement);
                for param in params {
                    query = match param {
                        sql::ListParam::Text(v) => query.bind(v),
                        sql::ListParam::Int(v) => query.bind(v),
                    };
                }
                let rows = query.fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|r| {
                        let status: String = r.try_get("status")?;
                        Ok($crate::domain::ConnectionSummary {
                            key: sql::parse_key(
                                &r.try_get::<String, _>("app_id")?,
                                &r.try_get::<String, _>("connector_type")?,
                            )?,
                            status: $crate::domain::ConnectionStatus::parse(&status).ok_or_else(
                                || {
                                    $crate::store::StoreError::Corrupt(format!(
                                        "unknown connection status {status}"
                                    ))
                                },
                            )?,
                            expires_at: r.try_get("expires_at")?,
                            scope: r.try_get("scope")?,
                            has_refresh_token: r.try_get("has_refresh_token")?,
                            refresh_expires_at: r.try_get("refresh_expires_at")?,
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
            ) -> Result<Vec<(String, String, i64)>, $crate::store::StoreError> {
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

            async fn mark_reauthorization_warned(
                &self,
                key: &$crate::domain::ConnectionKey,
                deadline: i64,
            ) -> Result<bool, $crate::store::StoreError> {
                let done = sqlx::query(sql::MARK_WARNED)
                    .bind(key.app_id.as_str())
                    .bind(key.connector_type.as_str())
                    .bind(deadline)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn unwarned_reauthorizations(
                &self,
                before: i64,
                limit: i64,
            ) -> Result<Vec<($crate::domain::ConnectionKey, i64)>, $crate::store::StoreError>
            {
                use sqlx::Row;
                let rows = sqlx::query(sql::UNWARNED_DUE)
                    .bind(before)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        let app: String = r.try_get("app_id")?;
                        let ct: String = r.try_get("connector_type")?;
                        Ok((sql::parse_key(&app, &ct)?, r.try_get("refresh_expires_at")?))
                    })
                    .collect()
            }

            async fn count_reauthorization_due(
                &self,
                before: i64,
            ) -> Result<Vec<(String, i64)>, $crate::store::StoreError> {
                use sqlx::Row;
                let rows = sqlx::query(sql::COUNT_DUE)
                    .bind(before)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("connector_type")?, r.try_get("n")?)))
                    .collect()
            }

            async fn claim_health_checks(
                &self,
                connector_types: &[String],
                now: i64,
                checked_before: i64,
                limit: i64,
            ) -> Result<Vec<$crate::domain::ConnectionKey>, $crate::store::StoreError> {
                use sqlx::Row;
                if connector_types.is_empty() {
                    return Ok(Vec::new());
                }
                let statement = sql::claim_health_checks_sql(connector_types.len());
                let mut query = sqlx::query(&statement)
                    .bind(now)
                    .bind(checked_before)
                    .bind(limit);
                for ct in connector_types {
                    query = query.bind(ct.as_str());
                }
                let rows = query.fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|r| {
                        let app: String = r.try_get("app_id")?;
                        let ct: String = r.try_get("connector_type")?;
                        sql::parse_key(&app, &ct)
                    })
                    .collect()
            }

            async fn delete_connection(
                &self,
                key: &$crate::domain::ConnectionKey,
            ) -> Result<Option<$crate::domain::StoredConnection>, $crate::store::StoreError> {
                let row = sqlx::query(&sql::delete_connection_sql())
                    .bind(key.app_id.as_str())
                    .bind(key.connector_type.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|r| decode(&self.keys, &r)).transpose()
            }
        }
    };
}

pub(crate) use connection_store;
