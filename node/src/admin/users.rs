//! Admin users over REST, in Couchbase's shape:
//! `GET /settings/rbac/users` lists them (`[{"id", "domain": "local",
//! "roles": [{"role"}]}]`), `PUT /settings/rbac/users/local/<name>` with
//! `password` and `roles` (`admin` or `ro_admin`) creates one or changes it
//! (the password may be left out to change only the role), `DELETE` the
//! same path removes one. Passwords are hashed before they reach the
//! metadata; the last full admin can be neither removed nor demoted.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::controller::{form, hash_password, on_leader, Incoming, MIN_PASSWORD_LEN};
use super::{error, json, manager_error, Admin};
use crate::access::{Role, UserRecord};
use crate::manager::Command;

/// `GET /settings/rbac/users`.
pub(super) async fn list(State(admin): State<Admin>) -> Response {
    let users: Vec<serde_json::Value> = admin
        .manager
        .as_ref()
        .map(|m| m.state().users.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(name, record)| {
            serde_json::json!({
                "id": name,
                "domain": "local",
                "roles": [{ "role": record.role.as_str() }],
            })
        })
        .collect();
    json(serde_json::Value::Array(users).to_string())
}

/// `PUT /settings/rbac/users/local/<name>`.
pub(super) async fn set(
    State(admin): State<Admin>,
    Path(user): Path<String>,
    incoming: Incoming,
) -> Response {
    on_leader(&admin, incoming, |manager, body| async move {
        let form = form(&body);
        let role = match form.get("roles").map(String::as_str) {
            Some(r) => match Role::parse(r) {
                Some(role) => role,
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("roles must be admin or ro_admin (got {r:?})"),
                    )
                }
            },
            None => return error(StatusCode::BAD_REQUEST, "roles is required"),
        };
        let existing = manager.state().users.get(&user).cloned();
        let password = match (form.get("password"), existing) {
            (Some(p), _) if p.len() < MIN_PASSWORD_LEN => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("password must have at least {MIN_PASSWORD_LEN} characters"),
                )
            }
            (Some(p), _) => match hash_password(p.clone()).await {
                Ok(hash) => hash,
                Err(response) => return response,
            },
            (None, Some(existing)) => existing.password,
            (None, None) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "password is required for a new user",
                )
            }
        };
        let record = UserRecord { role, password };
        match manager.write(Command::SetUser { name: user, record }).await {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => manager_error(e),
        }
    })
    .await
}

/// `DELETE /settings/rbac/users/local/<name>`.
pub(super) async fn delete(
    State(admin): State<Admin>,
    Path(user): Path<String>,
    incoming: Incoming,
) -> Response {
    on_leader(&admin, incoming, |manager, _body| async move {
        match manager.write(Command::DeleteUser { name: user }).await {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => manager_error(e),
        }
    })
    .await
}
