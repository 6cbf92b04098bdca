//! `/admin/keys`: inbound API keys at run time. `GET` lists names and settings (never keys or
//! digests), `POST` adds an entry (the `auth.keys` shape) → 201, `DELETE /admin/keys/{name}`
//! revokes at once. Keys added here last until the next reload or restart, which load the
//! config file's keys.

use std::sync::Arc;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::commands::{read_json, Answer};
use super::AdminError;
use crate::app::App;
use crate::config::schema::ApiKeyConfig;
use crate::gate::keys::key_spec;

pub(super) fn list(app: &App) -> Answer {
    let keys = &app.gate.keys;
    Ok((
        StatusCode::OK,
        "keys".into(),
        json!({"enabled": keys.enabled(), "keys": keys.list()}),
    ))
}

pub(super) async fn add(app: &Arc<App>, req: Request<Incoming>) -> Answer {
    let entry: ApiKeyConfig = read_json(req).await?;
    let spec = key_spec(&entry).map_err(AdminError::bad_request)?;
    let name = spec.name.to_string();
    app.gate.keys.add(spec).map_err(AdminError::conflict)?;
    let shown = app
        .gate
        .keys
        .get(&name)
        .map(|k| k.describe())
        .unwrap_or_default();
    Ok((StatusCode::CREATED, name, shown))
}

pub(super) fn remove(app: &App, name: &str) -> Answer {
    if app.gate.keys.remove(name) {
        Ok((StatusCode::OK, name.to_string(), json!({"removed": name})))
    } else {
        Err(AdminError::not_found(format!("no key named {name:?}")))
    }
}
