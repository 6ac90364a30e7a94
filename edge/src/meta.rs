//! Request metadata for the audit trail, carried in a task-local while a
//! request is handled, so every command it stores records how it came in
//! (transport, request id, user agent, origin, route) without threading it
//! through every call. Tokens are never part of it.

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use natter_shared::v1::command::RequestMeta;
use tracing::Instrument;

tokio::task_local! {
    static REQUEST: RequestMeta;
}

/// The metadata of the request being handled, if any.
pub fn current() -> Option<RequestMeta> {
    REQUEST.try_with(|m| m.clone()).ok()
}

fn header(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(|s| s.chars().take(256).collect())
}

/// The metadata of a WebSocket handshake, completed per request later.
pub fn from_handshake(headers: &HeaderMap) -> RequestMeta {
    RequestMeta {
        via: "ws".into(),
        user_agent: header(headers, header::USER_AGENT),
        origin: header(headers, header::ORIGIN),
        ..Default::default()
    }
}

/// The client's address: the listener's peer, or, behind a proxy the edge
/// is told to trust (`TRUST_FORWARDED_FOR`), the last address that proxy
/// appended to `X-Forwarded-For` (the one it saw; earlier entries are the
/// client's word). The per-address limits count by it.
pub fn client_ip(req: &axum::extract::Request, trust_forwarded: bool) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    let forwarded = || {
        let v = req.headers().get_all("x-forwarded-for").iter().next_back()?.to_str().ok()?;
        v.rsplit(',').next()?.trim().parse::<IpAddr>().ok()
    };
    if trust_forwarded && let Some(ip) = forwarded() {
        return ip;
    }
    req.extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// Runs `fut` with `meta` as the current request's metadata.
pub async fn scope<F: std::future::Future>(meta: RequestMeta, fut: F) -> F::Output {
    REQUEST.scope(meta, fut).await
}

/// Axum middleware for the REST routes.
pub async fn rest(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| format!("{} {}", req.method(), p.as_str()));
    let given = natter_shared::v1::command::caller_trace_id(
        req.headers().get("traceparent").and_then(|v| v.to_str().ok()),
        req.headers().get("x-request-id").and_then(|v| v.to_str().ok()),
    );
    let trace_id = given.unwrap_or_else(natter_shared::v1::command::new_trace_id);
    let span = tracing::info_span!("request", trace_id = %trace_id, route = route.as_deref().unwrap_or(""));
    let meta = RequestMeta {
        via: "rest".into(),
        user_agent: header(req.headers(), header::USER_AGENT),
        origin: header(req.headers(), header::ORIGIN),
        route,
        trace_id: Some(trace_id.clone()),
        ..Default::default()
    };
    let mut resp = scope(meta, next.run(req)).instrument(span).await;
    if let Ok(v) = axum::http::HeaderValue::from_str(&trace_id) {
        resp.headers_mut().insert("x-trace-id", v);
    }
    resp
}

/// The `Origin` check of a WebSocket or Socket.IO handshake: absent (not a
/// browser), exactly one of `allowed`, or the edge's own (the page came
/// from this host: the web client it serves at `/`).
pub fn origin_allowed(allowed: &[String], headers: &axum::http::HeaderMap) -> bool {
    match headers.get(axum::http::header::ORIGIN) {
        None => true,
        Some(o) => {
            let o = o.to_str().unwrap_or("").trim_end_matches('/');
            let own = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).is_some_and(|host| {
                o.strip_prefix("http://").or_else(|| o.strip_prefix("https://")).is_some_and(|h| h == host)
            });
            own || allowed.iter().any(|u| u == o)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;
    use axum::http::{HeaderMap, HeaderValue, header};

    fn headers(origin: &str, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        h
    }

    #[test]
    fn listed_and_own_origins_only() {
        let allowed = vec!["http://localhost:3000".to_string()];
        assert!(origin_allowed(&allowed, &headers("http://localhost:3000", "chat.example:8080")));
        assert!(origin_allowed(&allowed, &headers("http://chat.example:8080", "chat.example:8080")));
        assert!(origin_allowed(&allowed, &headers("https://chat.example", "chat.example")));
        assert!(!origin_allowed(&allowed, &headers("http://evil.example", "chat.example:8080")));
        assert!(!origin_allowed(&allowed, &headers("http://chat.example:8080.evil", "chat.example:8080")));
        assert!(origin_allowed(&allowed, &HeaderMap::new()), "not a browser");
    }
}
