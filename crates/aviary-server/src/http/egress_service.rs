//! Twirp `livekit.Egress`: recording and streaming out of rooms. Aviary produces no egress
//! output yet, so every start is answered `unimplemented`, naming what is missing: an app
//! learns at once rather than waiting for a file that never comes. Nothing is ever
//! started, so the list is empty and an egress id is never found.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use livekit_protocol as proto;

use super::AppState;
use super::twirp::{Codec, TwirpError, answer};

/// The methods of upstream's Egress service.
const METHODS: [&str; 10] = [
    "StartEgress",
    "StartRoomCompositeEgress",
    "StartWebEgress",
    "StartParticipantEgress",
    "StartTrackCompositeEgress",
    "StartTrackEgress",
    "UpdateLayout",
    "UpdateStream",
    "ListEgress",
    "StopEgress",
];

/// Why a start cannot be done, in the words the caller gets.
const COMPOSITING: &str = "needs compositing and encoding (a headless browser and an encoder), \
     which Aviary does not do";
const TRACKS: &str = "recording tracks without re-encoding is not implemented in Aviary yet; \
     record with a subscriber of your own meanwhile (e.g. `aviary join --subscribe-to`)";

pub(super) async fn egress_service(
    State(state): State<AppState>,
    Path(method): Path<String>,
    http_method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(
        ("Egress", &METHODS),
        (&http_method, &method),
        ("roomRecord", |c| c.video.room_record),
        &state,
        &headers,
        |codec| dispatch(codec, &method, &body),
    )
}

fn dispatch(codec: Codec, method: &str, body: &[u8]) -> Result<Response, TwirpError> {
    match method {
        "StartRoomCompositeEgress" => {
            let _: proto::RoomCompositeEgressRequest = codec.decode(body)?;
            unimplemented("room composite egress", COMPOSITING)
        }
        "StartWebEgress" => {
            let _: proto::WebEgressRequest = codec.decode(body)?;
            unimplemented("web egress", COMPOSITING)
        }
        "StartParticipantEgress" => {
            let _: proto::ParticipantEgressRequest = codec.decode(body)?;
            unimplemented("participant egress", COMPOSITING)
        }
        "StartEgress" => {
            let _: proto::StartEgressRequest = codec.decode(body)?;
            unimplemented("egress:", TRACKS)
        }
        "StartTrackCompositeEgress" => {
            let _: proto::TrackCompositeEgressRequest = codec.decode(body)?;
            unimplemented("track composite egress:", TRACKS)
        }
        "StartTrackEgress" => {
            let _: proto::TrackEgressRequest = codec.decode(body)?;
            unimplemented("track egress:", TRACKS)
        }
        "ListEgress" => {
            let _: proto::ListEgressRequest = codec.decode(body)?;
            Ok(codec.encode(&proto::ListEgressResponse::default()))
        }
        "UpdateLayout" => {
            let req: proto::UpdateLayoutRequest = codec.decode(body)?;
            Err(not_found(&req.egress_id))
        }
        "UpdateStream" => {
            let req: proto::UpdateStreamRequest = codec.decode(body)?;
            Err(not_found(&req.egress_id))
        }
        "StopEgress" => {
            let req: proto::StopEgressRequest = codec.decode(body)?;
            Err(not_found(&req.egress_id))
        }
        other => Err(TwirpError::BadRoute(format!(
            "no handler for path \"/twirp/livekit.Egress/{other}\""
        ))),
    }
}

fn unimplemented(what: &str, why: &str) -> Result<Response, TwirpError> {
    Err(TwirpError::Unimplemented(format!("{what} {why}")))
}

fn not_found(id: &str) -> TwirpError {
    TwirpError::NotFound(format!("egress {id:?} does not exist"))
}
