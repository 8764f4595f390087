//! `GET /rtc` (WebSocket signaling), `GET /rtc/validate`, and `/rtc/v1` (not yet: 404, so
//! that current SDKs fall back to `/rtc`).

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use tracing::{debug, info, warn};

use super::{AppState, bearer};
use crate::auth::{AuthError, Claims};
use crate::ids::ParticipantSid;
use crate::room::admission::PING_TIMEOUT_SECS;
use crate::room::{JoinError, JoinRequest, ResumeRequest, link_channel, reconnect_request};
use crate::signal::{Attachment, Frame, refuse, run_link};

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
            RefuseError::Join(JoinError::RoomClosed | JoinError::AtCapacity(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RefuseError::Join(_) => StatusCode::UNAUTHORIZED,
        };
        (status, self.to_string()).into_response()
    }
}

async fn authorize(
    state: &AppState,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    resume: bool,
) -> Result<Claims, RefuseError> {
    let token = params
        .get("access_token")
        .map(String::as_str)
        .or_else(|| bearer(headers))
        .unwrap_or("");
    crate::capture::save("access_token", &crate::capture::TOKEN, token.as_bytes());
    let claims = state.keys.verify(token)?;
    if resume {
        // A resume joins nobody new: only the grant matters here; the room decides whether
        // it still has the session.
        state.manager.check_grant(&claims)?;
    } else {
        state.manager.check_join(&claims).await?;
    }
    Ok(claims)
}

fn is_resume(params: &HashMap<String, String>) -> bool {
    params
        .get("reconnect")
        .is_some_and(|v| matches!(v.as_str(), "1" | "true"))
}

async fn validate(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    match authorize(&state, &params, &headers, is_resume(&params)).await {
        Ok(_) => (StatusCode::OK, "success").into_response(),
        Err(e) => e.into_response(),
    }
}

/// What a socket asks for once upgraded.
enum Connect {
    Join(JoinRequest),
    Resume(ResumeRequest),
}

async fn rtc(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let resume = is_resume(&params);
    let claims = match authorize(&state, &params, &headers, resume).await {
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
    let connect = if resume {
        Connect::Resume(ResumeRequest {
            claims,
            participant_sid: params
                .get("sid")
                .filter(|s| !s.is_empty())
                .map(|s| ParticipantSid::new(s.clone())),
        })
    } else {
        let client_protocol = params
            .get("protocol")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let auto_subscribe = params
            .get("auto_subscribe")
            .is_none_or(|v| !matches!(v.as_str(), "0" | "false"));
        Connect::Join(JoinRequest {
            claims,
            client_protocol,
            auto_subscribe,
        })
    };
    // Signaling messages are small; tungstenite's 128 KiB default read buffer would be most
    // of an idle participant's memory, and it zeroes that much on each read attempt.
    ws.read_buffer_size(SIGNAL_READ_BUFFER)
        // Far above any SDP or data a client sends on signaling, far below the 64 MiB that
        // a hostile client could otherwise make the server buffer.
        .max_message_size(SIGNAL_MAX_MESSAGE)
        .max_frame_size(SIGNAL_MAX_MESSAGE)
        .write_buffer_size(0)
        .on_upgrade(move |socket| serve_socket(socket, state, connect))
}

/// Largest signaling message accepted.
const SIGNAL_MAX_MESSAGE: usize = 1 << 20;

/// Initial read buffer of a signaling WebSocket (it grows for larger messages).
const SIGNAL_READ_BUFFER: usize = 4096;

async fn serve_socket(socket: WebSocket, state: AppState, connect: Connect) {
    let _running = state.links.enter();
    let (sink, stream) = socket.split();
    let frames_in = stream.filter_map(|m| async move {
        match m {
            Ok(Message::Binary(b)) => Some(Frame::Binary(b.to_vec())),
            Ok(Message::Text(t)) => Some(Frame::Text(t.to_string())),
            Ok(Message::Close(_)) | Err(_) => Some(Frame::Close),
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => None,
        }
    });
    // A closed stream must end the link even if the peer never sent a Close frame.
    let frames_in = Box::pin(frames_in.take_while(|f| {
        let open = *f != Frame::Close;
        async move { open }
    }));
    let frames_out = Box::pin(sink.with(|f: Frame| async move {
        Ok::<_, axum::Error>(match f {
            Frame::Binary(b) => Message::Binary(b.into()),
            Frame::Text(t) => Message::Text(t.into()),
            Frame::Close => Message::Close(None),
        })
    }));
    let (link, rx) = link_channel(state.manager.next_link_id());
    let id = link.id;
    let attached = match connect {
        Connect::Join(req) => match state.manager.join(req, link).await {
            Ok(a) => a,
            Err(e) => {
                // Lost a race with another join (e.g. the room filled up after the check).
                warn!("join refused after upgrade: {e}");
                let mut frames_out = frames_out;
                let _ = frames_out.send(Frame::Close).await;
                return;
            }
        },
        Connect::Resume(req) => match state.manager.resume(req, link).await {
            Ok(a) => a,
            Err(e) => {
                // As upstream: a session it no longer has is to be joined again from scratch,
                // which the SDKs do at once.
                info!("resume refused: {e}; the client is to rejoin");
                refuse(frames_out, reconnect_request()).await;
                return;
            }
        },
    };
    let (room, participant) = attached;
    let at = Attachment {
        room,
        participant,
        link: id,
        // Twice the timeout clients are told: a resuming SDK holds its pings back until
        // its connections are back, which may take a ping timeout (upstream enforces none).
        ping_timeout: Duration::from_secs(2 * PING_TIMEOUT_SECS as u64),
    };
    run_link(frames_in, frames_out, rx, at).await;
}
