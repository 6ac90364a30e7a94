//! `/api/chat/groups...`: list, create, read, update, delete, members,
//! leave, history. Writes go through JetStream and answer once applied.

use super::{body, history, paging};
use crate::core::chat::{self, NewGroup};
use crate::error::ChatError;
use crate::realtime::EdgeState;
use crate::token::AuthUser;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use natter_shared::ids::{RoomKind, UserId};
use natter_shared::model::{GroupView, MessagePage, Permissions};
use natter_shared::v1::command::UpdateGroupCmd;
use natter_shared::v1::server::{ErrorReply, PendingReply};
use serde::Deserialize;
use std::sync::Arc;

type St = State<Arc<EdgeState>>;

use natter_shared::model::{GroupType, MAX_GROUP_NAME, MAX_GROUP_TEXT, MAX_INITIAL_MEMBERS};

#[utoipa::path(
    get,
    path = "/api/chat/groups",
    tag = "groups",
    summary = "The caller's groups, most recent activity first",
    params(("page" = Option<u64>, Query, description = "page, from 1"), ("limit" = Option<u64>, Query, description = "page size, at most 100")),
    responses((status = 200, body = Vec<GroupView>), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn list(
    State(st): St,
    AuthUser(who): AuthUser,
    RawQuery(q): RawQuery,
) -> Result<Json<Vec<GroupView>>, ChatError> {
    let (page, limit) = paging::page_limit(q.as_deref(), 20)?;
    let groups = st.store.groups_for(who.user.oid(), page, limit).await?;
    let last = st.store.messages_by_id(groups.iter().filter_map(|g| g.last_message_id)).await?;
    Ok(Json(groups.iter().map(|g| GroupView::new(g, g.last_message_id.and_then(|id| last.get(&id)))).collect()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateBody {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    avatar: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    member_ids: Vec<String>,
    #[serde(default)]
    permissions: Option<Permissions>,
}

fn check_text(name: &str, v: &Option<String>, max: usize) -> Result<(), ChatError> {
    match v {
        Some(s) if s.len() > max => Err(ChatError::InvalidPayload(format!("{name} is longer than {max} bytes"))),
        _ => Ok(()),
    }
}

fn check_name(name: &str) -> Result<String, ChatError> {
    let n = name.trim();
    if n.is_empty() || n.len() > MAX_GROUP_NAME {
        return Err(ChatError::InvalidPayload(format!("name must be 1 to {MAX_GROUP_NAME} bytes")));
    }
    Ok(n.to_string())
}

fn check_type(t: &str) -> Result<GroupType, ChatError> {
    GroupType::parse(t)
        .ok_or_else(|| ChatError::InvalidPayload("type must be department, custom or operational".into()))
}

fn user_id(s: &str) -> Result<UserId, ChatError> {
    s.parse().map_err(ChatError::InvalidPayload)
}

#[utoipa::path(
    post,
    path = "/api/chat/groups",
    tag = "groups",
    summary = "Create a group (Admin)",
    request_body = CreateBody,
    responses((status = 201, body = GroupView), (status = 202, description = "stored, not applied yet", body = PendingReply), (status = 403, description = "forbidden", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn create(
    State(st): St,
    AuthUser(who): AuthUser,
    b: Result<Json<CreateBody>, JsonRejection>,
) -> Result<(StatusCode, Json<GroupView>), ChatError> {
    let b = body(b)?;
    let name = check_name(&b.name)?;
    check_text("description", &b.description, MAX_GROUP_TEXT)?;
    check_text("avatar", &b.avatar, MAX_GROUP_TEXT)?;
    let group_type = b.kind.as_deref().map(check_type).transpose()?.unwrap_or(GroupType::Custom);
    if b.member_ids.len() > MAX_INITIAL_MEMBERS {
        return Err(ChatError::InvalidPayload(format!("at most {MAX_INITIAL_MEMBERS} members")));
    }
    let member_ids = b.member_ids.iter().map(|m| user_id(m)).collect::<Result<Vec<_>, _>>()?;
    if let Some(p) = &b.permissions {
        p.check().map_err(ChatError::InvalidPayload)?;
    }
    let g = NewGroup {
        name,
        description: b.description,
        avatar: b.avatar,
        group_type,
        member_ids,
        permissions: b.permissions.unwrap_or_default(),
    };
    let created = chat::create_group(&st, &who, g).await?;
    Ok((StatusCode::CREATED, Json(GroupView::new(&created, None))))
}

#[utoipa::path(
    get,
    path = "/api/chat/groups/{id}",
    tag = "groups",
    summary = "One group the caller may see",
    params(("id" = String, Path, description = "group id (24 hex)")),
    responses((status = 200, body = GroupView), (status = 404, description = "not_found", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn get_one(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<GroupView>, ChatError> {
    let g = chat::visible_group(&st, &who, &id).await?;
    Ok(Json(GroupView::new(&g, None)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    avatar: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    permissions: Option<Permissions>,
}

#[utoipa::path(
    patch,
    path = "/api/chat/groups/{id}",
    tag = "groups",
    summary = "Update a group (Admin)",
    params(("id" = String, Path, description = "group id (24 hex)")),
    request_body = UpdateBody,
    responses((status = 200, body = GroupView), (status = 403, description = "forbidden", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn update(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
    b: Result<Json<UpdateBody>, JsonRejection>,
) -> Result<Json<GroupView>, ChatError> {
    let b = body(b)?;
    let gid = chat::oid(&id, "groupId")?;
    let name = b.name.as_deref().map(check_name).transpose()?;
    check_text("description", &b.description, MAX_GROUP_TEXT)?;
    check_text("avatar", &b.avatar, MAX_GROUP_TEXT)?;
    let group_type = b.kind.as_deref().map(check_type).transpose()?;
    if let Some(p) = &b.permissions {
        p.check().map_err(ChatError::InvalidPayload)?;
    }
    let c = UpdateGroupCmd {
        group_id: gid.into(),
        name,
        description: b.description,
        avatar: b.avatar,
        group_type,
        permissions: b.permissions,
    };
    let g = chat::update_group(&st, &who, c).await?;
    Ok(Json(GroupView::new(&g, None)))
}

#[utoipa::path(
    delete,
    path = "/api/chat/groups/{id}",
    tag = "groups",
    summary = "Delete a group (Admin)",
    params(("id" = String, Path, description = "group id (24 hex)")),
    responses((status = 200, body = GroupView), (status = 403, description = "forbidden", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn remove(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<GroupView>, ChatError> {
    let g = chat::delete_group(&st, &who, &id).await?;
    Ok(Json(GroupView::new(&g, None)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberBody {
    user_id: String,
}

#[utoipa::path(
    post,
    path = "/api/chat/groups/{id}/members",
    tag = "groups",
    summary = "Add a member",
    params(("id" = String, Path, description = "group id (24 hex)")),
    request_body = MemberBody,
    responses((status = 201, body = GroupView), (status = 403, description = "forbidden", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn add_member(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
    b: Result<Json<MemberBody>, JsonRejection>,
) -> Result<(StatusCode, Json<GroupView>), ChatError> {
    let user = user_id(&body(b)?.user_id)?;
    let g = chat::add_member(&st, &who, &id, user).await?;
    Ok((StatusCode::CREATED, Json(GroupView::new(&g, None))))
}

#[utoipa::path(
    delete,
    path = "/api/chat/groups/{id}/members/{user_id}",
    tag = "groups",
    summary = "Remove a member",
    params(("id" = String, Path, description = "group id (24 hex)"), ("user_id" = String, Path, description = "the member's user id")),
    responses((status = 200, body = GroupView), (status = 403, description = "forbidden", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn remove_member(
    State(st): St,
    AuthUser(who): AuthUser,
    Path((id, user)): Path<(String, String)>,
) -> Result<Json<GroupView>, ChatError> {
    let g = chat::remove_member(&st, &who, &id, user_id(&user)?).await?;
    Ok(Json(GroupView::new(&g, None)))
}

#[utoipa::path(
    post,
    path = "/api/chat/groups/{id}/leave",
    tag = "groups",
    summary = "Leave a group",
    params(("id" = String, Path, description = "group id (24 hex)")),
    responses((status = 201, body = GroupView), (status = 403, description = "not_a_member", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn leave(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<GroupView>), ChatError> {
    let g = chat::leave_group(&st, &who, &id).await?;
    Ok((StatusCode::CREATED, Json(GroupView::new(&g, None))))
}

#[utoipa::path(
    get,
    path = "/api/chat/groups/{id}/messages",
    tag = "groups",
    summary = "A page of the history, oldest first within the page",
    params(("id" = String, Path, description = "group id (24 hex)"), ("page" = Option<u64>, Query, description = "page from the newest, from 1"), ("limit" = Option<u64>, Query, description = "messages per page (50), at most 100"), ("before" = Option<i64>, Query, description = "only messages with a lower seq (wins over page)")),
    responses((status = 200, body = MessagePage), (status = 403, description = "not_a_member", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn messages(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<MessagePage>, ChatError> {
    let (room, _) = chat::room(RoomKind::Group, &id)?;
    paging::history(q.as_deref())?;
    chat::require_member(&st, &who, &room).await?;
    Ok(Json(history(&st.store, &room, q.as_deref()).await?))
}
