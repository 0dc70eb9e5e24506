//! The dashboard: one HTML page, its stylesheet and its script, compiled into the binary (no
//! CDN, no build step). The script renders the summary pushed over `/api/v1/stream` and pages
//! through `/api/v1/hosts` and `/api/v1/queues`; it never loads more than one page of a list.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const HTML: &str = include_str!("assets/dashboard.html");
const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");

/// Only this origin's own assets and API (no inline script, no third party).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `/`.
pub(crate) async fn dashboard() -> Response {
    asset("text/html; charset=utf-8", HTML)
}

/// `/assets/dashboard.css`.
pub(crate) async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

/// `/assets/dashboard.js`.
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

/// The page's weight: HTML, CSS and script, in bytes (uncompressed).
pub const fn weight() -> usize {
    HTML.len() + CSS.len() + JS.len()
}
