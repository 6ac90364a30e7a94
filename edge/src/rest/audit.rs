//! `/api/chat/audit/...` and history exports, for Admins only: the audit
//! logs (filtered, paged, newest first) and streamed exports of the logs or
//! of one room's history as CSV or JSON.

use super::paging;
use crate::core::chat;
use crate::error::ChatError;
use crate::query::param;
use crate::realtime::EdgeState;
use crate::token::AuthUser;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use mongodb::bson::{DateTime, doc};
use natter_export::{self as export, Format, Row};
use natter_shared::audit::{self, AuditView, Filter};
use natter_shared::auth::Identity;
use natter_shared::ids::{RoomKind, RoomRef};
use natter_shared::v1::server::ErrorReply;
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::mpsc;

type St = State<Arc<EdgeState>>;

fn admin(who: &Identity) -> Result<(), ChatError> {
    if who.has_role("Admin") { Ok(()) } else { Err(ChatError::Forbidden("the audit trail is for Admins".into())) }
}

fn time(q: Option<&str>, name: &str) -> Result<Option<DateTime>, ChatError> {
    param(q, name)
        .map(|v| {
            DateTime::parse_rfc3339_str(&v)
                .map_err(|_| ChatError::InvalidPayload(format!("{name} must be an ISO 8601 date-time")))
        })
        .transpose()
}

pub fn filter(q: Option<&str>) -> Result<Filter, ChatError> {
    Ok(Filter {
        action: param(q, "action"),
        actor: param(q, "actor"),
        conversation_id: param(q, "conversationId"),
        group_id: param(q, "groupId"),
        target: param(q, "target"),
        from: time(q, "from")?,
        to: time(q, "to")?,
    })
}

fn format(q: Option<&str>) -> Result<Format, ChatError> {
    let f = param(q, "format").unwrap_or_else(|| "pdf".into());
    Format::parse(&f).ok_or_else(|| ChatError::InvalidPayload("format must be pdf, csv or json".into()))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogsPage {
    logs: Vec<AuditView>,
    /// Matching records counted, at most `audit::TOTAL_CAP`, reading a
    /// bounded part of the trail; `totalCapped` when there may be more.
    total: u64,
    total_capped: bool,
    page: u64,
    page_size: u64,
    has_more: bool,
}

/// `GET /api/chat/audit/logs`: newest first. `before=<chainSeq>` continues
/// after a page's last record without skipping; whatever the trail's
/// length, a page reads a bounded number of its pages.
#[utoipa::path(
    get,
    path = "/api/chat/audit/logs",
    tag = "audit",
    summary = "A page of the audit trail, newest first (Admin)",
    params(("page" = Option<u64>, Query, description = "page, from 1"), ("limit" = Option<u64>, Query, description = "page size, at most 100"), ("action" = Option<String>, Query), ("actor" = Option<String>, Query), ("conversationId" = Option<String>, Query), ("groupId" = Option<String>, Query), ("target" = Option<String>, Query), ("from" = Option<String>, Query, description = "ISO 8601"), ("to" = Option<String>, Query, description = "ISO 8601"), ("before" = Option<i64>, Query, description = "only records before this chainSeq")),
    responses((status = 200, body = LogsPage), (status = 403, description = "forbidden", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn logs(State(st): St, AuthUser(who): AuthUser, RawQuery(q): RawQuery) -> Result<Json<LogsPage>, ChatError> {
    admin(&who)?;
    let filter = filter(q.as_deref())?;
    let (page, limit) = paging::page_limit(q.as_deref(), 50)?;
    crate::core::access::record(&st, &who, "audit_logs_read", None, &[("filters", &filter.describe())]).await?;
    let before = param(q.as_deref(), "before")
        .map(|b| b.parse::<i64>().map_err(|_| ChatError::InvalidPayload("before must be a record's chainSeq".into())))
        .transpose()?;
    let window = audit::Window { filter, before };
    let listing = audit::page(&st.store.audit(), &window, (page - 1) * limit, limit).await?;
    Ok(Json(LogsPage {
        logs: listing.records.iter().map(AuditView::from).collect(),
        total: listing.total,
        total_capped: listing.capped,
        page,
        page_size: limit,
        has_more: listing.has_more,
    }))
}

/// A response whose body a task writes through a small channel.
fn streamed(
    name: &str,
    fmt: Format,
    fill: impl FnOnce(mpsc::Sender<Result<Bytes, std::io::Error>>) + Send,
) -> Response {
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    fill(tx);
    let body = Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(fmt.content_type()));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.{}\"", fmt.extension())) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

/// Runs an export into the channel; an error mid-way ends the body with an
/// error (the client sees a truncated transfer, never a silent cut).
fn spawn_export<T: Row + Send + 'static, S>(
    st: &EdgeState,
    fmt: Format,
    title: String,
    subtitle: String,
    rows: S,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) where
    S: futures::Stream<Item = Result<T, mongodb::error::Error>> + Unpin + Send + 'static,
{
    st.lifecycle.spawn(async move {
        let sink = |b: Bytes| {
            let tx = tx.clone();
            async move { tx.send(Ok(b)).await.is_ok() }
        };
        let result = match fmt {
            Format::Pdf => natter_export::pdf::write(&title, &subtitle, rows, sink).await,
            _ => export::write(fmt, rows, sink).await,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "export failed");
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
        }
    });
}

/// `GET /api/chat/audit/export?format=pdf|csv|json` with the logs' filters.
#[utoipa::path(
    get,
    path = "/api/chat/audit/export",
    tag = "audit",
    summary = "The audit trail as a file, streamed (Admin)",
    params(("format" = Option<String>, Query, description = "csv (default), json or pdf"), ("action" = Option<String>, Query), ("actor" = Option<String>, Query), ("conversationId" = Option<String>, Query), ("groupId" = Option<String>, Query), ("target" = Option<String>, Query), ("from" = Option<String>, Query, description = "ISO 8601"), ("to" = Option<String>, Query, description = "ISO 8601")),
    responses((status = 200, description = "the export, as text/csv, application/json or application/pdf"), (status = 403, description = "forbidden", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn export_logs(State(st): St, AuthUser(who): AuthUser, RawQuery(q): RawQuery) -> Result<Response, ChatError> {
    admin(&who)?;
    let f = filter(q.as_deref())?;
    let fmt = format(q.as_deref())?;
    crate::core::access::record(
        &st,
        &who,
        "audit_exported",
        None,
        &[("filters", &f.describe()), ("format", fmt.extension())],
    )
    .await?;
    let rows = export::audit_rows(&st.store, &f).await?;
    let subtitle = format!("Filters: {}", f.describe());
    Ok(streamed("audit", fmt, |tx| spawn_export(&st, fmt, "natter audit trail".into(), subtitle, rows, tx)))
}

async fn export_room(st: &EdgeState, who: &Identity, room: RoomRef, q: Option<&str>) -> Result<Response, ChatError> {
    admin(who)?;
    let fmt = format(q)?;
    let exists = match room.kind {
        RoomKind::Conversation => st.store.conversation(chat::oid(&room.id, "id")?).await?.is_some(),
        RoomKind::Group => st.store.group(chat::oid(&room.id, "id")?).await?.is_some(),
    };
    if !exists {
        return Err(ChatError::NotFound("room"));
    }
    crate::core::access::record(st, who, "history_exported", Some(&room), &[("format", fmt.extension())]).await?;
    let rows = export::history_rows(&st.store, &room).await?;
    let title = format!(
        "natter history of {} {}",
        if room.kind == RoomKind::Group { "group" } else { "conversation" },
        room.id
    );
    let name = format!("history-{}", room.id);
    Ok(streamed(&name, fmt, |tx| spawn_export(st, fmt, title, "All messages, oldest first".into(), rows, tx)))
}

/// `GET /api/chat/conversations/:id/export?format=...`
#[utoipa::path(
    get,
    path = "/api/chat/conversations/{id}/export",
    tag = "audit",
    summary = "A conversation's history as a file (Admin)",
    params(("id" = String, Path, description = "conversation id (24 hex)"), ("format" = Option<String>, Query, description = "csv (default), json or pdf")),
    responses((status = 200, description = "the export"), (status = 403, description = "forbidden", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn export_conversation(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ChatError> {
    let (room, _) = chat::room(RoomKind::Conversation, &id)?;
    export_room(&st, &who, room, q.as_deref()).await
}

/// `GET /api/chat/groups/:id/export?format=...`
#[utoipa::path(
    get,
    path = "/api/chat/groups/{id}/export",
    tag = "audit",
    summary = "A group's history as a file (Admin)",
    params(("id" = String, Path, description = "group id (24 hex)"), ("format" = Option<String>, Query, description = "csv (default), json or pdf")),
    responses((status = 200, description = "the export"), (status = 403, description = "forbidden", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn export_group(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ChatError> {
    let (room, _) = chat::room(RoomKind::Group, &id)?;
    export_room(&st, &who, room, q.as_deref()).await
}
