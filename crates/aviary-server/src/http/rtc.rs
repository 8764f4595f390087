//! `GET /rtc` (WebSocket signaling), `GET /rtc/validate`, and `/rtc/v1` (not yet: 404, so
//! that current SDKs fall back to `/rtc`).

use std::collections::HashMap;
use std::time::Instant;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use prost::Message as _;
use tracing::{debug, info, warn};

use super::{AppState, bearer};
use crate::auth::{AuthError, Claims};
use crate::room::{JoinError, JoinRequest, reconnect_request};
use crate::signal::{Frame, SessionContext, run_session};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/rtc", get(rtc))
        .route("/rtc/validate", get(validate))
        .route("/rtc/v1", get(not_yet))
        .route("/rtc/v1/validate", get(not_yet))
}

async fn not_yet() -> Response {
    (StatusCode::NOT_FOUND, "not found").into_response()
}

/// Why a connection was refused before the upgrade.
#[derive(Debug, thiserror::Error)]
enum RefuseError {
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Join(#[from] JoinError),
}

impl IntoResponse for RefuseError {
    fn into_response(self) -> Response {
        let status = match &self {
            RefuseError::Auth(_) => StatusCode::UNAUTHORIZED,
            RefuseError::Join(JoinError::RoomNotFound) => StatusCode::NOT_FOUND,
            RefuseError::Join(JoinError::RoomFull) => StatusCode::FORBIDDEN,
            RefuseError::Join(JoinError::TooLong { .. }) => StatusCode::BAD_REQUEST,
            RefuseError::Join(_) => StatusCode::UNAUTHORIZED,
        };
        (status, self.to_string()).into_response()
    }
}

fn authorize(
    state: &AppState,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Claims, RefuseError> {
    let token = params
        .get("access_token")
        .map(String::as_str)
        .or_else(|| bearer(headers))
        .unwrap_or("");
    let claims = state.keys.verify(token)?;
    state.manager.check_join(&claims)?;
    Ok(claims)
}

async fn validate(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    match authorize(&state, &params, &headers) {
        Ok(_) => (StatusCode::OK, "success").into_response(),
        Err(e) => e.into_response(),
    }
}

async fn rtc(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let claims = match authorize(&state, &params, &headers) {
        Ok(c) => c,
        Err(e) => {
            debug!("refused /rtc: {e}");
            return e.into_response();
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let client_protocol = params
        .get("protocol")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let auto_subscribe = params
        .get("auto_subscribe")
        .is_none_or(|v| !matches!(v.as_str(), "0" | "false"));
    // A resume (`reconnect=1`): this server ends a session when its WebSocket closes, so
    // there is nothing to resume; as upstream does for a participant it no longer has, the
    // client is told to join again, which the SDKs do at once.
    if params
        .get("reconnect")
        .is_some_and(|v| matches!(v.as_str(), "1" | "true"))
    {
        info!(
            identity = claims.sub,
            "resume refused: no such session; the client is to rejoin"
        );
        return ws.on_upgrade(refuse_resume);
    }
    let request = JoinRequest {
        claims,
        client_protocol,
        auto_subscribe,
    };
    // Signaling messages are small; tungstenite's 128 KiB default read buffer would be most
    // of an idle participant's memory, and it zeroes that much on each read attempt.
    ws.read_buffer_size(SIGNAL_READ_BUFFER)
        // Far above any SDP or data a client sends on signaling, far below the 64 MiB that
        // a hostile client could otherwise make the server buffer.
        .max_message_size(SIGNAL_MAX_MESSAGE)
        .max_frame_size(SIGNAL_MAX_MESSAGE)
        .write_buffer_size(0)
        .on_upgrade(move |socket| serve_socket(socket, state, request))
}

async fn refuse_resume(mut socket: WebSocket) {
    let leave = proto::SignalResponse {
        message: Some(proto::signal_response::Message::Leave(reconnect_request())),
    };
    let _ = socket
        .send(Message::Binary(leave.encode_to_vec().into()))
        .await;
    let _ = socket.send(Message::Close(None)).await;
}

/// Largest signaling message accepted.
const SIGNAL_MAX_MESSAGE: usize = 1 << 20;

/// Initial read buffer of a signaling WebSocket (it grows for larger messages).
const SIGNAL_READ_BUFFER: usize = 4096;

async fn serve_socket(socket: WebSocket, state: AppState, request: JoinRequest) {
    let (mut sink, stream) = socket.split();
    let joined = match state.manager.join(request, Instant::now()) {
        Ok(j) => j,
        Err(e) => {
            // Lost a race with another join (e.g. the room filled up after the check).
            warn!("join refused after upgrade: {e}");
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    };
    let ctx = SessionContext {
        manager: state.manager.clone(),
        worker: state.workers.get(joined.worker).clone(),
    };
    let frames_in = stream.filter_map(|m| async move {
        match m {
            Ok(Message::Binary(b)) => Some(Frame::Binary(b.to_vec())),
            Ok(Message::Text(t)) => Some(Frame::Text(t.to_string())),
            Ok(Message::Close(_)) | Err(_) => Some(Frame::Close),
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => None,
        }
    });
    // A closed stream must end the session even if the peer never sent a Close frame.
    let frames_in = Box::pin(frames_in.take_while(|f| {
        let open = *f != Frame::Close;
        async move { open }
    }));
    let frames_out = sink.with(|f: Frame| async move {
        Ok::<_, axum::Error>(match f {
            Frame::Binary(b) => Message::Binary(b.into()),
            Frame::Text(t) => Message::Text(t.into()),
            Frame::Close => Message::Close(None),
        })
    });
    run_session(frames_in, Box::pin(frames_out), joined, ctx).await;
}
