//! One participant's session: signaling, a publisher and a subscriber peer connection, file
//! senders and recorders, all driven from one task.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use livekit_protocol::signal_request::Message as Req;
use livekit_protocol::signal_response::Message as Resp;
use prost::Message as _;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Rtc};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tracing::{debug, info, warn};

use crate::ClientError;
use crate::load::drain;
use crate::media::ivf::IvfWriter;
use crate::media::ogg::OggOpusWriter;
use crate::media::{FileCodec, MediaFile};

/// What to do in the room.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// Server URL (`ws://host:port` or `http://...`).
    pub url: String,
    /// Access token.
    pub token: String,
    /// Files to publish, with the path each came from.
    pub publish: Vec<(PathBuf, MediaFile)>,
    /// Where to record subscribed tracks; `None` subscribes without recording.
    pub record_dir: Option<PathBuf>,
    /// How long to stay.
    pub duration: Duration,
}

/// A track this session published.
#[derive(Debug, Clone)]
pub struct Published {
    /// Its sid.
    pub sid: String,
    /// MIME type.
    pub mime: &'static str,
    /// The file.
    pub path: PathBuf,
}

/// Something the session did or saw, reported as it happens.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// The server accepted the join.
    Joined {
        /// Room name.
        room: String,
        /// Our identity.
        identity: String,
        /// Our participant sid.
        sid: String,
    },
    /// A track of ours was published.
    Published(Published),
    /// The first media of a subscribed track arrived.
    Receiving {
        /// Whose track.
        identity: String,
        /// Its sid.
        track_sid: String,
        /// Its MIME type.
        mime: String,
    },
}

/// What a session did.
#[derive(Debug, Default)]
pub struct JoinSummary {
    /// Tracks published.
    pub published: Vec<Published>,
    /// Files written, with the number of frames in each.
    pub recorded: Vec<(PathBuf, u64)>,
}

fn ws_base(url: &str) -> Result<String, ClientError> {
    let url = url.trim_end_matches('/');
    let base = if let Some(r) = url.strip_prefix("http://") {
        format!("ws://{r}")
    } else if let Some(r) = url.strip_prefix("https://") {
        format!("wss://{r}")
    } else if url.starts_with("ws://") || url.starts_with("wss://") {
        url.to_string()
    } else {
        return Err(ClientError::BadUrl(url.into()));
    };
    Ok(base)
}

/// The server's host and port from a ws:// URL.
fn host_port(base: &str) -> Result<(String, u16), ClientError> {
    let (tls, rest) = match base.strip_prefix("wss://") {
        Some(r) => (true, r),
        None => (false, base.trim_start_matches("ws://")),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.trim_matches(|c| c == '[' || c == ']').to_string(),
            p.parse()
                .map_err(|_| ClientError::BadUrl(base.to_string()))?,
        ),
        _ => (authority.to_string(), if tls { 443 } else { 80 }),
    };
    Ok((host, port))
}

/// A file being sent on one m-line.
struct Sender {
    mid: Option<Mid>,
    cid: String,
    file: MediaFile,
    path: PathBuf,
    next: usize,
    next_at: Instant,
    rtp_time: u64,
}

impl Sender {
    fn clock(&self) -> u64 {
        if self.file.codec.is_audio() {
            48_000
        } else {
            90_000
        }
    }
}

/// A subscribed track being written to a file.
enum Recorder {
    Ivf(IvfWriter<BufWriter<File>>),
    Ogg(OggOpusWriter<BufWriter<File>>),
    Raw(BufWriter<File>),
}

struct Recording {
    path: PathBuf,
    writer: Recorder,
    frames: u64,
    first_time: Option<u64>,
}

fn vp8_size(frame: &[u8]) -> Option<(u16, u16)> {
    // A VP8 key frame: 3-byte tag with bit 0 clear, start code 9d 01 2a, then sizes.
    if frame.len() >= 10 && frame[0] & 1 == 0 && frame[3..6] == [0x9d, 0x01, 0x2a] {
        let w = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
        let h = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
        return Some((w, h));
    }
    None
}

fn signal(msg: Req) -> WsMessage {
    WsMessage::Binary(
        proto::SignalRequest { message: Some(msg) }
            .encode_to_vec()
            .into(),
    )
}

fn new_rtc(local: SocketAddr, codecs: Option<&[FileCodec]>) -> Result<Rtc, ClientError> {
    let mut config = Rtc::builder();
    // Like the SDKs, a publisher offers only the codecs it sends, so the answer (and the
    // track's MIME type) cannot pick another.
    if let Some(codecs) = codecs {
        config = config.clear_codecs();
        for c in codecs {
            config = match c {
                FileCodec::Vp8 => config.enable_vp8(true),
                FileCodec::Vp9 => config.enable_vp9(true),
                FileCodec::Av1 => config.enable_av1(true),
                FileCodec::H264 => config.enable_h264(true),
                FileCodec::Opus => config.enable_opus(true, false),
            };
        }
    }
    let mut rtc = config.build(Instant::now());
    let c = Candidate::host(local, "udp").map_err(|e| ClientError::Rtc(e.to_string()))?;
    rtc.add_local_candidate(c);
    Ok(rtc)
}

/// Joins, publishes and records for `options.duration`, then leaves.
pub async fn join(
    options: JoinOptions,
    mut on_event: impl FnMut(&SessionEvent),
) -> Result<JoinSummary, ClientError> {
    let base = ws_base(&options.url)?;
    let (host, port) = host_port(&base)?;
    let mut ws = crate::signal::open(&options.url, &options.token).await?;

    // Our address toward the server: a connected UDP socket learns the route's source
    // address without sending anything.
    let server_ip: IpAddr = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .ok_or_else(|| ClientError::BadUrl(options.url.clone()))?
        .ip();
    let probe = std::net::UdpSocket::bind((if server_ip.is_ipv4() { "0.0.0.0" } else { "::" }, 0))?;
    probe.connect((server_ip, 9))?;
    let local_ip = probe.local_addr()?.ip();
    drop(probe);
    // One socket per peer connection, as browsers do: the server tells its transports apart
    // by our address once ICE has run.
    let sub_socket = UdpSocket::bind((local_ip, 0)).await?;
    let pub_socket = UdpSocket::bind((local_ip, 0)).await?;
    let sub_local = sub_socket.local_addr()?;
    let pub_local = pub_socket.local_addr()?;

    let codecs: Vec<FileCodec> = options.publish.iter().map(|(_, f)| f.codec).collect();
    let mut subscriber = new_rtc(sub_local, None)?;
    let mut publisher = new_rtc(pub_local, Some(&codecs))?;
    let mut senders: Vec<Sender> = options
        .publish
        .into_iter()
        .enumerate()
        .map(|(i, (path, file))| Sender {
            mid: None,
            cid: format!("aviary-{}-{i}", std::process::id()),
            file,
            path,
            next: 0,
            next_at: Instant::now(),
            rtp_time: 0,
        })
        .collect();
    let mut summary = JoinSummary::default();
    let mut identities: HashMap<String, String> = HashMap::new();
    let mut recordings: HashMap<Mid, Recording> = HashMap::new();
    let mut receiving: std::collections::HashSet<Mid> = std::collections::HashSet::new();
    let mut pending_offer: Option<SdpPendingOffer> = None;
    let mut awaiting_published = senders.len();
    let mut publisher_offered = false;
    let mut publisher_connected = false;

    let end = Instant::now() + options.duration;
    let mut buf = vec![0u8; 2000];
    let mut pub_buf = vec![0u8; 2000];
    let mut events = Vec::new();
    let mut joined = false;
    let mut sub_timeout = Instant::now();
    let mut pub_timeout = Instant::now();
    let mut ping_at = Instant::now() + Duration::from_secs(5);

    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        // Frames that are due.
        if publisher_connected {
            for s in senders.iter_mut() {
                let Some(mid) = s.mid else { continue };
                while s.next_at <= now {
                    let frame = &s.file.frames[s.next];
                    let codec = match s.file.codec {
                        FileCodec::Vp8 => Codec::Vp8,
                        FileCodec::Vp9 => Codec::Vp9,
                        FileCodec::Av1 => Codec::Av1,
                        FileCodec::H264 => Codec::H264,
                        FileCodec::Opus => Codec::Opus,
                    };
                    let freq = if s.clock() == 48_000 {
                        Frequency::FORTY_EIGHT_KHZ
                    } else {
                        Frequency::NINETY_KHZ
                    };
                    if let Some(w) = publisher.writer(mid) {
                        let pt = w
                            .payload_params()
                            .find(|p| p.spec().codec == codec)
                            .map(|p| p.pt());
                        match pt {
                            Some(pt) => {
                                let t = MediaTime::new(s.rtp_time, freq);
                                if let Err(e) = w.write(pt, now, t, frame.data.clone()) {
                                    debug!("write: {e}");
                                }
                            }
                            None => warn!(path = %s.path.display(), "codec not negotiated"),
                        }
                    }
                    s.rtp_time += frame.duration.as_micros() as u64 * s.clock() / 1_000_000;
                    s.next_at += frame.duration;
                    s.next = (s.next + 1) % s.file.frames.len();
                }
            }
        }
        pub_timeout = pub_timeout.min(drain(&mut publisher, &pub_socket, &mut events)?);
        sub_timeout = sub_timeout.min(drain(&mut subscriber, &sub_socket, &mut events)?);

        let mut wake = end.min(ping_at).min(sub_timeout).min(pub_timeout);
        if publisher_connected {
            for s in &senders {
                if s.mid.is_some() {
                    wake = wake.min(s.next_at);
                }
            }
        }
        let sleep = tokio::time::sleep_until(wake.max(Instant::now()).into());

        tokio::select! {
            msg = ws.next() => {
                let Some(msg) = msg else { return Err(ClientError::Server("signaling closed".into())) };
                let msg = msg.map_err(|e| ClientError::Signal(e.to_string()))?;
                let data = match msg {
                    WsMessage::Binary(b) => b,
                    WsMessage::Close(_) => return Err(ClientError::Server("signaling closed".into())),
                    _ => continue,
                };
                let Ok(resp) = proto::SignalResponse::decode(data.as_ref()) else { continue };
                match resp.message {
                    Some(Resp::Join(j)) => {
                        joined = true;
                        if let Some(me) = &j.participant {
                            on_event(&SessionEvent::Joined {
                                room: j.room.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
                                identity: me.identity.clone(),
                                sid: me.sid.clone(),
                            });
                        }
                        for p in j.other_participants {
                            identities.insert(p.sid.clone(), p.identity.clone());
                        }
                        for s in &senders {
                            let kind = if s.file.codec.is_audio() { proto::TrackType::Audio } else { proto::TrackType::Video };
                            let source = if s.file.codec.is_audio() { proto::TrackSource::Microphone } else { proto::TrackSource::Camera };
                            let (width, height) = s.file.size.unwrap_or((0, 0));
                            let name = s.path.file_stem().and_then(|n| n.to_str()).unwrap_or("file").to_string();
                            ws.send(signal(Req::AddTrack(proto::AddTrackRequest {
                                cid: s.cid.clone(),
                                name,
                                r#type: kind as i32,
                                source: source as i32,
                                width,
                                height,
                                ..Default::default()
                            }))).await.map_err(|e| ClientError::Signal(e.to_string()))?;
                        }
                    }
                    Some(Resp::Offer(sd)) => {
                        let offer = SdpOffer::from_sdp_string(&sd.sdp).map_err(|e| ClientError::Rtc(e.to_string()))?;
                        let answer = subscriber.sdp_api().accept_offer(offer).map_err(|e| ClientError::Rtc(e.to_string()))?;
                        ws.send(signal(Req::Answer(proto::SessionDescription {
                            r#type: "answer".into(), sdp: answer.to_sdp_string(), id: sd.id, ..Default::default()
                        }))).await.map_err(|e| ClientError::Signal(e.to_string()))?;
                    }
                    Some(Resp::Answer(sd)) => {
                        if let Some(pending) = pending_offer.take() {
                            let answer = SdpAnswer::from_sdp_string(&sd.sdp).map_err(|e| ClientError::Rtc(e.to_string()))?;
                            publisher.sdp_api().accept_answer(pending, answer).map_err(|e| ClientError::Rtc(e.to_string()))?;
                        }
                    }
                    Some(Resp::Trickle(t)) => {
                        let line = serde_json::from_str::<serde_json::Value>(&t.candidate_init).ok()
                            .and_then(|v| v.get("candidate").and_then(|c| c.as_str()).map(str::to_string));
                        if let Some(c) = line.and_then(|l| Candidate::from_sdp_string(&l).ok()) {
                            if t.target == proto::SignalTarget::Subscriber as i32 {
                                subscriber.add_remote_candidate(c);
                            } else {
                                publisher.add_remote_candidate(c);
                            }
                        }
                    }
                    Some(Resp::TrackPublished(tp)) => {
                        if let (Some(s), Some(track)) = (senders.iter().find(|s| s.cid == tp.cid), tp.track) {
                            let p = Published { sid: track.sid, mime: s.file.codec.mime(), path: s.path.clone() };
                            on_event(&SessionEvent::Published(p.clone()));
                            summary.published.push(p);
                            awaiting_published = awaiting_published.saturating_sub(1);
                        }
                        if awaiting_published == 0 && !publisher_offered {
                            publisher_offered = true;
                            let mut api = publisher.sdp_api();
                            for s in senders.iter_mut() {
                                let kind = if s.file.codec.is_audio() { MediaKind::Audio } else { MediaKind::Video };
                                s.mid = Some(api.add_media(kind, Direction::SendOnly, Some("aviary".into()), Some(s.cid.clone()), None));
                            }
                            if let Some((offer, pending)) = api.apply() {
                                pending_offer = Some(pending);
                                ws.send(signal(Req::Offer(proto::SessionDescription {
                                    r#type: "offer".into(), sdp: offer.to_sdp_string(), id: 1, ..Default::default()
                                }))).await.map_err(|e| ClientError::Signal(e.to_string()))?;
                            }
                        }
                    }
                    Some(Resp::Update(u)) => {
                        for p in u.participants {
                            identities.insert(p.sid.clone(), p.identity.clone());
                        }
                    }
                    Some(Resp::Leave(l)) => {
                        return Err(ClientError::Server(format!("asked to leave (reason {})", l.reason)));
                    }
                    _ => {}
                }
            }
            r = sub_socket.recv_from(&mut buf) => {
                let (n, source) = r?;
                if let Ok(receive) = Receive::new(Protocol::Udp, source, sub_local, &buf[..n]) {
                    subscriber.handle_input(Input::Receive(Instant::now(), receive))
                        .map_err(|e| ClientError::Rtc(e.to_string()))?;
                }
            }
            r = pub_socket.recv_from(&mut pub_buf) => {
                let (n, source) = r?;
                if let Ok(receive) = Receive::new(Protocol::Udp, source, pub_local, &pub_buf[..n]) {
                    publisher.handle_input(Input::Receive(Instant::now(), receive))
                        .map_err(|e| ClientError::Rtc(e.to_string()))?;
                }
            }
            _ = sleep => {
                let now = Instant::now();
                if now >= sub_timeout {
                    subscriber.handle_input(Input::Timeout(now)).map_err(|e| ClientError::Rtc(e.to_string()))?;
                    sub_timeout = now + Duration::from_secs(1);
                }
                if now >= pub_timeout {
                    publisher.handle_input(Input::Timeout(now)).map_err(|e| ClientError::Rtc(e.to_string()))?;
                    pub_timeout = now + Duration::from_secs(1);
                }
                if now >= ping_at && joined {
                    ping_at = now + Duration::from_secs(5);
                    ws.send(signal(Req::Ping(0))).await.map_err(|e| ClientError::Signal(e.to_string()))?;
                }
            }
        }
        // Events from either connection.
        for e in events.drain(..) {
            match e {
                Event::Connected if publisher.is_connected() && !publisher_connected => {
                    publisher_connected = true;
                    let now = Instant::now();
                    for s in senders.iter_mut() {
                        s.next_at = now;
                    }
                    info!("publisher connected");
                }
                Event::MediaData(md) => {
                    if receiving.insert(md.mid)
                        && let Some((identity, track_sid)) =
                            track_of(&subscriber, md.mid, &identities)
                    {
                        on_event(&SessionEvent::Receiving {
                            identity,
                            track_sid,
                            mime: format!("{}", md.params.spec().codec),
                        });
                    }
                    let Some(dir) = &options.record_dir else {
                        continue;
                    };
                    if let std::collections::hash_map::Entry::Vacant(slot) =
                        recordings.entry(md.mid)
                    {
                        match start_recording(&subscriber, &md, &identities, dir)? {
                            Some(r) => {
                                info!(path = %r.path.display(), "recording");
                                slot.insert(r);
                            }
                            None => continue,
                        }
                    }
                    let Some(rec) = recordings.get_mut(&md.mid) else {
                        continue;
                    };
                    let t = md.time.rebase(Frequency::NINETY_KHZ).numer();
                    let first = *rec.first_time.get_or_insert(t);
                    let ok = match &mut rec.writer {
                        Recorder::Ivf(w) => w.write(t.saturating_sub(first), &md.data),
                        Recorder::Ogg(w) => w.write(&md.data),
                        Recorder::Raw(w) => std::io::Write::write_all(w, &md.data),
                    };
                    if ok.is_ok() {
                        rec.frames += 1;
                    }
                }
                _ => {}
            }
        }
    }
    let _ = ws
        .send(signal(Req::Leave(proto::LeaveRequest::default())))
        .await;
    let _ = ws.close(None).await;
    for (_, rec) in recordings {
        let done = match rec.writer {
            Recorder::Ivf(w) => w.finish(),
            Recorder::Ogg(w) => w.finish(),
            Recorder::Raw(mut w) => std::io::Write::flush(&mut w),
        };
        done?;
        summary.recorded.push((rec.path, rec.frames));
    }
    Ok(summary)
}

/// Whose track (identity) and which (track sid) a subscriber m-line carries, from its msid
/// `PA_sid|TR_sid`.
fn track_of(
    subscriber: &Rtc,
    mid: Mid,
    identities: &HashMap<String, String>,
) -> Option<(String, String)> {
    let media = subscriber.media(mid)?;
    let (pa, tr) = media
        .stream_id()
        .split_once('|')
        .unwrap_or(("", media.track_id()));
    let who = identities
        .get(pa)
        .cloned()
        .unwrap_or_else(|| pa.to_string());
    Some((who, tr.to_string()))
}

/// Opens the file for a newly received track, named `<identity>-<track sid>.<ext>`.
fn start_recording(
    subscriber: &Rtc,
    md: &str0m::media::MediaData,
    identities: &HashMap<String, String>,
    dir: &std::path::Path,
) -> Result<Option<Recording>, ClientError> {
    let Some((who, tr)) = track_of(subscriber, md.mid, identities) else {
        return Ok(None);
    };
    let codec = md.params.spec().codec;
    let ext = match codec {
        Codec::Opus => "ogg",
        Codec::Vp8 | Codec::Vp9 | Codec::Av1 => "ivf",
        Codec::H264 => "h264",
        other => {
            debug!(?other, "not recording this codec");
            return Ok(None);
        }
    };
    let path = dir.join(format!("{who}-{tr}.{ext}"));
    let file = BufWriter::new(File::create(&path)?);
    let writer = match codec {
        // str0m negotiates Opus as stereo; mono streams decode as stereo as well.
        Codec::Opus => Recorder::Ogg(OggOpusWriter::new(file, 2)?),
        Codec::H264 => Recorder::Raw(file),
        _ => {
            let fc = match codec {
                Codec::Vp9 => FileCodec::Vp9,
                Codec::Av1 => FileCodec::Av1,
                _ => FileCodec::Vp8,
            };
            let (w, h) = vp8_size(&md.data).unwrap_or((0, 0));
            Recorder::Ivf(IvfWriter::new(file, fc, w, h)?)
        }
    };
    Ok(Some(Recording {
        path,
        writer,
        frames: 0,
        first_time: None,
    }))
}
