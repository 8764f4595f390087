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
use str0m::media::{
    Direction, KeyframeRequestKind, MediaKind, Mid, Rid, Simulcast, SimulcastLayer,
};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use crate::ClientError;
use crate::janus::{Janus, JanusEvent};
use crate::link::{Link as ShapedLink, LinkParams, Verdict};
use crate::mediasoup::{Mediasoup, MediasoupEvent};
use crate::signal::{Signal, candidate_line};

mod video;

pub use video::{FREEZE, FrameDecoder, VideoCounts};
use video::{FrameMark, Packetizer, SIMULCAST, SeqWindow, VP8_HEADER};

/// Marks our synthetic payloads.
const MAGIC: &[u8; 4] = b"AVLT";
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
    /// Bits per second of each video track (all its layers together).
    pub video_bitrate: u64,
    /// Video tracks are sent as three simulcast layers (rids q, h, f).
    pub simulcast: bool,
    /// Each subscriber receives through a link shaped so (its downlink), applied in this
    /// process to the datagrams its socket receives.
    pub subscriber_link: Option<LinkParams>,
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
    /// 1 − received / (sent × subscribers), in percent, over the tracks every subscriber
    /// should get in full (audio, and video sent as one layer).
    pub loss_percent: f64,
    /// The same for the audio tracks alone.
    pub audio_loss_percent: f64,
    /// What subscribers saw of the video tracks.
    pub video: VideoReport,
    /// Average bitrate received per subscriber, bits/s.
    pub bitrate_per_subscriber: f64,
    /// Send-to-receive delay, p50 and p99, ms.
    pub delay_ms_p50: f64,
    /// See `delay_ms_p50`.
    pub delay_ms_p99: f64,
    /// Length of the measured run, s.
    pub seconds: f64,
}

/// What the subscribers saw of the video tracks in the measured run, all together.
#[derive(Debug, Clone, Default)]
pub struct VideoReport {
    /// (subscriber, video track) pairs counted.
    pub streams: usize,
    /// Frames decoded, freezes and frozen time, summed over those pairs.
    pub counts: VideoCounts,
    /// The same over the second half of the run: once adaptation had time to settle.
    pub settled: VideoCounts,
    /// Distinct RTP packets received (after retransmissions) and the span of sequence
    /// numbers they came from, summed over those pairs: loss at the subscriber.
    pub packets_unique: u64,
    /// See `packets_unique`.
    pub packets_expected: u64,
}

impl VideoReport {
    /// Loss at the subscribers after repair, in percent.
    pub fn loss_percent(&self) -> f64 {
        if self.packets_expected == 0 {
            return 0.0;
        }
        100.0 * (1.0 - self.packets_unique as f64 / self.packets_expected as f64).max(0.0)
    }
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
    /// When the measured run started and ended.
    window: Mutex<(Option<Instant>, Option<Instant>)>,
    video: Mutex<VideoReport>,
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
pub(crate) fn drain(
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
        window: Mutex::new((None, None)),
        video: Mutex::new(VideoReport::default()),
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
    let started = Instant::now();
    if let Ok(mut w) = shared.window.lock() {
        w.0 = Some(started);
    }
    shared.measuring.store(true, Ordering::Release);
    progress.phase.store(2, Ordering::Relaxed);
    tokio::time::sleep(options.duration).await;
    shared.measuring.store(false, Ordering::Release);
    if let Ok(mut w) = shared.window.lock() {
        w.1 = Some(Instant::now());
    }
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
    let is_video = |t: usize| t < options.video_publishers;
    // Loss over the tracks every subscriber should get whole: with simulcast a subscriber
    // gets one layer of the video, so only audio counts there.
    let whole = |t: &usize| !(options.simulcast && is_video(*t));
    let loss = |tracks: &mut dyn Iterator<Item = usize>| {
        let (mut got, mut want) = (0u64, 0u64);
        for t in tracks {
            got += received[t];
            want += sent[t] * subs as u64;
        }
        if want == 0 {
            0.0
        } else {
            100.0 * (1.0 - got as f64 / want as f64).max(0.0)
        }
    };
    let loss_percent = loss(&mut (0..tracks).filter(whole));
    let audio_loss_percent = loss(&mut (0..tracks).filter(|t| !is_video(*t)));
    let video = shared.video.lock().map(|v| v.clone()).unwrap_or_default();
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
        loss_percent,
        audio_loss_percent,
        video,
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
                        layers: if options.simulcast && kind == MediaKind::Video {
                            simulcast_layers(options.video_bitrate)
                        } else {
                            Vec::new()
                        },
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

/// The layers of a simulcast video track, as an SDK announces them.
fn simulcast_layers(bitrate: u64) -> Vec<proto::VideoLayer> {
    let qualities = [
        proto::VideoQuality::Low,
        proto::VideoQuality::Medium,
        proto::VideoQuality::High,
    ];
    SIMULCAST
        .iter()
        .zip(qualities)
        .map(|(l, q)| proto::VideoLayer {
            quality: q as i32,
            width: l.width,
            height: l.height,
            bitrate: (bitrate as f64 * l.share) as u32,
            ..Default::default()
        })
        .collect()
}

fn add_candidate(rtc: &mut Rtc, line: &str) {
    let line = line.strip_prefix("a=").unwrap_or(line);
    if let Ok(c) = Candidate::from_sdp_string(line) {
        rtc.add_remote_candidate(c);
    }
}

/// A subscriber's downlink when it is shaped: datagrams wait here until the link delivers
/// them.
struct Downlink {
    params: LinkParams,
    link: ShapedLink,
    /// (delivery time, source, bytes), in delivery order (the link keeps order: no
    /// reordering is configured here).
    queue: std::collections::VecDeque<(Instant, SocketAddr, Vec<u8>)>,
}

impl Downlink {
    fn new(params: LinkParams, seed: u64) -> Self {
        Self {
            params: LinkParams {
                reorder: 0.0,
                ..params
            },
            link: ShapedLink::new(seed),
            queue: Default::default(),
        }
    }

    fn offer(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]) {
        if let Verdict::Deliver(at) = self.link.offer(&self.params, now, bytes.len()) {
            self.queue.push_back((at, source, bytes.to_vec()));
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|(at, _, _)| *at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        if self.next_due()? > now {
            return None;
        }
        self.queue.pop_front().map(|(_, s, b)| (s, b))
    }
}

/// What one subscriber counts of one video track.
#[derive(Default)]
struct VideoSeen {
    decoder: FrameDecoder,
    seqs: SeqWindow,
    /// When this subscriber last asked for a key frame.
    keyframe_asked: Option<Instant>,
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
    let mut downlink = options
        .subscriber_link
        .map(|p| Downlink::new(p, index as u64 + 1));
    let mut buf = vec![0u8; 2000];
    let mut events = Vec::new();
    let mut permit = Some(permit);
    let mut seen = vec![false; shared.tracks];
    let mut seen_count = 0;
    let mut first_media = false;
    let mut received = vec![0u64; shared.tracks];
    let mut videos: Vec<VideoSeen> = (0..options.video_publishers)
        .map(|_| VideoSeen::default())
        .collect();
    let mut delays = Vec::new();
    let mut timeout = Instant::now();
    loop {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        if let Some(d) = downlink.as_mut() {
            let now = Instant::now();
            while let Some((source, bytes)) = d.pop_due(now) {
                if let Ok(recv) = Receive::new(Protocol::Udp, source, local, &bytes) {
                    rtc.handle_input(Input::Receive(now, recv))
                        .map_err(rtc_err)?;
                }
            }
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
                    if !first_media && let Ok(mut f) = shared.first_media_ms.lock() {
                        first_media = true;
                        f.push(start.elapsed().as_secs_f64() * 1000.0);
                    }
                    let measured = d[8] == 1;
                    if let (Some(v), Some(mark)) = (videos.get_mut(track), FrameMark::read(d)) {
                        let measuring = shared.measuring.load(Ordering::Acquire);
                        let now = Instant::now();
                        v.decoder.on_packet(mark, now, measuring);
                        if measured {
                            v.seqs.on_seq(*p.seq_no);
                        }
                        // Ask for a key frame when stuck, as a browser's receiver does (at
                        // most once per FREEZE).
                        if v.decoder.stuck(now)
                            && v.keyframe_asked.is_none_or(|t| now - t > FREEZE)
                            && let Some(rx) = rtc.direct_api().stream_rx(&p.header.ssrc)
                        {
                            rx.request_keyframe(KeyframeRequestKind::Pli);
                            v.keyframe_asked = Some(now);
                        }
                    }
                    // A video track is seen once a frame of it could be shown.
                    let shown = videos.get(track).is_none_or(|v| v.decoder.started());
                    if !seen[track] && shown {
                        seen[track] = true;
                        seen_count += 1;
                        if seen_count == shared.tracks {
                            shared.seen_all.fetch_add(1, Ordering::Relaxed);
                        }
                    }
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
        let mut wake = timeout.min(Instant::now() + Duration::from_millis(200));
        if let Some(at) = downlink.as_ref().and_then(Downlink::next_due) {
            wake = wake.min(at);
        }
        let sleep = tokio::time::sleep_until(wake.max(Instant::now()).into());
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
                let now = Instant::now();
                match downlink.as_mut() {
                    Some(d) => d.offer(now, source, &buf[..n]),
                    None => {
                        if let Ok(recv) = Receive::new(Protocol::Udp, source, local, &buf[..n]) {
                            rtc.handle_input(Input::Receive(now, recv)).map_err(rtc_err)?;
                        }
                    }
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
    let window = shared.window.lock().map(|w| *w).unwrap_or_default();
    if let ((Some(from), Some(to)), Ok(mut report)) = (window, shared.video.lock())
        && seen_count > 0
    {
        for v in &videos {
            report.streams += 1;
            report
                .counts
                .add(&VideoCounts::of(&v.decoder.decoded, from, to));
            let half = from + (to - from) / 2;
            report
                .settled
                .add(&VideoCounts::of(&v.decoder.decoded, half, to));
            report.packets_unique += v.seqs.unique;
            report.packets_expected += v.seqs.expected();
        }
    }
    signal.leave().await;
    Ok(())
}

/// One stream a video publisher sends: the whole track, or one simulcast layer.
struct VideoStream {
    rid: Option<Rid>,
    packetizer: Packetizer,
    seq: u64,
    /// A key frame asked for (PLI/FIR) goes out with the next frame, as an encoder does.
    keyframe_asked: bool,
}

/// The streams of a video track of `bitrate`.
fn video_streams(bitrate: u64, simulcast: bool) -> Vec<VideoStream> {
    let stream = |rid: Option<&str>, bitrate: f64| VideoStream {
        rid: rid.map(Rid::from),
        packetizer: Packetizer::new(bitrate as u64, VIDEO_FPS, VIDEO_PAYLOAD),
        seq: 1,
        keyframe_asked: false,
    };
    if simulcast {
        SIMULCAST
            .iter()
            .map(|l| stream(Some(l.rid), bitrate as f64 * l.share))
            .collect()
    } else {
        vec![stream(None, bitrate as f64)]
    }
}

/// Sends one video frame on every stream of a track.
#[allow(clippy::too_many_arguments)]
fn send_video_frame(
    rtc: &mut Rtc,
    mid: Mid,
    pt: str0m::media::Pt,
    streams: &mut [VideoStream],
    track: usize,
    frame: u64,
    now: Instant,
    shared: &Shared,
) {
    let measuring = shared.measuring.load(Ordering::Acquire);
    let mut api = rtc.direct_api();
    for (layer, s) in streams.iter_mut().enumerate() {
        let Some(tx) = api.stream_tx_by_mid(mid, s.rid) else {
            continue;
        };
        // A key frame every 2 s, or when asked for.
        let key = frame.is_multiple_of(2 * VIDEO_FPS) || s.keyframe_asked;
        s.keyframe_asked &= !key;
        let (count, size) = s.packetizer.next_frame();
        let mut payload = vec![0u8; size];
        for k in 0..count {
            video::write_vp8_header(
                &mut payload,
                k == 0,
                key,
                (frame & 0x7fff) as u16,
                frame as u8,
            );
            let marks = &mut payload[VP8_HEADER..];
            write_marks(marks, track, measuring, shared, s.seq);
            FrameMark {
                frame: frame as u32,
                index: k as u16,
                count: count as u16,
                layer: layer as u8,
                key,
            }
            .write(marks);
            tx.write_rtp(
                RtpWrite::new(
                    pt,
                    s.seq.into(),
                    (frame as u32).wrapping_mul(3000),
                    now,
                    payload.clone(),
                )
                .marker(k + 1 == count)
                .nackable(true),
            );
            s.seq += 1;
            if measuring {
                shared.sent[track].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The marks every synthetic payload starts with: magic, track, whether measured, send
/// time and the sender's sequence number.
fn write_marks(marks: &mut [u8], track: usize, measuring: bool, shared: &Shared, seq: u64) {
    marks[..4].copy_from_slice(MAGIC);
    marks[4..8].copy_from_slice(&(track as u32).to_be_bytes());
    marks[8] = measuring as u8;
    let sent_us = shared.base.elapsed().as_micros() as u64;
    marks[9..17].copy_from_slice(&sent_us.to_be_bytes());
    marks[17..25].copy_from_slice(&seq.to_be_bytes());
}

async fn publisher(
    track: usize,
    kind: MediaKind,
    options: LoadOptions,
    shared: Arc<Shared>,
) -> Result<(), ClientError> {
    let identity = format!("load-pub-{track}");
    let cid = format!("load-track-{track}");
    let simulcast = options.simulcast && kind == MediaKind::Video;
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
    let interval = match kind {
        MediaKind::Audio => Duration::from_millis(20),
        MediaKind::Video => Duration::from_secs(1) / VIDEO_FPS as u32,
    };
    let mut streams = video_streams(options.video_bitrate, simulcast);
    let mut next_send = Instant::now();
    let mut audio_seq: u64 = 1;
    let mut frame: u64 = 0;
    let mut audio = vec![0u8; AUDIO_PAYLOAD];
    loop {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        let now = Instant::now();
        if connected && now >= next_send {
            if let Some(mid) = mid {
                let codec = if kind == MediaKind::Audio {
                    Codec::Opus
                } else {
                    Codec::Vp8
                };
                let pt = rtc
                    .codec_config()
                    .find(|p| p.spec().codec == codec)
                    .map(|p| p.pt());
                match (pt, kind) {
                    (Some(pt), MediaKind::Video) => send_video_frame(
                        &mut rtc,
                        mid,
                        pt,
                        &mut streams,
                        track,
                        frame,
                        now,
                        &shared,
                    ),
                    (Some(pt), _) => {
                        let measuring = shared.measuring.load(Ordering::Acquire);
                        write_marks(&mut audio, track, measuring, &shared, audio_seq);
                        if let Some(tx) = rtc.direct_api().stream_tx_by_mid(mid, None) {
                            tx.write_rtp(RtpWrite::new(
                                pt,
                                audio_seq.into(),
                                (frame as u32).wrapping_mul(960),
                                now,
                                audio.clone(),
                            ));
                            audio_seq += 1;
                            if measuring {
                                shared.sent[track].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    (None, _) => {}
                }
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
                Event::KeyframeRequest(r) => {
                    for s in streams
                        .iter_mut()
                        .filter(|s| r.rid.is_none() || s.rid == r.rid)
                    {
                        s.keyframe_asked = true;
                    }
                }
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
                    let layers = simulcast.then(|| {
                        let mut s = Simulcast::new();
                        s.send = SIMULCAST.iter().map(|l| SimulcastLayer::new(l.rid)).collect();
                        s
                    });
                    mid = Some(api.add_media(kind, Direction::SendOnly, Some(identity.clone()), Some(cid.clone()), layers));
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
