//! A wrapper for secret strings (tokens, client secrets, keys) that cannot be printed by accident.

use std::fmt;

/// A secret string. `Debug` and `Display` print `[redacted]`; the value is only reachable
/// through [`Secret::expose`], whose name makes every use easy to find in review.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value. Call sites must not log or format what this returns.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// A database URL (`postgres://user:password@host/db`, `sqlite://path`). `Debug` and
/// `Serialize` hide its password; the whole URL is reached through `Deref` / [`DatabaseUrl::as_str`].
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for DatabaseUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for DatabaseUrl {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for DatabaseUrl {
    fn from(value: &str) -> Self {
        Self(value.to_string())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

impl serde::Serialize for DatabaseUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&redact_url(&self.0))
    }
}

/// Hides the password of a database URL (`postgres://user:pw@host/db`) for logs and `Debug`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}://{user}:[redacted]@{host}{path}")
            } else {
                format!("{scheme}://{user}@{host}{path}")
            }
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_print_the_value() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
        assert_eq!(s.expose(), "hunter2-very-secret");
    }

    #[test]
    fn database_url_password_is_hidden() {
        assert_eq!(
            redact_url("postgres://tb:s3cret@127.0.0.1:5432/tokenbox"),
            "postgres://tb:[redacted]@127.0.0.1:5432/tokenbox"
        );
        assert_eq!(
            redact_url("postgres://tb@localhost/x"),
            "postgres://tb@localhost/x"
        );
        assert_eq!(
            redact_url("sqlite://tokenbox-data/tokenbox.db"),
            "sqlite://tokenbox-data/tokenbox.db"
        );
        let url = DatabaseUrl::from("postgres://tb:s3cret@127.0.0.1:5432/tokenbox");
        assert_eq!(
            format!("{url:?}"),
            "\"postgres://tb:[redacted]@127.0.0.1:5432/tokenbox\""
        );
        assert!(!serde_json::to_string(&url).unwrap().contains("s3cret"));
        assert!(url.as_str().contains("s3cret"));
    }
}
