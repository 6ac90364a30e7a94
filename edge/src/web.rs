//! The web client at `/`: static files from `WEB_DIR` (a small page that
//! speaks Socket.IO and the REST API, as the module's front end does), the
//! stock `socket.io-client` from npm at `/vendor/socket.io.min.js`, and,
//! with `DEV_TOKENS=true` only, `POST /api/dev/token` for its sign-in.

use crate::error::ChatError;
use crate::realtime::EdgeState;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use mongodb::bson::oid::ObjectId;
use natter_shared::auth::Identity;
use natter_shared::ids::UserId;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tower_http::services::{ServeDir, ServeFile};

/// Where npm puts the client bundle, under `WEB_DIR`.
const SOCKET_IO_BUNDLE: &str = "node_modules/socket.io-client/dist/socket.io.min.js";
/// Lifetime of a development token.
const DEV_TOKEN_TTL: u64 = 24 * 3600;

/// The web client's routes, and the fallback for every other path.
pub fn router(st: &EdgeState) -> Router<Arc<EdgeState>> {
    let dir = &st.config.web_dir;
    let mut r = Router::new();
    if st.config.dev_tokens {
        tracing::warn!("DEV_TOKENS=true: POST /api/dev/token mints a token for anyone; never in production");
        r = r.route("/api/dev/token", post(dev_token));
    }
    if dir.join("index.html").is_file() {
        let not_found =
            get(|| async { ChatError::NotFound("route") }).fallback(|| async { ChatError::NotFound("route") });
        let files = ServeDir::new(dir).call_fallback_on_method_not_allowed(true).fallback(not_found);
        r.route_service("/vendor/socket.io.min.js", ServeFile::new(dir.join(SOCKET_IO_BUNDLE)))
            .route_service("/node_modules/{*rest}", get(|| async { ChatError::NotFound("route") }))
            .fallback_service(files)
    } else {
        let missing = dir.display().to_string();
        r.route("/", get(move || async move { not_installed(&missing) }))
            .fallback(|| async { ChatError::NotFound("route") })
    }
}

fn not_installed(dir: &str) -> Response {
    Html(format!(
        "<!doctype html><title>natter</title><p>The web client is not installed in <code>{}</code> \
         (<code>WEB_DIR</code>): run <code>./infra/install.sh --node</code> from the project.",
        html_escape(dir)
    ))
    .into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DevTokenRequest {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DevToken {
    user_id: String,
    token: String,
}

/// `POST /api/dev/token {userId?, name?, roles?}`: a token for that user
/// (a new id when none is given), as `natterctl token` mints.
async fn dev_token(
    State(st): State<Arc<EdgeState>>,
    body: Result<Json<DevTokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<DevToken>, ChatError> {
    let b = crate::rest::body(body)?;
    let user = match b.user_id.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(u) => u.parse::<UserId>().map_err(ChatError::InvalidPayload)?,
        None => UserId(ObjectId::new()),
    };
    if b.roles.len() > 8 || b.roles.iter().any(|r| r.is_empty() || r.len() > 32) {
        return Err(ChatError::InvalidPayload("roles: at most 8, each 1 to 32 bytes".into()));
    }
    let name = b.name.map(|n| n.trim().chars().take(64).collect::<String>()).filter(|n| !n.is_empty());
    let token = st.jwt.issue(&Identity { user, roles: b.roles, name }, DEV_TOKEN_TTL);
    Ok(Json(DevToken { user_id: user.hex(), token }))
}
