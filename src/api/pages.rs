//! Server-rendered pages for tenants: no JavaScript, no external assets.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; min-height: 100vh; display: flex; align-items: center; justify-content: center;
  background: #f3f5f8; font: 16px/1.5 system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; color: #1d2433; }
main { width: min(440px, calc(100vw - 32px)); background: #fff; border-radius: 12px; padding: 32px;
  box-shadow: 0 1px 3px rgba(16,24,40,.1), 0 8px 24px rgba(16,24,40,.06); }
h1 { font-size: 1.35rem; margin: 0 0 12px; }
p { margin: 0 0 16px; color: #3d4759; }
.brand { font-size: .8rem; letter-spacing: .08em; text-transform: uppercase; color: #6b7587; margin-bottom: 20px; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 6px 16px; margin: 0 0 24px; font-size: .95rem; }
dt { color: #6b7587; } dd { margin: 0; font-weight: 600; word-break: break-all; }
button { width: 100%; padding: 12px 16px; border: 0; border-radius: 8px; background: #2454d6; color: #fff;
  font-size: 1rem; font-weight: 600; cursor: pointer; }
button:hover { background: #1c44b0; }
.status { display: inline-block; padding: 2px 10px; border-radius: 999px; font-size: .8rem; font-weight: 600; margin-bottom: 12px; }
.ok { background: #e3f6ea; color: #17663a; } .bad { background: #fdecec; color: #a3211f; }
.note { font-size: .85rem; color: #6b7587; margin: 16px 0 0; }
label { display: block; font-size: .9rem; font-weight: 600; margin: 0 0 6px; }
input[type=text], input[type=password] { width: 100%; padding: 10px 12px; margin: 0 0 16px; font-size: 1rem;
  border: 1px solid #c9d0db; border-radius: 8px; }
.help { font-size: .9rem; }
.error { background: #fdecec; color: #a3211f; border-radius: 8px; padding: 10px 12px; font-size: .9rem; }
";

fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{title} · tokenbox</title><style>{STYLE}</style></head>\
         <body><main><div class=\"brand\">tokenbox</div>{body}</main></body></html>\n",
        title = escape(title),
    )
}

/// A page response with headers that keep it private: no caching, no framing, no referrer
/// (the connect URL holds a secret), no scripts.
pub fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let mut response = (status, Html(layout(title, body))).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    response
}

/// The page a tenant sees when opening a connect link.
pub fn connect_page(
    app_id: &str,
    provider: &str,
    connector_type: &str,
    scopes: &[String],
) -> Response {
    let scopes = if scopes.is_empty() {
        String::new()
    } else {
        format!("<dt>Access</dt><dd>{}</dd>", escape(&scopes.join(" ")))
    };
    page(
        StatusCode::OK,
        &format!("Connect {provider}"),
        &format!(
            "<h1>Connect your {provider} account</h1>\
             <p>The app <strong>{app}</strong> asks for access to your {provider} account so that its \
             data can be extracted on schedule. You will sign in at {provider} and approve the access there.</p>\
             <dl><dt>App</dt><dd>{app}</dd><dt>Provider</dt><dd>{provider} <span style=\"font-weight:400;color:#6b7587\">({ct})</span></dd>{scopes}</dl>\
             <form method=\"post\"><button id=\"connect\" type=\"submit\">Connect {provider}</button></form>\
             <p class=\"note\">You can revoke this access at any time from your {provider} account settings.</p>",
            provider = escape(provider),
            app = escape(app_id),
            ct = escape(connector_type),
        ),
    )
}

/// What the credential form of an `api_key` or `basic` connector type shows.
pub struct CredentialFormView<'a> {
    pub app_id: &'a str,
    pub provider: &'a str,
    pub connector_type: &'a str,
    /// `(id and name, label, input type)` of each field, in order.
    pub fields: Vec<(&'static str, &'a str, &'static str)>,
    pub help: Option<&'a str>,
    /// Where the tenant finds the key (placeholders already filled in).
    pub help_url: Option<String>,
    /// Where the form posts to (a path on this server).
    pub action: String,
    /// The single-use token that binds this form to the browser's cookie.
    pub form_token: &'a str,
    /// Why the last attempt failed: `(stable code, sentence)`. Never holds what was typed.
    pub error: Option<(&'a str, String)>,
    /// Whether the provider checks the credential before it is stored (`verify_url`).
    pub verified: bool,
}

/// The page a tenant sees when opening a connect link of an `api_key` or `basic` connector
/// type: the labelled fields, the help and the link to where the key is found. The fields are
/// always empty: nothing the tenant typed is ever sent back.
pub fn credential_form_page(status: StatusCode, view: &CredentialFormView) -> Response {
    let provider = escape(view.provider);
    let error = view
        .error
        .as_ref()
        .map(|(code, message)| {
            format!(
                "<p id=\"form-error\" class=\"error\" role=\"alert\" data-error=\"{}\">{}</p>",
                escape(code),
                escape(message)
            )
        })
        .unwrap_or_default();
    let help = match (view.help, view.help_url.as_deref()) {
        (None, None) => String::new(),
        (help, url) => format!(
            "<p class=\"help\" id=\"help\">{}{}</p>",
            help.map(escape).unwrap_or_default(),
            url.map(|u| format!(
                " <a id=\"help-link\" href=\"{}\" target=\"_blank\" rel=\"noopener noreferrer\">Where to find it</a>",
                escape(u)
            ))
            .unwrap_or_default()
        ),
    };
    let fields: String = view
        .fields
        .iter()
        .map(|(name, label, kind)| {
            let (kind, required) = match kind.strip_prefix("optional-") {
                Some(kind) => (kind, ""),
                None => (*kind, " required"),
            };
            let control = if kind == "textarea" {
                format!(
                    "<textarea id=\"{name}\" name=\"{name}\" rows=\"8\"{required} autocomplete=\"off\" \
                     autocapitalize=\"off\" spellcheck=\"false\"></textarea>"
                )
            } else {
                format!(
                    "<input id=\"{name}\" name=\"{name}\" type=\"{kind}\"{required} autocomplete=\"off\" \
                     autocapitalize=\"off\" spellcheck=\"false\">"
                )
            };
            format!(
                "<label for=\"{name}\">{label}</label>{control}",
                label = escape(label),
            )
        })
        .collect();
    page(
        status,
        &format!("Connect {}", view.provider),
        &format!(
            "<h1>Connect your {provider} account</h1>\
             <p>The app <strong>{app}</strong> asks for access to your {provider} account so that its \
             data can be extracted on schedule. {check}What you enter is stored encrypted.</p>\
             <dl><dt>App</dt><dd>{app}</dd><dt>Provider</dt><dd>{provider} <span style=\"font-weight:400;color:#6b7587\">({ct})</span></dd></dl>\
             {error}{help}\
             <form method=\"post\" action=\"{action}\" id=\"credential-form\" autocomplete=\"off\">\
             <input type=\"hidden\" name=\"form_token\" value=\"{token}\">{fields}\
             <button id=\"connect\" type=\"submit\">Connect {provider}</button></form>\
             <p class=\"note\">You can revoke this access at any time from your {provider} account settings.</p>",
            app = escape(view.app_id),
            ct = escape(view.connector_type),
            check = if view.verified {
                format!("{provider} is asked to confirm it first. ")
            } else {
                String::new()
            },
            action = escape(&view.action),
            token = escape(view.form_token),
        ),
    )
}

/// The value of the request cookie `name`, if the client sent it.
pub fn request_cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.to_string())
}

/// The end of a signup (or a link that cannot be used): `#result` carries the outcome in
/// `data-status` for automated checks.
pub fn result_page(status: StatusCode, outcome: &str, title: &str, message: &str) -> Response {
    result_page_with_code(status, outcome, None, title, message)
}

/// A result page that also names a stable error code in `data-error`.
pub fn result_page_with_code(
    status: StatusCode,
    outcome: &str,
    code: Option<&str>,
    title: &str,
    message: &str,
) -> Response {
    let class = if outcome == "connected" { "ok" } else { "bad" };
    let label = match outcome {
        "connected" => "Connected",
        "denied" => "Not connected",
        "invalid" => "Link not valid",
        _ => "Error",
    };
    page(
        status,
        title,
        &format!(
            "<div id=\"result\" data-status=\"{outcome}\"{code}><span class=\"status {class}\">{label}</span>\
             <h1>{title}</h1><p>{message}</p></div>",
            code = code
                .map(|c| format!(" data-error=\"{}\"", escape(c)))
                .unwrap_or_default(),
            outcome = escape(outcome),
            title = escape(title),
            message = escape(message),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_neutralises_markup() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }
}
