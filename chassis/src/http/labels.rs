//! Bounded label values for metrics and spans.

use std::sync::OnceLock;

/// The request method as a bounded label: one of the nine standard methods, or `_OTHER`
/// (the OpenTelemetry convention), so arbitrary methods cannot grow metric cardinality.
///
/// ```
/// assert_eq!(chassis::http::method_label(&http::Method::POST), "POST");
/// assert_eq!(chassis::http::method_label(&http::Method::from_bytes(b"BREW").unwrap()), "_OTHER");
/// ```
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// The status code as a `'static` label, without formatting a string per request; `_OTHER`
/// outside 100..=599.
///
/// ```
/// assert_eq!(chassis::http::status_label(404), "404");
/// assert_eq!(chassis::http::status_label(42), "_OTHER");
/// ```
pub fn status_label(status: u16) -> &'static str {
    static LABELS: OnceLock<Vec<String>> = OnceLock::new();
    let labels = LABELS.get_or_init(|| (100..600).map(|code: u16| code.to_string()).collect());
    match status {
        100..=599 => labels[usize::from(status - 100)].as_str(),
        _ => "_OTHER",
    }
}

/// How a request reached the service: `"https"` when its connection is TLS, `"http"`
/// otherwise. The listener puts it in each request's extensions; [`url_scheme`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrlScheme(pub &'static str);

/// The scheme of `request` (`url.scheme`): from the listener's [`UrlScheme`], or the URI's own
/// (absolute-form), `"http"` otherwise.
///
/// ```
/// let request = http::Request::get("/").body(()).unwrap();
/// assert_eq!(chassis::http::url_scheme(&request), "http");
/// ```
pub fn url_scheme<B>(request: &http::Request<B>) -> &'static str {
    if let Some(UrlScheme(scheme)) = request.extensions().get::<UrlScheme>() {
        return scheme;
    }
    match request.uri().scheme_str() {
        Some("https") => "https",
        _ => "http",
    }
}
