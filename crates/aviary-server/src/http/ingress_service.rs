//! Twirp `livekit.Ingress`: bringing outside streams into rooms. Aviary takes none yet, so
//! creating one is answered `unimplemented`, naming what is missing; none ever exists, so
//! the list is empty and an ingress id is never found.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use livekit_protocol as proto;

use super::AppState;
use super::twirp::{Codec, TwirpError, answer};

/// The methods of upstream's Ingress service.
const METHODS: [&str; 4] = [
    "CreateIngress",
    "UpdateIngress",
    "ListIngress",
    "DeleteIngress",
];

pub(super) async fn ingress_service(
    State(state): State<AppState>,
    Path(method): Path<String>,
    http_method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(
        ("Ingress", &METHODS),
        (&http_method, &method),
        ("ingressAdmin", |c| c.video.ingress_admin),
        &state,
        &headers,
        |codec| dispatch(codec, &method, &body),
    )
}

fn dispatch(codec: Codec, method: &str, body: &[u8]) -> Result<Response, TwirpError> {
    match method {
        "CreateIngress" => {
            let req: proto::CreateIngressRequest = codec.decode(body)?;
            Err(TwirpError::Unimplemented(
                match proto::IngressInput::try_from(req.input_type) {
                    Ok(proto::IngressInput::WhipInput) => {
                        "WHIP ingress is not implemented in Aviary yet; publish with a LiveKit \
                         SDK meanwhile"
                    }
                    _ => {
                        "RTMP and URL ingress need transcoding, which Aviary does not do; \
                         publish over WebRTC with a LiveKit SDK instead"
                    }
                }
                .into(),
            ))
        }
        "ListIngress" => {
            let _: proto::ListIngressRequest = codec.decode(body)?;
            Ok(codec.encode(&proto::ListIngressResponse::default()))
        }
        "UpdateIngress" => {
            let req: proto::UpdateIngressRequest = codec.decode(body)?;
            Err(not_found(&req.ingress_id))
        }
        "DeleteIngress" => {
            let req: proto::DeleteIngressRequest = codec.decode(body)?;
            Err(not_found(&req.ingress_id))
        }
        other => Err(TwirpError::BadRoute(format!(
            "no handler for path \"/twirp/livekit.Ingress/{other}\""
        ))),
    }
}

fn not_found(id: &str) -> TwirpError {
    TwirpError::NotFound(format!("ingress {id:?} does not exist"))
}
