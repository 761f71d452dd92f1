//! What the SQL backends share: the statements (written once, with `$N` parameters, which both
//! SQLite and PostgreSQL accept) and the row mapping, one file per concern (`connections`,
//! `links`, `audit`, `webhooks`, `signing_keys`, `accounts`, `maintenance`). Each file holds its
//! statements and one macro that implements its narrow store trait for a backend;
//! `sql_store!` invokes them all. Each backend file keeps only its dialect: connection
//! options, migrations, and the statements that differ (claims with `FOR UPDATE SKIP LOCKED`).

mod accounts;
mod audit;
mod connections;
mod identities;
mod links;
mod maintenance;
mod proxy;
mod signing_keys;
mod webhooks;

pub(crate) use {
    accounts::*, audit::*, connections::*, identities::*, links::*, maintenance::*, proxy::*,
    signing_keys::*, webhooks::*,
};

/// Ciphertexts and encoded columns of a token set, ready to bind.
pub(crate) struct Sealed {
    pub(crate) access_token: Vec<u8>,
    pub(crate) refresh_token: Option<Vec<u8>>,
    pub(crate) metadata: String,
    /// The connection's own OAuth client: its id, and its secret encrypted.
    pub(crate) client_id: Option<String>,
    pub(crate) client_secret: Option<Vec<u8>>,
}

/// Encrypts a token set's secrets, bound to its connection, and encodes its metadata.
pub(crate) fn seal(
    keys: &crate::store::crypto::KeyRing,
    key: &crate::domain::ConnectionKey,
    tokens: &crate::domain::TokenSet,
) -> Sealed {
    use crate::store::crypto::{connection_aad, connection_client_aad};
    let (app, ct) = (key.app_id.as_str(), key.connector_type.as_str());
    let client = tokens.client.as_ref();
    Sealed {
        client_id: client.map(|c| c.client_id.clone()),
        client_secret: client.and_then(|c| {
            c.client_secret
                .as_ref()
                .map(|s| keys.encrypt_secret(s, &connection_client_aad(app, ct, &c.client_id)))
        }),
        access_token: keys.encrypt_secret(
            &tokens.access_token,
            &connection_aad(app, ct, "access_token"),
        ),
        refresh_token: tokens
            .refresh_token
            .as_ref()
            .map(|t| keys.encrypt_secret(t, &connection_aad(app, ct, "refresh_token"))),
        metadata: serde_json::to_string(&tokens.metadata).unwrap_or_else(|_| "{}".into()),
    }
}

/// A connection key read from a row.
pub(crate) fn parse_key(
    app: &str,
    ct: &str,
) -> Result<crate::domain::ConnectionKey, crate::store::StoreError> {
    use crate::store::StoreError;
    Ok(crate::domain::ConnectionKey::new(
        crate::domain::AppId::parse(app).map_err(StoreError::Corrupt)?,
        crate::domain::ConnectorTypeName::parse(ct).map_err(StoreError::Corrupt)?,
    ))
}

/// A SHA-256 hash read from a row.
pub(crate) fn hash32(bytes: Vec<u8>) -> Result<[u8; 32], crate::store::StoreError> {
    bytes
        .try_into()
        .map_err(|_| crate::store::StoreError::Corrupt("a hash is not 32 bytes".into()))
}

/// Generates a backend's store: every narrow store trait, each from its file, for one
/// backend's type, database and row. The parts call one another by name (`decode`,
/// `write_refresh`, `read_key_check`) and use `sql`, imported here.
macro_rules! sql_store {
    ($store:ident, $db:ty, $row:ty) => {
        use $crate::store::sql;

        $crate::store::sql::connection_store!($store, $db, $row);
        $crate::store::sql::link_store!($store, $db, $row);
        $crate::store::sql::audit_store!($store, $db, $row);
        $crate::store::sql::webhook_store!($store, $db, $row);
        $crate::store::sql::signing_key_store!($store, $db, $row);
        $crate::store::sql::account_store!($store, $db, $row);
        $crate::store::sql::maintenance_store!($store, $db, $row);
        $crate::store::sql::proxy_store!($store, $db, $row);
        $crate::store::sql::identity_store!($store, $db, $row);
    };
}

pub(crate) use sql_store;
