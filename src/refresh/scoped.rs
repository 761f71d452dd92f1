//! Scoped-down GitHub App installation tokens: `binb-token?repositories=a,b&permissions=
//! contents:read` asks GitHub for a token limited to those repositories and permissions. Each
//! scope of each connection has its own cached token and its own single flight; the tokens live
//! in memory only (they are minted again after a restart, in one call).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::domain::{ConnectionKey, TokenSet};

/// At most this many scoped tokens are kept; beyond it, expired ones are forgotten first and
/// then everything (they are cheap to mint again).
const MAX_SCOPED: usize = 10_000;

/// A requested scope, canonical (sorted), so that the same request shares one token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GithubScope {
    repositories: Vec<String>,
    permissions: BTreeMap<String, String>,
}

impl GithubScope {
    /// Parses `repositories=a,b` and `permissions=contents:read,issues:write`; `None` when
    /// neither is given. The error is a sentence naming the rule, never echoing long input.
    pub fn parse(
        repositories: Option<&str>,
        permissions: Option<&str>,
    ) -> Result<Option<Self>, String> {
        if repositories.is_none() && permissions.is_none() {
            return Ok(None);
        }
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        let mut repos: Vec<String> = Vec::new();
        for r in repositories.unwrap_or_default().split(',').map(str::trim) {
            if r.is_empty() {
                continue;
            }
            if !name_ok(r) {
                return Err("repositories must be comma-separated repository names (letters, digits, '-', '_', '.')".into());
            }
            repos.push(r.to_string());
        }
        repos.sort();
        repos.dedup();
        let mut perms = BTreeMap::new();
        for p in permissions.unwrap_or_default().split(',').map(str::trim) {
            if p.is_empty() {
                continue;
            }
            let (name, level) = p.split_once(':').ok_or_else(|| {
                "permissions must be comma-separated name:level pairs (contents:read)".to_string()
            })?;
            let name_valid = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            if !name_valid || !matches!(level, "read" | "write" | "admin") {
                return Err("permissions must be name:level pairs, the level read, write or admin (contents:read)".into());
            }
            perms.insert(name.to_string(), level.to_string());
        }
        if repos.len() > 500 {
            return Err("at most 500 repositories may be named".into());
        }
        Ok(Some(Self {
            repositories: repos,
            permissions: perms,
        }))
    }

    /// GitHub's request body: `{"repositories": [...], "permissions": {...}}`, empty parts left
    /// out.
    pub fn body(&self) -> Value {
        let mut body = json!({});
        if !self.repositories.is_empty() {
            body["repositories"] = json!(self.repositories);
        }
        if !self.permissions.is_empty() {
            body["permissions"] = json!(self.permissions);
        }
        body
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<TokenSet>>>;

/// The scoped tokens of this process.
#[derive(Default)]
pub struct ScopedTokens {
    slots: Mutex<HashMap<(ConnectionKey, GithubScope), Slot>>,
}

impl ScopedTokens {
    /// The slot of a scope: lock it to read the cached token or, alone, to mint a new one.
    pub fn slot(&self, key: &ConnectionKey, scope: &GithubScope) -> Slot {
        let mut slots = self.slots.lock().expect("scoped map poisoned");
        if slots.len() >= MAX_SCOPED {
            let now = crate::domain::now_epoch();
            slots.retain(|_, slot| {
                slot.try_lock()
                    .map(|t| t.as_ref().is_some_and(|t| t.is_valid(now)))
                    .unwrap_or(true)
            });
            if slots.len() >= MAX_SCOPED {
                slots.clear();
            }
        }
        slots
            .entry((key.clone(), scope.clone()))
            .or_default()
            .clone()
    }

    /// Forgets every scoped token of a connection (deleted, reconnected, revoked).
    pub fn forget(&self, key: &ConnectionKey) {
        self.slots
            .lock()
            .expect("scoped map poisoned")
            .retain(|(k, _), _| k != key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_canonical_and_checked() {
        let a = GithubScope::parse(Some("b,a, a"), Some("issues:write,contents:read"))
            .unwrap()
            .unwrap();
        let b = GithubScope::parse(Some("a,b"), Some("contents:read,issues:write"))
            .unwrap()
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a.body(),
            json!({"repositories": ["a", "b"], "permissions": {"contents": "read", "issues": "write"}})
        );
        assert_eq!(GithubScope::parse(None, None), Ok(None));
        assert!(GithubScope::parse(Some("a/b"), None).is_err());
        assert!(GithubScope::parse(None, Some("contents")).is_err());
        assert!(GithubScope::parse(None, Some("contents:own")).is_err());
        let only_perms = GithubScope::parse(None, Some("metadata:read"))
            .unwrap()
            .unwrap();
        assert_eq!(
            only_perms.body(),
            json!({"permissions": {"metadata": "read"}})
        );
    }
}
