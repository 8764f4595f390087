//! The load tester: many simulated participants in one process. Each is a tokio task with
//! its own signaling connection, UDP socket and str0m `Rtc` (RTP mode, so nothing is
//! depacketized); a few runtime threads carry them all.
//!
//! Phases: subscribers join; publishers join and send warm-up packets until every
//! subscriber has seen every track (or a deadline passes); then the measured run, whose
//! packets carry their send time so subscribers can measure delay and count loss.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use livekit_protocol as proto;
use livekit_protocol::signal_request::Message as Req;
use livekit_protocol::signal_response::Message as Resp;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use crate::ClientError;
use crate::janus::{Janus, JanusEvent};
use crate::mediasoup::{Mediasoup, MediasoupEvent};
use crate::signal::{Signal, candidate_line};

/// Marks our synthetic payloads.
const MAGIC: &[u8; 4] = b"AVLT";
/// Where the marked part of a video payload starts: after a VP8 payload descriptor (one
/// byte) and the 10-byte header of a VP8 frame, so that servers which look into VP8 (for
/// keyframes, as mediasoup does before it starts a consumer) see real frames.
const VP8_HEADER: usize = 11;
/// A VP8 keyframe's first packet: descriptor (S=1, partition 0), frame tag (key frame,
/// shown), start code, 640x360.
const VP8_KEYFRAME: [u8; VP8_HEADER] = [
    0x10, 0x10, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01,
];
/// An inter frame's first packet: the frame tag says not a key frame.
const VP8_INTERFRAME: [u8; VP8_HEADER] = [0x10, 0x11, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0];
/// A frame's later packets: descriptor without the start bit.
const VP8_CONTINUATION: [u8; VP8_HEADER] = [0; VP8_HEADER];
/// Bytes of payload per video packet.
const VIDEO_PAYLOAD: usize = 1100;
/// Bytes of payload per audio packet (20 ms of Opus at ~32 kbps).
const AUDIO_PAYLOAD: usize = 80;
const VIDEO_FPS: u64 = 30;
/// Simultaneous joins in flight.
const JOIN_CONCURRENCY: usize = 32;
/// How long warm-up may take before the measured run starts anyway.
const WARMUP_LIMIT: Duration = Duration::from_secs(20);

/// The server under load.
#[derive(Clone)]
pub enum Target {
    /// A LiveKit-protocol server (Aviary, livekit-server).
    Livekit {
        /// Server URL.
        url: String,
        /// Makes a join token for an identity.
        token: Arc<dyn Fn(&str) -> String + Send + Sync>,
    },
    /// Janus's VideoRoom plugin, over Janus's WebSocket API.
    Janus {
        /// WebSocket URL of the Janus API.
        url: String,
        /// VideoRoom room number (created when missing).
        room: u64,
    },
    /// A mediasoup worker behind bench/mediasoup/server.mjs.
    Mediasoup {
        /// WebSocket URL of that server.
        url: String,
        /// Room name.
        room: String,
    },
}

impl Target {
    fn url(&self) -> &str {
        match self {
            Target::Livekit { url, .. }
            | Target::Janus { url, .. }
            | Target::Mediasoup { url, .. } => url,
        }
    }
}

/// What to simulate.
#[derive(Clone)]
pub struct LoadOptions {
    /// The server.
    pub target: Target,
    /// Local address for the media sockets; by default the one that routes to the server.
    pub local_ip: Option<IpAddr>,
    /// Publishers of one video track each.
    pub video_publishers: usize,
    /// Publishers of one audio track each.
    pub audio_publishers: usize,
    /// Subscribers (subscribe to everything).
    pub subscribers: usize,
    /// Length of the measured run.
    pub duration: Duration,
    /// Bits per second of each video track.
    pub video_bitrate: u64,
}

/// One track's counts.
#[derive(Debug, Clone)]
pub struct TrackReport {
    /// "video" or "audio".
    pub kind: &'static str,
    /// The publisher's identity.
    pub publisher: String,
    /// Packets sent in the measured run.
    pub packets_sent: u64,
    /// Packets received by all subscribers together in the measured run.
    pub packets_received: u64,
}

/// The results.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Subscribers that connected.
    pub subscribers_connected: usize,
    /// Join time (WebSocket open to peer connection up), p50 and p99, ms.
    pub join_ms_p50: f64,
    /// See `join_ms_p50`.
    pub join_ms_p99: f64,
    /// WebSocket open to the first media packet, p50 and p99, ms.
    pub first_media_ms_p50: f64,
    /// See `first_media_ms_p50`.
    pub first_media_ms_p99: f64,
    /// Per track.
    pub tracks: Vec<TrackReport>,
    /// All packets received by all subscribers in the measured run.
    pub packets_received: u64,
    /// 1 − received / (sent × subscribers), in percent.
    pub loss_percent: f64,
    /// Average bitrate received per subscriber, bits/s.
    pub bitrate_per_subscriber: f64,
    /// Send-to-receive delay, p50 and p99, ms.
    pub delay_ms_p50: f64,
    /// See `delay_ms_p50`.
    pub delay_ms_p99: f64,
    /// Length of the measured run, s.
    pub seconds: f64,
}

/// Live counters, shared by every task (and read by the progress display).
#[derive(Default)]
pub struct Progress {
    /// Subscribers whose peer connection is up.
    pub subscribers_connected: AtomicUsize,
    /// Measured packets received.
    pub packets_received: AtomicU64,
    /// Measured bytes received.
    pub bytes_received: AtomicU64,
    /// 0 joining, 1 warm-up, 2 measuring, 3 draining (in-flight packets), 4 leaving.
    pub phase: AtomicUsize,
    /// The first error any simulated participant ended with, naming it.
    pub first_error: std::sync::OnceLock<String>,
    /// Publishers and subscribers that ended with an error.
    pub publishers_failed: AtomicUsize,
    /// See `publishers_failed`.
    pub subscribers_failed: AtomicUsize,
}

impl Progress {
    fn failed(&self, identity: &str, e: &ClientError, publisher: bool) {
        let _ = self.first_error.set(format!("{identity}: {e}"));
        let count = if publisher {
            &self.publishers_failed
        } else {
            &self.subscribers_failed
        };
        count.fetch_add(1, Ordering::Relaxed);
    }

    fn first_error(&self) -> String {
        self.first_error
            .get()
            .cloned()
            .unwrap_or_else(|| "no error was reported".into())
    }
}

struct Shared {
    base: Instant,
    progress: Arc<Progress>,
    /// Per track: packets sent in the measured run.
    sent: Vec<AtomicU64>,
    /// Per subscriber: how many tracks it has seen a packet of.
    seen_all: AtomicUsize,
    tracks: usize,
    measuring: AtomicBool,
    stop: AtomicBool,
    join_ms: Mutex<Vec<f64>>,
    first_media_ms: Mutex<Vec<f64>>,
    /// Publishers whose peer connection is up.
    publishers_connected: AtomicUsize,
    /// Janus feed ids of the publishers, once joined.
    feeds: Mutex<Vec<u64>>,
    delays_us: Mutex<Vec<u32>>,
    received: Mutex<Vec<u64>>,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let idx = ((v.len() - 1) as f64 * p).round() as usize;
    v[idx.min(v.len() - 1)]
}

fn new_rtc(local: SocketAddr) -> Result<Rtc, ClientError> {
    let mut rtc = Rtc::builder().set_rtp_mode(true).build(Instant::now());
    let c = Candidate::host(local, "udp").map_err(|e| ClientError::Rtc(e.to_string()))?;
    rtc.add_local_candidate(c);
    Ok(rtc)
}

async fn local_socket(url: &str, ip: Option<IpAddr>) -> Result<UdpSocket, ClientError> {
    if let Some(ip) = ip {
        return Ok(UdpSocket::bind((ip, 0)).await?);
    }
    let base = crate::signal::ws_base(url)?;
    let authority = base
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("");
    let addr = tokio::net::lookup_host(if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    })
    .await?
    .next()
    .ok_or_else(|| ClientError::BadUrl(url.into()))?;
    // A connected UDP socket learns the route's source address without sending anything.
    let probe = std::net::UdpSocket::bind(if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    probe.connect((addr.ip(), 9))?;
    let ip = probe.local_addr()?.ip();
    Ok(UdpSocket::bind((ip, 0)).await?)
}

fn rtc_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Rtc(e.to_string())
}

/// Drains an `Rtc`: sends its datagrams, returns its events and next timeout.
fn drain(
    rtc: &mut Rtc,
    socket: &UdpSocket,
    events: &mut Vec<Event>,
) -> Result<Instant, ClientError> {
    loop {
        match rtc.poll_output().map_err(rtc_err)? {
            Output::Timeout(t) => return Ok(t),
            Output::Transmit(t) => {
                let _ = socket.try_send_to(&t.contents, t.destination);
            }
            Output::Event(e) => events.push(e),
        }
    }
}

/// Runs the load test; `progress` can be watched while it runs.
pub async fn run(options: LoadOptions, progress: Arc<Progress>) -> Result<LoadReport, ClientError> {
    let tracks = options.video_publishers + options.audio_publishers;
    let shared = Arc::new(Shared {
        base: Instant::now(),
        progress: progress.clone(),
        sent: (0..tracks).map(|_| AtomicU64::new(0)).collect(),
        seen_all: AtomicUsize::new(0),
        tracks,
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        join_ms: Mutex::new(Vec::new()),
        first_media_ms: Mutex::new(Vec::new()),
        publishers_connected: AtomicUsize::new(0),
        feeds: Mutex::new(Vec::new()),
        delays_us: Mutex::new(Vec::new()),
        received: Mutex::new(vec![0; tracks]),
    });
    // Publishers first (Janus subscribers name the feeds they want), then subscribers, whose
    // join time runs to the first media packet as well as to the connection.
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..tracks {
        let kind = if t < options.video_publishers {
            MediaKind::Video
        } else {
            MediaKind::Audio
        };
        let (o, s) = (options.clone(), shared.clone());
        tasks.spawn(async move {
            let r = publisher(t, kind, o, s.clone()).await;
            if let Err(e) = &r {
                s.progress.failed(&format!("load-pub-{t}"), e, true);
            }
            r
        });
    }
    let published_by = Instant::now() + Duration::from_secs(20);
    while shared.publishers_connected.load(Ordering::Relaxed) < tracks
        && Instant::now() < published_by
    {
        if tracks > 0 && progress.publishers_failed.load(Ordering::Relaxed) == tracks {
            shared.stop.store(true, Ordering::Release);
            return Err(ClientError::NoneConnected {
                who: "publisher",
                first_error: progress.first_error(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gate = Arc::new(Semaphore::new(JOIN_CONCURRENCY));
    for i in 0..options.subscribers {
        let (o, s, g) = (options.clone(), shared.clone(), gate.clone());
        tasks.spawn(async move {
            let r = subscriber(i, o, s.clone(), g).await;
            if let Err(e) = &r {
                s.progress.failed(&format!("load-sub-{i}"), e, false);
            }
            r
        });
    }
    let joined_by = Instant::now() + Duration::from_secs(30 + options.subscribers as u64 / 20);
    while progress.subscribers_connected.load(Ordering::Relaxed) < options.subscribers
        && Instant::now() < joined_by
    {
        if progress.subscribers_failed.load(Ordering::Relaxed) == options.subscribers {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if options.subscribers > 0 && progress.subscribers_connected.load(Ordering::Relaxed) == 0 {
        shared.stop.store(true, Ordering::Release);
        return Err(ClientError::NoneConnected {
            who: "subscriber",
            first_error: progress.first_error(),
        });
    }
    progress.phase.store(1, Ordering::Relaxed);
    let warm_until = Instant::now() + WARMUP_LIMIT;
    let connected = progress.subscribers_connected.load(Ordering::Relaxed);
    while shared.seen_all.load(Ordering::Relaxed) < connected && Instant::now() < warm_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shared.measuring.store(true, Ordering::Release);
    progress.phase.store(2, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(options.duration).await;
    shared.measuring.store(false, Ordering::Release);
    let seconds = started.elapsed().as_secs_f64();
    progress.phase.store(3, Ordering::Relaxed);
    // Packets still in flight count; then everyone leaves.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shared.stop.store(true, Ordering::Release);
    progress.phase.store(4, Ordering::Relaxed);
    while let Some(r) = tasks.join_next().await {
        if let Ok(Err(e)) = r {
            tracing::debug!("peer ended with {e}");
        }
    }

    let sent: Vec<u64> = shared
        .sent
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    let received = shared
        .received
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    let subs = progress.subscribers_connected.load(Ordering::Relaxed);
    let total_received: u64 = received.iter().sum();
    let expected: u64 = sent.iter().sum::<u64>() * subs as u64;
    let mut join = shared.join_ms.lock().map(|v| v.clone()).unwrap_or_default();
    let mut first_media = shared
        .first_media_ms
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    let mut delays: Vec<f64> = shared
        .delays_us
        .lock()
        .map(|v| v.iter().map(|d| *d as f64 / 1000.0).collect())
        .unwrap_or_default();
    let bytes = progress.bytes_received.load(Ordering::Relaxed);
    Ok(LoadReport {
        subscribers_connected: subs,
        join_ms_p50: percentile(&mut join, 0.5),
        join_ms_p99: percentile(&mut join, 0.99),
        first_media_ms_p50: percentile(&mut first_media, 0.5),
        first_media_ms_p99: percentile(&mut first_media, 0.99),
        tracks: (0..tracks)
            .map(|t| TrackReport {
                kind: if t < options.video_publishers {
                    "video"
                } else {
                    "audio"
                },
                publisher: format!("load-pub-{t}"),
                packets_sent: sent[t],
                packets_received: received[t],
            })
            .collect(),
        packets_received: total_received,
        loss_percent: if expected == 0 {
            0.0
        } else {
            100.0 * (1.0 - total_received as f64 / expected as f64).max(0.0)
        },
        bitrate_per_subscriber: if subs == 0 {
            0.0
        } else {
            bytes as f64 * 8.0 / seconds / subs as f64
        },
        delay_ms_p50: percentile(&mut delays, 0.5),
        delay_ms_p99: percentile(&mut delays, 0.99),
        seconds,
    })
}

/// What a simulated peer's signaling told it, whichever server it talks to.
enum SignalEvent {
    /// The server offers (a subscriber's PeerConnection).
    Offer { sdp: String, id: u32 },
    /// The server answered our offer.
    Answer(String),
    /// A publisher may now make its offer (the track is accepted, or the Janus join done).
    CanOffer,
    /// A remote candidate line.
    Candidate(String),
    /// The server ended the session.
    Closed,
    /// Nothing the load tester acts on.
    Ignored,
}

/// A simulated peer's signaling connection.
enum Link {
    Livekit(Signal),
    Janus(Janus),
    Mediasoup(Mediasoup),
}

/// A signaling connection and its keep-alive schedule: LiveKit servers close sessions that
/// do not ping within `ping_timeout`, Janus sessions that are silent for `session_timeout`.
struct Signaling {
    link: Link,
    keepalive_at: Instant,
}

/// Often enough for LiveKit's default ping interval (5 s) and Janus's timeout (60 s).
const KEEPALIVE: Duration = Duration::from_secs(5);

impl Signaling {
    fn new(link: Link) -> Self {
        Self {
            link,
            keepalive_at: Instant::now() + KEEPALIVE,
        }
    }

    /// Sends a keep-alive when one is due.
    async fn keepalive(&mut self) -> Result<(), ClientError> {
        let now = Instant::now();
        if now < self.keepalive_at {
            return Ok(());
        }
        self.keepalive_at = now + KEEPALIVE;
        match &mut self.link {
            Link::Livekit(signal) => {
                let ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or_default();
                signal.send(Req::Ping(ms)).await
            }
            Link::Janus(janus) => janus.keepalive().await,
            Link::Mediasoup(m) => m.keepalive().await,
        }
    }

    /// Joins as a subscriber of everything published.
    async fn subscriber(
        options: &LoadOptions,
        identity: &str,
        shared: &Shared,
    ) -> Result<Self, ClientError> {
        Ok(match &options.target {
            Target::Livekit { url, token } => {
                Signaling::new(Link::Livekit(Signal::connect(url, &token(identity)).await?))
            }
            Target::Janus { url, room } => {
                let mut janus = Janus::connect(url).await?;
                let feeds = shared.feeds.lock().map(|f| f.clone()).unwrap_or_default();
                janus.join_subscriber(*room, &feeds).await?;
                Signaling::new(Link::Janus(janus))
            }
            Target::Mediasoup { url, room } => {
                let mut m = Mediasoup::connect(url).await?;
                m.subscribe(room).await?;
                Signaling::new(Link::Mediasoup(m))
            }
        })
    }

    /// Joins as a publisher of one track.
    async fn publisher(
        options: &LoadOptions,
        identity: &str,
        cid: &str,
        kind: MediaKind,
    ) -> Result<Self, ClientError> {
        Ok(match &options.target {
            Target::Livekit { url, token } => {
                let mut signal = Signal::connect(url, &token(identity)).await?;
                let (track_type, source) = match kind {
                    MediaKind::Audio => (proto::TrackType::Audio, proto::TrackSource::Microphone),
                    MediaKind::Video => (proto::TrackType::Video, proto::TrackSource::Camera),
                };
                signal
                    .send(Req::AddTrack(proto::AddTrackRequest {
                        cid: cid.to_string(),
                        name: identity.to_string(),
                        r#type: track_type as i32,
                        source: source as i32,
                        width: 640,
                        height: 360,
                        ..Default::default()
                    }))
                    .await?;
                Signaling::new(Link::Livekit(signal))
            }
            Target::Janus { url, room } => {
                let mut janus = Janus::connect(url).await?;
                let publishers = options.video_publishers + options.audio_publishers;
                janus.create_room(*room, publishers).await?;
                janus.join_publisher(*room, identity).await?;
                Signaling::new(Link::Janus(janus))
            }
            Target::Mediasoup { url, room } => {
                let mut m = Mediasoup::connect(url).await?;
                m.publish(room).await?;
                Signaling::new(Link::Mediasoup(m))
            }
        })
    }

    /// The next event; Janus publishers' feed ids are recorded in `shared`.
    async fn recv(&mut self, shared: &Shared) -> Result<SignalEvent, ClientError> {
        match &mut self.link {
            Link::Livekit(signal) => {
                let Some(msg) = signal.recv().await? else {
                    return Ok(SignalEvent::Closed);
                };
                Ok(match msg.message {
                    Some(Resp::Offer(sd)) => SignalEvent::Offer {
                        sdp: sd.sdp,
                        id: sd.id,
                    },
                    Some(Resp::Answer(sd)) => SignalEvent::Answer(sd.sdp),
                    Some(Resp::TrackPublished(_)) => SignalEvent::CanOffer,
                    Some(Resp::Trickle(t)) => match candidate_line(&t.candidate_init) {
                        Some(line) => SignalEvent::Candidate(line),
                        None => SignalEvent::Ignored,
                    },
                    Some(Resp::Leave(_)) => SignalEvent::Closed,
                    _ => SignalEvent::Ignored,
                })
            }
            Link::Janus(janus) => {
                let Some(event) = janus.next_event().await? else {
                    return Ok(SignalEvent::Closed);
                };
                Ok(match event {
                    JanusEvent::Plugin { data, jsep } => match jsep {
                        Some((t, sdp)) if t == "offer" => SignalEvent::Offer { sdp, id: 0 },
                        Some((t, sdp)) if t == "answer" => SignalEvent::Answer(sdp),
                        _ if data["videoroom"] == "joined" => {
                            if let (Some(feed), Ok(mut feeds)) =
                                (data["id"].as_u64(), shared.feeds.lock())
                            {
                                feeds.push(feed);
                            }
                            SignalEvent::CanOffer
                        }
                        _ => SignalEvent::Ignored,
                    },
                    JanusEvent::Trickle(Some(line)) => SignalEvent::Candidate(line),
                    JanusEvent::Hangup(_) => SignalEvent::Closed,
                    JanusEvent::Trickle(None) | JanusEvent::WebrtcUp => SignalEvent::Ignored,
                })
            }
            Link::Mediasoup(m) => Ok(match m.next_event().await? {
                None => SignalEvent::Closed,
                Some(MediasoupEvent::Ready) => SignalEvent::CanOffer,
                Some(MediasoupEvent::Answer(sdp)) => SignalEvent::Answer(sdp),
                Some(MediasoupEvent::Offer(sdp)) => SignalEvent::Offer { sdp, id: 0 },
                Some(MediasoupEvent::Other) => SignalEvent::Ignored,
            }),
        }
    }

    async fn send_offer(&mut self, sdp: String) -> Result<(), ClientError> {
        match &mut self.link {
            Link::Livekit(signal) => {
                signal
                    .send(Req::Offer(proto::SessionDescription {
                        r#type: "offer".into(),
                        sdp,
                        id: 1,
                        ..Default::default()
                    }))
                    .await
            }
            Link::Janus(janus) => janus.publish(&sdp).await,
            Link::Mediasoup(m) => m.offer(&sdp).await,
        }
    }

    async fn send_answer(&mut self, sdp: String, id: u32) -> Result<(), ClientError> {
        match &mut self.link {
            Link::Livekit(signal) => {
                signal
                    .send(Req::Answer(proto::SessionDescription {
                        r#type: "answer".into(),
                        sdp,
                        id,
                        ..Default::default()
                    }))
                    .await
            }
            Link::Janus(janus) => janus.start(&sdp).await,
            Link::Mediasoup(m) => m.answer(&sdp).await,
        }
    }

    async fn leave(self) {
        match self.link {
            Link::Livekit(signal) => signal.leave().await,
            Link::Janus(janus) => janus.leave().await,
            Link::Mediasoup(m) => m.leave().await,
        }
    }
}

fn add_candidate(rtc: &mut Rtc, line: &str) {
    let line = line.strip_prefix("a=").unwrap_or(line);
    if let Ok(c) = Candidate::from_sdp_string(line) {
        rtc.add_remote_candidate(c);
    }
}

async fn subscriber(
    index: usize,
    options: LoadOptions,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
) -> Result<(), ClientError> {
    let permit = gate
        .acquire_owned()
        .await
        .map_err(|e| ClientError::Signal(e.to_string()))?;
    let identity = format!("load-sub-{index}");
    let start = Instant::now();
    let mut signal = Signaling::subscriber(&options, &identity, &shared).await?;
    let socket = local_socket(options.target.url(), options.local_ip).await?;
    let local = socket.local_addr()?;
    let mut rtc = new_rtc(local)?;
    let mut buf = vec![0u8; 2000];
    let mut events = Vec::new();
    let mut permit = Some(permit);
    let mut seen = vec![false; shared.tracks];
    let mut seen_count = 0;
    let mut received = vec![0u64; shared.tracks];
    let mut delays = Vec::new();
    let mut timeout = Instant::now();
    loop {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        timeout = timeout.min(drain(&mut rtc, &socket, &mut events)?);
        for e in events.drain(..) {
            match e {
                Event::Connected => {
                    shared
                        .progress
                        .subscribers_connected
                        .fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut j) = shared.join_ms.lock() {
                        j.push(start.elapsed().as_secs_f64() * 1000.0);
                    }
                    // The next join may start once this one is up.
                    drop(permit.take());
                }
                Event::RtpPacket(p) => {
                    let d = &p.payload;
                    let d = if d.len() >= VP8_HEADER + 25 && &d[VP8_HEADER..VP8_HEADER + 4] == MAGIC
                    {
                        &d[VP8_HEADER..]
                    } else {
                        &d[..]
                    };
                    if d.len() < 25 || &d[..4] != MAGIC {
                        continue;
                    }
                    let track = u32::from_be_bytes([d[4], d[5], d[6], d[7]]) as usize;
                    if track >= shared.tracks {
                        continue;
                    }
                    if !seen[track] {
                        if seen_count == 0
                            && let Ok(mut f) = shared.first_media_ms.lock()
                        {
                            f.push(start.elapsed().as_secs_f64() * 1000.0);
                        }
                        seen[track] = true;
                        seen_count += 1;
                        if seen_count == shared.tracks {
                            shared.seen_all.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let measured = d[8] == 1;
                    if measured {
                        received[track] += 1;
                        shared
                            .progress
                            .packets_received
                            .fetch_add(1, Ordering::Relaxed);
                        shared
                            .progress
                            .bytes_received
                            .fetch_add(d.len() as u64, Ordering::Relaxed);
                        let sent_us = u64::from_be_bytes(d[9..17].try_into().unwrap_or([0; 8]));
                        let now_us = shared.base.elapsed().as_micros() as u64;
                        delays.push(now_us.saturating_sub(sent_us) as u32);
                    }
                }
                _ => {}
            }
        }
        signal.keepalive().await?;
        let sleep = tokio::time::sleep_until(
            timeout
                .max(Instant::now())
                .min(Instant::now() + Duration::from_millis(200))
                .into(),
        );
        tokio::select! {
            ev = signal.recv(&shared) => match ev? {
                SignalEvent::Offer { sdp, id } => {
                    let offer = SdpOffer::from_sdp_string(&sdp).map_err(rtc_err)?;
                    let answer = rtc.sdp_api().accept_offer(offer).map_err(rtc_err)?;
                    signal.send_answer(answer.to_sdp_string(), id).await?;
                }
                SignalEvent::Candidate(line) => add_candidate(&mut rtc, &line),
                SignalEvent::Closed => break,
                _ => {}
            },
            r = socket.recv_from(&mut buf) => {
                let (n, source) = r?;
                if let Ok(recv) = Receive::new(Protocol::Udp, source, local, &buf[..n]) {
                    rtc.handle_input(Input::Receive(Instant::now(), recv)).map_err(rtc_err)?;
                }
            }
            _ = sleep => {
                let now = Instant::now();
                if now >= timeout {
                    rtc.handle_input(Input::Timeout(now)).map_err(rtc_err)?;
                    timeout = now + Duration::from_secs(1);
                }
            }
        }
    }
    if let Ok(mut r) = shared.received.lock() {
        for (t, n) in received.iter().enumerate() {
            r[t] += n;
        }
    }
    if let Ok(mut d) = shared.delays_us.lock() {
        d.extend(delays);
    }
    signal.leave().await;
    Ok(())
}

async fn publisher(
    track: usize,
    kind: MediaKind,
    options: LoadOptions,
    shared: Arc<Shared>,
) -> Result<(), ClientError> {
    let identity = format!("load-pub-{track}");
    let cid = format!("load-track-{track}");
    let mut signal = Signaling::publisher(&options, &identity, &cid, kind).await?;
    let socket = local_socket(options.target.url(), options.local_ip).await?;
    let local = socket.local_addr()?;
    let mut rtc = new_rtc(local)?;
    let mut mid: Option<Mid> = None;
    let mut pending = None;
    let mut connected = false;
    let mut buf = vec![0u8; 2000];
    let mut events = Vec::new();
    let mut timeout = Instant::now();
    // Sending schedule.
    // Packets per tick as a fraction, so the bitrate comes out right on average.
    let (interval, per_tick, payload_len, ts_step) = match kind {
        MediaKind::Audio => (Duration::from_millis(20), 1.0f64, AUDIO_PAYLOAD, 960u32),
        MediaKind::Video => {
            let pps = (options.video_bitrate as f64 / 8.0 / VIDEO_PAYLOAD as f64).max(1.0);
            (
                Duration::from_secs(1) / VIDEO_FPS as u32,
                pps / VIDEO_FPS as f64,
                VIDEO_PAYLOAD,
                3000,
            )
        }
    };
    let mut owed = 0.0f64;
    let mut next_send = Instant::now();
    let mut seq: u64 = 1;
    let mut ts: u32 = 0;
    let mut frame: u64 = 0;
    let mut payload = vec![0u8; payload_len];
    let base = if kind == MediaKind::Video {
        VP8_HEADER
    } else {
        0
    };
    payload[base..base + 4].copy_from_slice(MAGIC);
    payload[base + 4..base + 8].copy_from_slice(&(track as u32).to_be_bytes());
    // A keyframe asked for (PLI/FIR) goes out with the next frame, as an encoder does.
    let mut keyframe_asked = false;
    loop {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        let now = Instant::now();
        if connected && now >= next_send {
            if let Some(mid) = mid {
                let measuring = shared.measuring.load(Ordering::Acquire);
                let codec = if kind == MediaKind::Audio {
                    Codec::Opus
                } else {
                    Codec::Vp8
                };
                let pt = rtc
                    .codec_config()
                    .find(|p| p.spec().codec == codec)
                    .map(|p| p.pt());
                if let Some(pt) = pt {
                    let mut api = rtc.direct_api();
                    owed += per_tick;
                    let count = (owed.floor() as u64).max(1);
                    owed -= count as f64;
                    // A key frame every 2 s, or when asked for.
                    let key = kind == MediaKind::Video
                        && (frame.is_multiple_of(2 * VIDEO_FPS) || keyframe_asked);
                    if key {
                        keyframe_asked = false;
                    }
                    if let Some(tx) = api.stream_tx_by_mid(mid, None) {
                        for k in 0..count {
                            if kind == MediaKind::Video {
                                payload[..VP8_HEADER].copy_from_slice(match (k, key) {
                                    (0, true) => &VP8_KEYFRAME,
                                    (0, false) => &VP8_INTERFRAME,
                                    _ => &VP8_CONTINUATION,
                                });
                            }
                            payload[base + 8] = measuring as u8;
                            let sent_us = shared.base.elapsed().as_micros() as u64;
                            payload[base + 9..base + 17].copy_from_slice(&sent_us.to_be_bytes());
                            payload[base + 17..base + 25].copy_from_slice(&seq.to_be_bytes());
                            tx.write_rtp(
                                RtpWrite::new(pt, seq.into(), ts, now, payload.clone())
                                    .marker(k + 1 == count)
                                    .nackable(kind == MediaKind::Video),
                            );
                            seq += 1;
                            if measuring {
                                shared.sent[track].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                ts = ts.wrapping_add(ts_step);
                frame += 1;
            }
            next_send += interval;
            if next_send < now {
                next_send = now + interval;
            }
        }
        timeout = timeout.min(drain(&mut rtc, &socket, &mut events)?);
        for e in events.drain(..) {
            match e {
                Event::Connected => {
                    connected = true;
                    next_send = Instant::now();
                    shared.publishers_connected.fetch_add(1, Ordering::Relaxed);
                }
                Event::KeyframeRequest(_) => keyframe_asked = true,
                _ => {}
            }
        }
        let wake = if connected {
            timeout.min(next_send)
        } else {
            timeout
        };
        signal.keepalive().await?;
        let sleep = tokio::time::sleep_until(
            wake.max(Instant::now())
                .min(Instant::now() + Duration::from_millis(200))
                .into(),
        );
        tokio::select! {
            ev = signal.recv(&shared) => match ev? {
                SignalEvent::CanOffer if mid.is_none() => {
                    let mut api = rtc.sdp_api();
                    mid = Some(api.add_media(kind, Direction::SendOnly, Some(identity.clone()), Some(cid.clone()), None));
                    if let Some((offer, p)) = api.apply() {
                        pending = Some(p);
                        signal.send_offer(offer.to_sdp_string()).await?;
                    }
                }
                SignalEvent::Answer(sdp) => {
                    if let Some(p) = pending.take() {
                        let answer = SdpAnswer::from_sdp_string(&sdp).map_err(rtc_err)?;
                        rtc.sdp_api().accept_answer(p, answer).map_err(rtc_err)?;
                    }
                }
                SignalEvent::Candidate(line) => add_candidate(&mut rtc, &line),
                SignalEvent::Closed => break,
                _ => {}
            },
            r = socket.recv_from(&mut buf) => {
                let (n, source) = r?;
                if let Ok(recv) = Receive::new(Protocol::Udp, source, local, &buf[..n]) {
                    rtc.handle_input(Input::Receive(Instant::now(), recv)).map_err(rtc_err)?;
                }
            }
            _ = sleep => {
                let now = Instant::now();
                if now >= timeout {
                    rtc.handle_input(Input::Timeout(now)).map_err(rtc_err)?;
                    timeout = now + Duration::from_secs(1);
                }
            }
        }
    }
    signal.leave().await;
    Ok(())
}
