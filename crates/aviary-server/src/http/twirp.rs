//! Twirp RoomService: `POST /twirp/livekit.RoomService/<Method>`, protobuf or JSON bodies;
//! the front door (routing errors, content type, authentication) shared with the Egress
//! and Ingress services.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::Method;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use livekit_protocol as proto;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{AppState, bearer};
use crate::auth::Claims;
use crate::room::ServiceError;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/twirp/livekit.RoomService/{method}", any(room_service))
        .route(
            "/twirp/livekit.Egress/{method}",
            any(super::egress_service::egress_service),
        )
        .route(
            "/twirp/livekit.Ingress/{method}",
            any(super::ingress_service::ingress_service),
        )
}

/// A Twirp error: `{"code": ..., "msg": ...}` with the matching HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum TwirpError {
    /// No or bad credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Credentials without the needed grant.
    #[error("{0}")]
    PermissionDenied(String),
    /// No such room, participant or track.
    #[error("{0}")]
    NotFound(String),
    /// A field is wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// The body did not decode.
    #[error("{0}")]
    Malformed(String),
    /// No such method, or an unsupported content type.
    #[error("{0}")]
    BadRoute(String),
    /// The server cannot take it now.
    #[error("{0}")]
    Unavailable(String),
    /// The method exists but this server does not do what it asks (yet).
    #[error("{0}")]
    Unimplemented(String),
}

impl TwirpError {
    fn code(&self) -> (&'static str, StatusCode) {
        match self {
            TwirpError::Unauthenticated(_) => ("unauthenticated", StatusCode::UNAUTHORIZED),
            TwirpError::PermissionDenied(_) => ("permission_denied", StatusCode::FORBIDDEN),
            TwirpError::NotFound(_) => ("not_found", StatusCode::NOT_FOUND),
            TwirpError::InvalidArgument(_) => ("invalid_argument", StatusCode::BAD_REQUEST),
            TwirpError::Malformed(_) => ("malformed", StatusCode::BAD_REQUEST),
            TwirpError::BadRoute(_) => ("bad_route", StatusCode::NOT_FOUND),
            TwirpError::Unavailable(_) => ("unavailable", StatusCode::SERVICE_UNAVAILABLE),
            TwirpError::Unimplemented(_) => ("unimplemented", StatusCode::NOT_IMPLEMENTED),
        }
    }
}

impl IntoResponse for TwirpError {
    fn into_response(self) -> Response {
        let (code, status) = self.code();
        let body = serde_json::json!({ "code": code, "msg": self.to_string() });
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

impl From<ServiceError> for TwirpError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::RoomNotFound(_)
            | ServiceError::ParticipantNotFound(_)
            | ServiceError::TrackNotFound(_) => TwirpError::NotFound(e.to_string()),
            ServiceError::InvalidArgument(m)
            | ServiceError::Unsupported(m)
            | ServiceError::LimitExceeded(m) => TwirpError::InvalidArgument(m),
            ServiceError::PermissionDenied(m) => TwirpError::PermissionDenied(m),
            ServiceError::ShuttingDown => TwirpError::Unavailable(e.to_string()),
        }
    }
}

#[derive(Clone, Copy)]
pub(super) enum Codec {
    Json,
    Protobuf,
}

impl Codec {
    pub(super) fn from_headers(headers: &HeaderMap) -> Result<Self, TwirpError> {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if ct.starts_with("application/json") {
            Ok(Codec::Json)
        } else if ct.starts_with("application/protobuf") || ct.starts_with("application/x-protobuf")
        {
            Ok(Codec::Protobuf)
        } else {
            Err(TwirpError::BadRoute(format!(
                "unexpected Content-Type: {ct:?}"
            )))
        }
    }

    pub(super) fn decode<T: prost::Message + Default + DeserializeOwned>(
        self,
        body: &[u8],
    ) -> Result<T, TwirpError> {
        match self {
            Codec::Protobuf => T::decode(body).map_err(|e| {
                TwirpError::Malformed(format!("the request could not be decoded: {e}"))
            }),
            Codec::Json if body.is_empty() => Ok(T::default()),
            Codec::Json => serde_json::from_slice(body).map_err(|e| {
                TwirpError::Malformed(format!("the json request could not be decoded: {e}"))
            }),
        }
    }

    pub(super) fn encode<T: prost::Message + Serialize>(self, msg: &T) -> Response {
        match self {
            Codec::Protobuf => (
                [(header::CONTENT_TYPE, "application/protobuf")],
                msg.encode_to_vec(),
            )
                .into_response(),
            Codec::Json => (
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::to_string(msg).unwrap_or_default(),
            )
                .into_response(),
        }
    }
}

/// The grant a method needs.
enum Needs<'a> {
    Create,
    List,
    Admin(&'a str),
}

fn require(claims: &Claims, needs: Needs<'_>) -> Result<(), TwirpError> {
    let ok = match needs {
        Needs::Create => claims.video.room_create,
        Needs::List => claims.video.room_list,
        Needs::Admin(room) => claims.video.room_admin && claims.video.room == room,
    };
    if ok {
        Ok(())
    } else {
        Err(TwirpError::PermissionDenied("permissions denied".into()))
    }
}

/// The RoomService methods this server answers.
const METHODS: [&str; 11] = [
    "CreateRoom",
    "ListRooms",
    "DeleteRoom",
    "ListParticipants",
    "GetParticipant",
    "RemoveParticipant",
    "UpdateParticipant",
    "UpdateRoomMetadata",
    "MutePublishedTrack",
    "UpdateSubscriptions",
    "SendData",
];

async fn room_service(
    State(state): State<AppState>,
    Path(method): Path<String>,
    http_method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(e) = route("RoomService", &METHODS, &http_method, &method) {
        return e.into_response();
    }
    match dispatch(&state, &method, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Routing errors first, as Twirp servers do: they say nothing about the caller.
fn route(
    service: &str,
    methods: &[&str],
    http_method: &Method,
    method: &str,
) -> Result<(), TwirpError> {
    if http_method != Method::POST {
        return Err(TwirpError::BadRoute(format!(
            "unsupported method {http_method} (only POST is allowed)"
        )));
    }
    if !methods.contains(&method) {
        return Err(TwirpError::BadRoute(format!(
            "no handler for path \"/twirp/livekit.{service}/{method}\""
        )));
    }
    Ok(())
}

/// The grant every method of a service needs: its name in tokens, and the check.
pub(super) type Grant = (&'static str, fn(&Claims) -> bool);

/// A Twirp service's answer: routing errors first, then the content type, the caller's
/// claims and `grant`, then `handle`.
pub(super) fn answer(
    (service, methods): (&str, &[&str]),
    (http_method, method): (&Method, &str),
    (grant, granted): Grant,
    state: &AppState,
    headers: &HeaderMap,
    handle: impl FnOnce(Codec) -> Result<Response, TwirpError>,
) -> Response {
    route(service, methods, http_method, method)
        .and_then(|()| {
            let codec = Codec::from_headers(headers)?;
            if !granted(&authenticate(state, headers)?) {
                return Err(TwirpError::PermissionDenied(format!(
                    "permissions denied: {service} needs the {grant} grant"
                )));
            }
            handle(codec)
        })
        .unwrap_or_else(IntoResponse::into_response)
}

/// The caller's claims, from its bearer token.
pub(super) fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Claims, TwirpError> {
    let token = bearer(headers)
        .ok_or_else(|| TwirpError::Unauthenticated("no authorization header".into()))?;
    state
        .keys
        .verify(token)
        .map_err(|e| TwirpError::Unauthenticated(e.to_string()))
}

async fn dispatch(
    state: &AppState,
    method: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, TwirpError> {
    let codec = Codec::from_headers(headers)?;
    if let Some(i) = METHODS.iter().position(|m| *m == method) {
        let json = matches!(codec, Codec::Json);
        let mut seed = vec![i as u8 | if json { 0x80 } else { 0 }];
        seed.extend_from_slice(body);
        crate::capture::save("twirp", &crate::capture::TWIRP, &seed);
    }
    let claims = authenticate(state, headers)?;
    let m = &state.manager;
    match method {
        "CreateRoom" => {
            let req: proto::CreateRoomRequest = codec.decode(body)?;
            require(&claims, Needs::Create)?;
            Ok(codec.encode(&m.create_room(&req)?))
        }
        "ListRooms" => {
            let req: proto::ListRoomsRequest = codec.decode(body)?;
            require(&claims, Needs::List)?;
            Ok(codec.encode(&proto::ListRoomsResponse {
                rooms: m.list_rooms(&req.names),
            }))
        }
        "DeleteRoom" => {
            let req: proto::DeleteRoomRequest = codec.decode(body)?;
            require(&claims, Needs::Create)?;
            m.delete_room(&req.room).await?;
            Ok(codec.encode(&proto::DeleteRoomResponse {}))
        }
        "ListParticipants" => {
            let req: proto::ListParticipantsRequest = codec.decode(body)?;
            require(&claims, Needs::Admin(&req.room))?;
            Ok(codec.encode(&proto::ListParticipantsResponse {
                participants: m.list_participants(&req.room).await?,
            }))
        }
        "GetParticipant" => {
            let req: proto::RoomParticipantIdentity = codec.decode(body)?;
            require(&claims, Needs::Admin(&req.room))?;
            Ok(codec.encode(&m.get_participant(&req.room, &req.identity).await?))
        }
        "RemoveParticipant" => {
            let req: proto::RoomParticipantIdentity = codec.decode(body)?;
            require(&claims, Needs::Admin(&req.room))?;
            m.remove_participant(&req.room, &req.identity).await?;
            Ok(codec.encode(&proto::RemoveParticipantResponse {}))
        }
        "UpdateParticipant" => {
            let req: proto::UpdateParticipantRequest = codec.decode(body)?;
            require(&claims, Needs::Admin(&req.room))?;
            Ok(codec.encode(&m.update_participant(req).await?))
        }
        "UpdateRoomMetadata" => {
            let req: proto::UpdateRoomMetadataRequest = codec.decode(body)?;
            require(&claims, Needs::Admin(&req.room))?;
            Ok(codec.encode(
                &m.update_room_metadata(&req.room, req.metadata.clone())
                    .await?,
            ))
        }
        "MutePublishedTrack" => {
            let req: proto::MuteRoomTrackRequest = codec.decode(body)?;
            require(&claims, Needs::Admin(&req.room))?;
            let track = m.mute_published_track(req).await?;
            Ok(codec.encode(&proto::MuteRoomTrackResponse { track: Some(track) }))
        }
        "UpdateSubscriptions" => {
            let req: proto::UpdateSubscriptionsRequest = codec.decode(body)?;
            require(&claims, Needs::Admin(&req.room))?;
            m.update_subscriptions(req).await?;
            Ok(codec.encode(&proto::UpdateSubscriptionsResponse {}))
        }
        "SendData" => {
            let req: proto::SendDataRequest = codec.decode(body)?;
            require(&claims, Needs::Admin(&req.room))?;
            if req.data.is_empty() {
                return Err(TwirpError::InvalidArgument("data is required".into()));
            }
            m.send_data(req).await?;
            Ok(codec.encode(&proto::SendDataResponse {}))
        }
        other => Err(TwirpError::BadRoute(format!(
            "no handler for path \"/twirp/livekit.RoomService/{other}\""
        ))),
    }
}
