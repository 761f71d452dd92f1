//! The database side of a test: a fresh PostgreSQL database per test, and direct SQL on the
//! app's database (SQLite or PostgreSQL) to age, tamper with or inspect rows.

use super::{unique, TestApp};

/// A fresh PostgreSQL database for one test, dropped when the last user is gone. The server is
/// `TOKENBOX_TEST_DATABASE_URL` when set, else the local one over TCP.
pub struct PgDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

fn pg_admin_url() -> String {
    std::env::var("TOKENBOX_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

fn with_database(url: &str, name: &str) -> String {
    let mut parsed = reqwest::Url::parse(url).expect("a postgres:// URL");
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

impl PgDatabase {
    pub async fn create() -> Self {
        Self::create_on(pg_admin_url()).await
    }

    /// A fresh database on the server of `admin_url` (a throwaway cluster's, for instance).
    pub async fn create_on(admin_url: String) -> Self {
        use sqlx::{ConnectOptions, Connection};
        let name = unique("tokenbox_test").replace('-', "_");
        let mut admin =
            <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&admin_url)
                .unwrap()
                .connect()
                .await
                .expect("PostgreSQL must be running (scripts/test.sh starts it)");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        Self {
            url: with_database(&admin_url, &name),
            admin_url,
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // A runtime of its own: Drop may run inside or outside one.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                use sqlx::{ConnectOptions, Connection};
                if let Ok(mut admin) =
                    <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&admin_url)
                        .unwrap()
                        .connect()
                        .await
                {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut admin)
                            .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

/// Runs `$body` with `$c` bound to a fresh connection to the app's database, whichever the
/// backend.
macro_rules! with_db {
    ($app:expr, |$c:ident| $body:expr) => {{
        use sqlx::{ConnectOptions, Connection};
        match &$app.pg {
            Some(db) => {
                let mut $c =
                    <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&db.url)
                        .unwrap()
                        .connect()
                        .await
                        .unwrap();
                let out = $body;
                $c.close().await.unwrap();
                out
            }
            None => {
                let mut $c = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(
                    &format!("sqlite://{}", $app.db_path().display()),
                )
                .unwrap()
                .connect()
                .await
                .unwrap();
                let out = $body;
                $c.close().await.unwrap();
                out
            }
        }
    }};
}

impl TestApp {
    /// Runs a statement directly on the database (to age or tamper with rows).
    pub async fn execute_sql(&self, statement: &str) -> u64 {
        with_db!(self, |c| sqlx::query(statement)
            .execute(&mut c)
            .await
            .unwrap()
            .rows_affected())
    }

    /// The first column of a query's rows, as text (for state checks).
    pub async fn query_strings(&self, statement: &str) -> Vec<String> {
        with_db!(self, |c| sqlx::query_scalar::<_, String>(statement)
            .fetch_all(&mut c)
            .await
            .unwrap())
    }

    /// The raw bytes of a column of the connections table, as stored.
    pub async fn raw_column(&self, column: &str) -> Vec<Vec<u8>> {
        let statement = format!("SELECT {column} FROM connections WHERE {column} IS NOT NULL");
        with_db!(self, |c| sqlx::query_scalar::<_, Vec<u8>>(&statement)
            .fetch_all(&mut c)
            .await
            .unwrap())
    }
}
