//! Cells of the tables the commands print.

use crate::store::AccountScope;

/// "3h 12m", "45s", "expired" for a number of seconds.
pub fn human_duration(seconds: i64) -> String {
    if seconds <= 0 {
        return "expired".into();
    }
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// A service account's scope: `unrestricted`, or its apps and connector types (`*`: any).
pub fn scope(scope: Option<&AccountScope>) -> String {
    let any_or = |values: &[String]| {
        if values.is_empty() {
            "*".to_string()
        } else {
            values.join(",")
        }
    };
    match scope {
        None => "unrestricted".to_string(),
        Some(s) => format!(
            "apps={} connector_types={}",
            any_or(&s.apps),
            any_or(&s.connector_types)
        ),
    }
}

/// `-` for nothing.
pub fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        assert_eq!(human_duration(0), "expired");
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(60), "1m");
        assert_eq!(human_duration(150), "2m");
        assert_eq!(human_duration(3 * 3600 + 12 * 60 + 5), "3h 12m");
        assert_eq!(human_duration(2 * 86_400 + 3 * 3600), "2d 3h");
    }

    #[test]
    fn scopes_show_any_as_a_star() {
        assert_eq!(scope(None), "unrestricted");
        let only_apps = AccountScope {
            apps: vec!["acme-*".into(), "beta".into()],
            connector_types: vec![],
        };
        assert_eq!(
            scope(Some(&only_apps)),
            "apps=acme-*,beta connector_types=*"
        );
    }
}
