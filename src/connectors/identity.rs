//! Whose account a token belongs to: the answer of the identity request (OpenID Connect
//! userinfo, or a provider's "me" endpoint), or the claims of an ID token.

use base64::Engine;
use serde_json::{Map, Value};

use crate::domain::AccountIdentity;

/// The longest value kept of any identity field (a provider's text, shown on pages).
const MAX_FIELD: usize = 200;

fn text(value: Option<&Value>) -> Option<String> {
    let s = match value? {
        Value::String(s) => s.clone(),
        // GitHub's and GitLab's ids are numbers.
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let s: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_FIELD)
        .collect();
    (!s.trim().is_empty()).then_some(s)
}

/// The account an identity answer describes: the id from `sub`, else `id`, else `account_id`
/// (Atlassian); the name from `name`, else `login`, else `display_name` (Zoom), else
/// `preferred_username`; the e-mail from `email`; the organisation from the catalog's
/// `userinfo_organisation_field`, when it has one.
pub fn from_claims(
    claims: &Map<String, Value>,
    organisation_field: Option<&str>,
) -> AccountIdentity {
    AccountIdentity {
        id: text(claims.get("sub"))
            .or_else(|| text(claims.get("id")))
            .or_else(|| text(claims.get("account_id"))),
        name: text(claims.get("name"))
            .or_else(|| text(claims.get("login")))
            .or_else(|| text(claims.get("display_name")))
            .or_else(|| text(claims.get("preferred_username"))),
        email: text(claims.get("email")),
        organisation: organisation_field.and_then(|f| text(claims.get(f))),
    }
}

/// The claims of an ID token (a JWT: the base64url JSON payload between its two dots).
///
/// The signature is not checked, and need not be: the token came in the answer of the token
/// endpoint itself, over TLS, to the client that authenticated there (OpenID Connect Core
/// §3.1.3.7 allows skipping validation in this case). It only names the account; it grants
/// nothing.
pub fn id_token_claims(id_token: &str) -> Option<Map<String, Value>> {
    let mut parts = id_token.split('.');
    let (_header, payload) = (parts.next()?, parts.next()?);
    parts.next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn sub_wins_over_id_and_numbers_become_text() {
        let a = from_claims(&map(json!({"sub": "u-1", "id": 7})), None);
        assert_eq!(a.id.as_deref(), Some("u-1"));
        let github = from_claims(
            &map(json!({"id": 583231, "login": "octocat", "name": null, "email": "o@example.com"})),
            None,
        );
        assert_eq!(github.id.as_deref(), Some("583231"));
        assert_eq!(github.name.as_deref(), Some("octocat"));
        assert_eq!(github.email.as_deref(), Some("o@example.com"));
        assert_eq!(github.organisation, None);
    }

    #[test]
    fn atlassian_and_zoom_answers_are_read() {
        let atlassian =
            map(json!({"account_id": "5b10a", "name": "Ann", "email": "a@example.com"}));
        assert_eq!(from_claims(&atlassian, None).id.as_deref(), Some("5b10a"));
        let zoom = map(json!({"id": "z1", "display_name": "Zed", "account_id": "acc"}));
        let a = from_claims(&zoom, Some("account_id"));
        assert_eq!(
            (
                a.id.as_deref(),
                a.name.as_deref(),
                a.organisation.as_deref()
            ),
            (Some("z1"), Some("Zed"), Some("acc"))
        );
    }

    #[test]
    fn organisation_comes_from_the_catalog_field() {
        let slack = map(json!({"sub": "U1", "https://slack.com/team_id": "T9"}));
        let a = from_claims(&slack, Some("https://slack.com/team_id"));
        assert_eq!(a.organisation.as_deref(), Some("T9"));
    }

    #[test]
    fn an_id_token_payload_is_read() {
        let enc =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let token = format!(
            "{}.{}.sig",
            enc(&json!({"alg": "RS256"})),
            enc(&json!({"sub": "abc", "email": "a@example.com"}))
        );
        let claims = id_token_claims(&token).unwrap();
        assert_eq!(from_claims(&claims, None).id.as_deref(), Some("abc"));
        assert!(id_token_claims("not-a-jwt").is_none());
        assert!(id_token_claims("a.b").is_none());
    }
}
