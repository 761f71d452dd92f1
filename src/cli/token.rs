//! `tokenbox token`: asks a running tokenbox for a valid access token (for shell extraction
//! scripts) and tells failures apart by exit code.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::domain::{AppId, ConnectorTypeName};

/// What `tokenbox token` asks for.
pub struct TokenRequest {
    pub app_id: String,
    pub connector_type: String,
    pub min_validity: Option<u64>,
    pub force_refresh: bool,
}

/// Exit codes of `tokenbox token`, so shell scripts can tell failures apart.
fn exit_code_for(error: &str) -> u8 {
    match error {
        "reauthorization_required" => 3,
        "not_connected" => 4,
        "provider_unavailable" | "provider_error" => 5,
        "unauthorized" | "forbidden" => 6,
        _ => 1,
    }
}

/// The `binb-token` endpoint of the service at `url` for this request.
fn endpoint(url: &str, request: &TokenRequest) -> String {
    let mut query = Vec::new();
    if let Some(s) = request.min_validity {
        query.push(format!("min_validity={s}"));
    }
    if request.force_refresh {
        query.push("force_refresh=true".to_string());
    }
    format!(
        "{}/{}/{}/binb-token{}{}",
        url.trim_end_matches('/'),
        request.app_id,
        request.connector_type,
        if query.is_empty() { "" } else { "?" },
        query.join("&")
    )
}

/// Prints the access token, or the error on stderr with its exit code.
pub async fn fetch_token(
    url: &str,
    token: &str,
    request: &TokenRequest,
) -> anyhow::Result<ExitCode> {
    AppId::parse(&request.app_id).map_err(anyhow::Error::msg)?;
    ConnectorTypeName::parse(&request.connector_type).map_err(anyhow::Error::msg)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()?;
    let response = client
        .get(endpoint(url, request))
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach tokenbox at {url}"))?;
    let status = response.status();
    let body = response.bytes().await.context("cannot read the answer")?;
    let json: serde_json::Value = serde_json::from_slice(&body)
        .with_context(|| format!("tokenbox answered HTTP {status} with a body that is not JSON"))?;
    if status.is_success() {
        let access_token = json["access_token"]
            .as_str()
            .context("the answer has no access_token")?;
        println!("{access_token}");
        return Ok(ExitCode::SUCCESS);
    }
    let error = json["error"].as_str().unwrap_or("error");
    let message = json["message"].as_str().unwrap_or("");
    eprintln!("tokenbox: {error}: {message}");
    Ok(ExitCode::from(exit_code_for(error)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_carries_the_options_as_query() {
        let mut request = TokenRequest {
            app_id: "acme".into(),
            connector_type: "github".into(),
            min_validity: None,
            force_refresh: false,
        };
        assert_eq!(
            endpoint("http://127.0.0.1:8080/", &request),
            "http://127.0.0.1:8080/acme/github/binb-token"
        );
        request.min_validity = Some(300);
        request.force_refresh = true;
        assert_eq!(
            endpoint("http://127.0.0.1:8080", &request),
            "http://127.0.0.1:8080/acme/github/binb-token?min_validity=300&force_refresh=true"
        );
    }

    #[test]
    fn failures_have_distinct_exit_codes() {
        assert_eq!(exit_code_for("reauthorization_required"), 3);
        assert_eq!(exit_code_for("not_connected"), 4);
        assert_eq!(exit_code_for("provider_error"), 5);
        assert_eq!(exit_code_for("forbidden"), 6);
        assert_eq!(exit_code_for("internal"), 1);
    }
}
