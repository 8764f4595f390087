//! The HTTP surface: health check, `/rtc` signaling and the Twirp RoomService.

pub mod dev_page;
mod egress_service;
mod ingress_service;
mod rtc;
pub mod serve;
mod twirp;

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;
use tower_http::cors::{Any, CorsLayer};

use crate::auth::KeyProvider;
use crate::room::RoomManager;
use crate::signal::Links;

/// Everything a handler may need.
#[derive(Clone)]
pub struct AppState {
    /// The rooms of this node.
    pub manager: Arc<RoomManager>,
    /// API keys.
    pub keys: Arc<KeyProvider>,
    /// Signal links running.
    pub links: Links,
}

/// Builds the router (tests call this and drive it without a socket).
pub fn app(state: AppState) -> Router {
    // Browser SDKs call /rtc/validate and Twirp from the app's own origin; like livekit-server,
    // every origin is allowed (the access token is the authorization).
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods(Any)
        .allow_headers(Any)
        .expose_headers(Any);
    Router::new()
        .route("/", get(|| async { "OK" }))
        .merge(rtc::routes())
        .merge(twirp::routes())
        .layer(cors)
        .with_state(state)
}

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}
