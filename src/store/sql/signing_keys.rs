//! JWT signing keys: their statements and `SigningKeyStore`.

pub(crate) const LIST_JWT_KEYS: &str = "SELECT kid, private_key, public_key, created_at, \
     retire_at FROM jwt_keys ORDER BY created_at, kid";

pub(crate) const RETIRE_JWT_KEYS: &str =
    "UPDATE jwt_keys SET retire_at = $1 WHERE retire_at IS NULL";

pub(crate) const INSERT_JWT_KEY: &str = "INSERT INTO jwt_keys (kid, private_key, public_key, \
     created_at) VALUES ($1, $2, $3, $4)";

/// Implements `SigningKeyStore` for a backend's store type `$store` (its pool a
/// `sqlx::Pool<$db>`, its rows `$row`). Invoked by `sql_store!`, whose
/// `use $crate::store::sql` it relies on.
macro_rules! signing_key_store {
    ($store:ident, $db:ty, $row:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::SigningKeyStore for $store {
            async fn jwt_keys(
                &self,
            ) -> Result<Vec<$crate::store::JwtKeyRecord>, $crate::store::StoreError> {
                use sqlx::Row;
                use $crate::store::crypto::jwt_key_aad;
                let rows = sqlx::query(sql::LIST_JWT_KEYS)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        let kid: String = r.try_get("kid")?;
                        let private: Vec<u8> = r.try_get("private_key")?;
                        Ok($crate::store::JwtKeyRecord {
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
                key: &$crate::store::JwtKeyRecord,
                retire_at: i64,
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::crypto::jwt_key_aad;
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
    };
}

pub(crate) use signing_key_store;
