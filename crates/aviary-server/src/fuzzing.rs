//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, nightly) and for replaying
//! their corpora in the ordinary test suite (`tests/fuzz_corpora.rs`, stable): one function
//! per parser that reads client bytes, each taking arbitrary bytes, driving the real code
//! path, and panicking only if the code under test does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aviary_sfu::{Protocol, Receive, Router, RouterConfig, TransportDirection, TransportOptions};
use livekit_protocol as proto;

use crate::auth::{Claims, KeyProvider, VideoGrants};
use crate::config::{LimitConfig, RoomConfig};
use crate::ids::ParticipantSid;
use crate::room::{JoinRequest, LinkId, Now, RoomCore, RoomSettings};
use crate::signal::{Frame, decode_request};
use crate::worker::{MediaEvent, ProducedMedia};

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name (the `fuzz/fuzz_targets/<name>.rs` files and
/// `fuzz/corpus/<name>/` directories).
pub const TARGETS: &[(&str, Target)] = &[
    ("signal_frame", signal_frame),
    ("sdp", sdp),
    ("datagram", datagram),
    ("tcp_framing", tcp_framing),
    ("twirp", twirp),
    ("access_token", access_token),
    ("config", config),
];

fn now(t: Instant) -> Now {
    Now {
        at: t,
        unix_ms: 1_700_000_000_000,
    }
}

fn claims(identity: &str) -> Claims {
    Claims {
        sub: identity.into(),
        video: VideoGrants {
            room_join: true,
            room: "r".into(),
            can_publish: Some(true),
            can_subscribe: Some(true),
            can_publish_data: Some(true),
            can_update_own_metadata: Some(true),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A signaling frame (first byte: even → binary protobuf, odd → JSON text) from a
/// participant of a room where another one publishes a track, through the room core.
pub fn signal_frame(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let frame = if kind % 2 == 0 {
        Frame::Binary(rest.to_vec())
    } else {
        match std::str::from_utf8(rest) {
            Ok(s) => Frame::Text(s.to_string()),
            Err(_) => return,
        }
    };
    let Ok(Some(req)) = decode_request(&frame) else {
        return;
    };
    let t0 = Instant::now();
    let settings = RoomSettings::new(
        RoomConfig {
            enable_remote_unmute: true,
            ..Default::default()
        },
        LimitConfig::default(),
        String::new(),
        "ND_fuzz".into(),
    );
    let info = proto::Room {
        sid: "RM_fuzz".into(),
        name: "r".into(),
        ..Default::default()
    };
    let mut room = RoomCore::new(info, Arc::new(settings), 0, now(t0));
    let join = |room: &mut RoomCore, who: &str, link| {
        room.join(
            now(t0),
            JoinRequest {
                claims: claims(who),
                client_protocol: 16,
                auto_subscribe: true,
            },
            LinkId(link),
        )
    };
    let (Ok(other), Ok(me)) = (join(&mut room, "other", 1), join(&mut room, "me", 2)) else {
        return;
    };
    for p in [&other, &me] {
        room.handle_media(
            now(t0),
            MediaEvent::Connected {
                participant: p.clone(),
                direction: TransportDirection::Subscriber,
            },
        );
    }
    publish(&mut room, t0, &other);
    room.handle_signal(now(t0), &me, LinkId(2), req);
    room.handle_timeout(now(t0 + Duration::from_secs(120)));
    while let Some(out) = room.poll_output() {
        // What the room answers must encode.
        if let crate::room::Output::Signal { message, .. } = out {
            let _ = crate::signal::encode_response(&message, kind % 4 == 1);
        }
    }
}

fn publish(room: &mut RoomCore, t0: Instant, who: &ParticipantSid) {
    let req = proto::AddTrackRequest {
        cid: "mic".into(),
        r#type: proto::TrackType::Audio as i32,
        source: proto::TrackSource::Microphone as i32,
        ..Default::default()
    };
    let _ = room.add_track(who, &req);
    room.handle_media(
        now(t0),
        MediaEvent::ProducerCreated {
            participant: who.clone(),
            media: ProducedMedia {
                producer: aviary_sfu::ProducerId(1),
                cid: "mic".into(),
                kind: aviary_sfu::MediaKind::Audio,
                mid: "0".into(),
                mime: "audio/opus".into(),
            },
        },
    );
}

fn router() -> Router {
    let server: SocketAddr = ([127, 0, 0, 2], 7882).into();
    Router::new(
        RouterConfig {
            dtls_cert: Some(cert()),
            candidates: vec![(server, Protocol::Udp)],
            data_channels: crate::worker::livekit_data_channels(),
            // As served by default, so that the allocator sees hostile input too.
            congestion_control: Some(Default::default()),
        },
        Instant::now(),
    )
}

fn cert() -> aviary_sfu::DtlsCert {
    static CERT: OnceLock<aviary_sfu::DtlsCert> = OnceLock::new();
    CERT.get_or_init(|| aviary_sfu::generate_dtls_cert().expect("a DTLS certificate"))
        .clone()
}

fn drain(router: &mut Router) {
    while !matches!(router.poll_output(), aviary_sfu::Output::Timeout(_)) {}
}

/// An SDP from a client (first byte: even → a publisher's offer, odd → a subscriber's
/// answer to the router's first offer), through the router.
pub fn sdp(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Ok(sdp) = std::str::from_utf8(rest) else {
        return;
    };
    let mut r = router();
    let direction = if kind % 2 == 0 {
        TransportDirection::Publisher
    } else {
        TransportDirection::Subscriber
    };
    let t = r.create_transport(TransportOptions::new(
        direction,
        "fuzzufrag".into(),
        "fuzz-password-0123456789".into(),
    ));
    drain(&mut r);
    let _ = if direction == TransportDirection::Publisher {
        r.accept_offer(t, sdp).map(|_| ())
    } else {
        r.accept_answer(t, sdp)
    };
    drain(&mut r);
    // A second negotiation on what the first left behind.
    let _ = r.restart_ice(t);
    drain(&mut r);
}

/// A datagram from the network (STUN, DTLS, RTP, RTCP or junk), through the demux helpers
/// and a router's publisher and subscriber transports.
pub fn datagram(data: &[u8]) {
    let _ = aviary_sfu::demux::stun_local_ufrag(data);
    let _ = aviary_sfu::demux::stun_integrity_ok(data, "fuzz-password-0123456789");
    let mut r = router();
    let source: SocketAddr = ([127, 0, 0, 2], 40000).into();
    let local: SocketAddr = ([127, 0, 0, 2], 7882).into();
    let now = Instant::now();
    for direction in [
        TransportDirection::Publisher,
        TransportDirection::Subscriber,
    ] {
        let t = r.create_transport(TransportOptions::new(
            direction,
            "fuzzufrag".into(),
            "fuzz-password-0123456789".into(),
        ));
        drain(&mut r);
        if let Ok(recv) = Receive::new(Protocol::Udp, source, local, data) {
            let _ = r.handle_receive(now, t, recv);
        }
        drain(&mut r);
        r.handle_timeout(now + Duration::from_millis(100));
        drain(&mut r);
    }
}

/// Bytes on an ICE/TCP connection, split into RFC 4571 frames (in two reads).
pub fn tcp_framing(data: &[u8]) {
    let mid = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut buf = data[..mid].to_vec();
    let _ = crate::worker::take_frames(&mut buf);
    buf.extend_from_slice(&data[mid..]);
    let _ = crate::worker::take_frames(&mut buf);
}

/// A Twirp request (first byte: the method's index in RoomService's list, high bit set for
/// JSON; the rest: its body) through the whole HTTP app, authenticated as an admin.
pub fn twirp(data: &[u8]) {
    use tower::ServiceExt as _;
    const METHODS: [(&str, &str); 24] = [
        ("RoomService", "CreateRoom"),
        ("RoomService", "ListRooms"),
        ("RoomService", "DeleteRoom"),
        ("RoomService", "ListParticipants"),
        ("RoomService", "GetParticipant"),
        ("RoomService", "RemoveParticipant"),
        ("RoomService", "UpdateParticipant"),
        ("RoomService", "UpdateRoomMetadata"),
        ("RoomService", "MutePublishedTrack"),
        ("RoomService", "UpdateSubscriptions"),
        ("RoomService", "SendData"),
        ("RoomService", "Nope"),
        ("Egress", "StartEgress"),
        ("Egress", "StartRoomCompositeEgress"),
        ("Egress", "StartTrackCompositeEgress"),
        ("Egress", "StartTrackEgress"),
        ("Egress", "UpdateLayout"),
        ("Egress", "UpdateStream"),
        ("Egress", "ListEgress"),
        ("Egress", "StopEgress"),
        ("Ingress", "CreateIngress"),
        ("Ingress", "UpdateIngress"),
        ("Ingress", "ListIngress"),
        ("Ingress", "DeleteIngress"),
    ];
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let (service, method) = METHODS[(sel & 0x7f) as usize % METHODS.len()];
    let content_type = if sel & 0x80 == 0 {
        "application/protobuf"
    } else {
        "application/json"
    };
    let (app, token) = twirp_app();
    let req = axum::http::Request::post(format!("/twirp/livekit.{service}/{method}"))
        .header("content-type", content_type)
        .header("authorization", format!("Bearer {token}"))
        .body(axum::body::Body::from(body.to_vec()))
        .expect("a request");
    runtime().block_on(async {
        let _ = app.oneshot(req).await;
    });
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

fn twirp_app() -> (axum::Router, String) {
    const SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret";
    let _guard = runtime().enter();
    let (worker, _rx) = crate::worker::WorkerHandle::detached();
    let manager = crate::room::RoomManager::new(
        RoomSettings::new(
            RoomConfig::default(),
            LimitConfig::default(),
            String::new(),
            "ND_fuzz".into(),
        ),
        vec![worker],
        Vec::new(),
    );
    let keys = BTreeMap::from([("fuzzkey".to_string(), SECRET.to_string())]);
    let state = crate::http::AppState {
        manager: Arc::new(manager),
        keys: Arc::new(KeyProvider::new(keys)),
        links: crate::signal::Links::default(),
    };
    let token = livekit_api::access_token::AccessToken::with_api_key("fuzzkey", SECRET)
        .with_grants(livekit_api::access_token::VideoGrants {
            room_create: true,
            room_list: true,
            room_admin: true,
            room_record: true,
            ingress_admin: true,
            room: "r".into(),
            ..Default::default()
        })
        .to_jwt()
        .expect("a token");
    (crate::http::app(state), token)
}

/// An access token as a client sends it.
pub fn access_token(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let keys = BTreeMap::from([("devkey".to_string(), "secret".to_string())]);
    let _ = KeyProvider::new(keys).verify(token);
    let _ = Claims::from_unverified(token);
}

/// A config file or body, and a `--keys` value.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::config::parse_yaml(text, "fuzz");
    let _ = crate::config::parse_keys(text, "fuzz");
}
