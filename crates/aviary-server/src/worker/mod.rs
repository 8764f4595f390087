//! Media workers: one thread per core, each owning whole rooms (their `Router`s) and one
//! UDP socket. Signaling talks to a worker only through [`WorkerCommand`]s in and
//! [`MediaEvent`]s out; the packet path takes no locks.

mod event_loop;
mod tcp;

pub use tcp::{UfragRegistry, take_frames};

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;

use aviary_sfu::{DataKind, MediaKind, ProducerId, TransportDirection};
use livekit_protocol as proto;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, warn};

use crate::ids::{Identity, ParticipantSid, RoomSid, TrackSid};

/// Which participant of which room a command is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// Room sid.
    pub room: RoomSid,
    /// Participant sid.
    pub participant: ParticipantSid,
}

/// What a room asks of its worker.
#[derive(Debug)]
pub enum WorkerCommand {
    /// Creates the room's media plane (a router); every event about it goes to `events`.
    OpenRoom {
        /// The room.
        room: RoomSid,
        /// Where its events go.
        events: UnboundedSender<MediaEvent>,
    },
    /// Closes the room's media plane and every transport in it.
    CloseRoom {
        /// The room.
        room: RoomSid,
    },
    /// Creates the participant's subscriber transport; its offer comes back as an event.
    AddPeer {
        /// Who.
        key: PeerKey,
        /// Its identity (data packets are addressed by it and carry it).
        identity: Identity,
        /// Whether its data packets are relayed.
        can_publish_data: bool,
        /// Where the highest reliable data sequence relayed from it is kept (for resume).
        last_reliable_seq: Arc<AtomicU32>,
    },
    /// A producer of this peer is the LiveKit track `track_sid`.
    BindTrack {
        /// The publisher.
        key: PeerKey,
        /// The producer the worker reported.
        producer: ProducerId,
        /// The track's sid.
        track_sid: TrackSid,
        /// Its share of subscribers' bandwidth comes before lower ones' (screen share 1,
        /// camera 0).
        priority: u8,
    },
    /// Forward a track to this peer.
    Subscribe {
        /// The subscriber.
        key: PeerKey,
        /// The publisher's participant sid (for the msid stream id).
        publisher: ParticipantSid,
        /// Which track.
        track_sid: TrackSid,
    },
    /// Stop forwarding a track to this peer.
    Unsubscribe {
        /// The subscriber.
        key: PeerKey,
        /// Which track.
        track_sid: TrackSid,
    },
    /// Replaces a subscriber's estimated bandwidth with this many bits per second, for the
    /// allocator (`SimulateScenario.subscriber_bandwidth`); `None` goes back to the estimate.
    SubscriberBandwidth {
        /// The subscriber.
        key: PeerKey,
        /// The bandwidth to allocate within.
        bps: Option<u64>,
    },
    /// A subscriber's settings for one track (`UpdateTrackSettings`), kept for later
    /// subscriptions to it too.
    TrackSettings {
        /// The subscriber.
        key: PeerKey,
        /// Which track.
        track_sid: TrackSid,
        /// Forwarding paused.
        paused: bool,
        /// The highest simulcast layer wanted (0 is the lowest; `usize::MAX` the highest).
        max_layer: usize,
    },
    /// Sends an encoded `DataPacket` to participants of a room.
    SendData {
        /// Room sid.
        room: RoomSid,
        /// The encoded packet.
        packet: Vec<u8>,
        /// Channel.
        kind: DataKind,
        /// Participant sids; empty means everyone.
        to: Vec<ParticipantSid>,
    },
    /// Ends a published track from the server side (its publisher lost the permission).
    CloseTrack {
        /// Room sid.
        room: RoomSid,
        /// Which track.
        track_sid: TrackSid,
    },
    /// Ends a producer no track was announced for.
    CloseProducer {
        /// Room sid.
        room: RoomSid,
        /// Which producer.
        producer: ProducerId,
    },
    /// Changes whether a peer's data packets are relayed.
    SetDataPermission {
        /// Who.
        key: PeerKey,
        /// Allowed or not.
        can_publish_data: bool,
    },
    /// The client's offer for its publisher connection.
    PublisherOffer {
        /// Who.
        key: PeerKey,
        /// Offer SDP.
        sdp: String,
        /// Which of its audio tracks to ask RED for.
        red: RedTracks,
    },
    /// The client's answer to our subscriber offer.
    SubscriberAnswer {
        /// Who.
        key: PeerKey,
        /// Answer SDP.
        sdp: String,
    },
    /// A trickled client candidate.
    Candidate {
        /// Who.
        key: PeerKey,
        /// Which connection.
        target: TransportDirection,
        /// The `candidate:...` line.
        candidate: String,
    },
    /// Restarts ICE on the peer's subscriber connection (a resumed session): a new offer
    /// with fresh credentials, carrying whatever the client has not answered yet.
    RestartIce {
        /// Who.
        key: PeerKey,
    },
    /// The participant left: close its transports.
    RemovePeer {
        /// Who.
        key: PeerKey,
    },
    /// A new ICE/TCP connection whose first frame named one of this worker's transports.
    AdoptTcp {
        /// The connection (non-blocking).
        stream: std::net::TcpStream,
        /// Its remote address.
        remote: SocketAddr,
        /// The first frame, already read.
        first: Vec<u8>,
    },
    /// Stops the thread.
    Shutdown,
}

/// What a worker tells a room.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    /// An offer for a participant's subscriber connection.
    SubscriberOffer {
        /// Whose.
        participant: ParticipantSid,
        /// The SDP.
        sdp: String,
        /// It restarts ICE.
        ice_restart: bool,
    },
    /// The answer to the participant's publisher offer.
    PublisherAnswer {
        /// Whose.
        participant: ParticipantSid,
        /// The SDP.
        sdp: String,
    },
    /// ICE and DTLS are up on that connection (again, after `Disconnected`).
    Connected {
        /// Whose.
        participant: ParticipantSid,
        /// Which connection.
        direction: TransportDirection,
    },
    /// ICE lost the client on that connection; it may come back.
    Disconnected {
        /// Whose.
        participant: ParticipantSid,
        /// Which connection.
        direction: TransportDirection,
    },
    /// The connection failed for good and is gone.
    Closed {
        /// Whose.
        participant: ParticipantSid,
        /// Which connection.
        direction: TransportDirection,
    },
    /// A negotiation step on that connection was refused; the text says why.
    NegotiationFailed {
        /// Whose.
        participant: ParticipantSid,
        /// Which connection.
        direction: TransportDirection,
        /// Why.
        reason: String,
    },
    /// The publisher's offer added a stream; the room binds it to a track.
    ProducerCreated {
        /// The publisher.
        participant: ParticipantSid,
        /// The stream.
        media: ProducedMedia,
    },
    /// Which simulcast layers of a published track someone receives: up to `max_layer`
    /// (0 is the lowest), or none (dynacast: the publisher may stop encoding the rest).
    SubscribedLayers {
        /// The publisher.
        participant: ParticipantSid,
        /// The track's sid.
        track_sid: TrackSid,
        /// The highest layer wanted, if any.
        max_layer: Option<usize>,
    },
    /// Congestion control paused a track for a subscriber whose link cannot carry it, or
    /// resumed it (LiveKit's `StreamStateUpdate`).
    StreamState {
        /// The subscriber.
        participant: ParticipantSid,
        /// The track's sid.
        track_sid: TrackSid,
        /// Paused (or active again).
        paused: bool,
    },
    /// Every participant's connection quality, scored every few seconds.
    ConnectionQuality(Vec<proto::ConnectionQualityInfo>),
    /// Who started or stopped speaking in the room (LiveKit's `SpeakersChanged`).
    Speakers(Vec<proto::SpeakerInfo>),
    /// A bound track's media ended (unpublished by renegotiation, or closed).
    TrackEnded {
        /// The publisher.
        participant: ParticipantSid,
        /// The track's sid.
        track_sid: TrackSid,
    },
    /// The room's media plane failed (a router panic) and is gone with every transport.
    RoomFailed,
}

/// Whether a publisher's audio tracks want RED (their `disable_red`): announced ones by
/// the `cid` their m-line's msid carries, published ones by their mid.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RedTracks {
    /// Announced tracks: cid, wants RED.
    pub cids: Vec<(String, bool)>,
    /// Published tracks: mid, wants RED.
    pub mids: Vec<(String, bool)>,
}

impl RedTracks {
    /// Whether the track of the offer's audio m-line wants RED; `None` for no known track.
    pub fn wants(&self, audio: aviary_sfu::OfferedAudio<'_>) -> Option<bool> {
        let by_mid = self.mids.iter().find(|(m, _)| m == audio.mid);
        let by_cid = || {
            let t = audio.track_id?;
            self.cids.iter().find(|(c, _)| c == t)
        };
        by_mid.or_else(by_cid).map(|&(_, red)| red)
    }
}

/// A stream a publisher started sending.
#[derive(Debug, Clone, PartialEq)]
pub struct ProducedMedia {
    /// The producer.
    pub producer: ProducerId,
    /// The msid track id (the client's `cid`).
    pub cid: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// Its mid.
    pub mid: String,
    /// Negotiated codec's MIME type.
    pub mime: String,
}

/// Settings shared by every worker.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Number of worker threads.
    pub threads: usize,
    /// Address to bind UDP sockets on (port taken from `first_udp_port`).
    pub bind_ip: IpAddr,
    /// Worker N binds `first_udp_port + N`; 0 picks free ports.
    pub first_udp_port: u16,
    /// The IPs advertised in ICE candidates, the preferred first (at least one).
    pub node_ips: Vec<IpAddr>,
    /// ICE/TCP port (passive candidates); `None` disables ICE over TCP, 0 picks a free port.
    pub tcp_port: Option<u16>,
    /// Where workers count (at least `threads` worker entries).
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Subscribers' bandwidth estimation and allocation; `None` turns it off.
    pub congestion_control: Option<aviary_sfu::CongestionControl>,
}

/// The data channels LiveKit clients use: `_reliable` and `_lossy`.
pub fn livekit_data_channels() -> aviary_sfu::DataChannelLabels {
    aviary_sfu::DataChannelLabels {
        reliable: "_reliable".into(),
        lossy: "_lossy".into(),
    }
}

/// A handle to send commands to one worker.
#[derive(Clone)]
pub struct WorkerHandle {
    tx: mpsc::Sender<WorkerCommand>,
    waker: Option<Arc<mio::Waker>>,
    alive: Arc<AtomicBool>,
    /// The worker's UDP address (as bound).
    pub udp_addr: SocketAddr,
}

impl WorkerHandle {
    /// Queues a command and wakes the worker.
    pub fn send(&self, cmd: WorkerCommand) {
        if self.tx.send(cmd).is_ok()
            && let Some(w) = &self.waker
        {
            let _ = w.wake();
        }
    }

    /// False once the worker's thread has ended (it takes no new rooms then).
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// A handle with no thread behind it: commands pile up in the returned receiver (tests).
    pub fn detached() -> (Self, mpsc::Receiver<WorkerCommand>) {
        let (tx, rx) = mpsc::channel();
        let handle = Self {
            tx,
            waker: None,
            alive: Arc::new(AtomicBool::new(true)),
            udp_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        (handle, rx)
    }
}

/// Marks a worker dead when its thread ends, however it ends (a panic included).
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// All workers of the process.
pub struct WorkerPool {
    handles: Vec<WorkerHandle>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The ICE/TCP listener's address, when enabled.
    pub tcp_addr: Option<SocketAddr>,
}

impl WorkerPool {
    /// Binds every worker's socket and starts its thread.
    pub fn start(config: &WorkerConfig) -> io::Result<Self> {
        let cert = aviary_sfu::generate_dtls_cert()
            .ok_or_else(|| io::Error::other("cannot generate a DTLS certificate"))?;
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        let registry = UfragRegistry::default();
        let tcp_listener = match config.tcp_port {
            Some(port) => {
                let addr = SocketAddr::new(config.bind_ip, port);
                let l = std::net::TcpListener::bind(addr).map_err(|e| {
                    io::Error::new(e.kind(), format!(
                        "cannot listen for ICE/TCP on {addr}: {e}; choose another port with --tcp-port"
                    ))
                })?;
                Some(l)
            }
            None => None,
        };
        let tcp_addr = match &tcp_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let advertised_tcp: Vec<SocketAddr> = match tcp_addr {
            Some(a) => config
                .node_ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, a.port()))
                .collect(),
            None => Vec::new(),
        };
        for index in 0..config.threads.max(1) {
            let port = if config.first_udp_port == 0 {
                0
            } else {
                config
                    .first_udp_port
                    .checked_add(index as u16)
                    .ok_or_else(|| io::Error::other("udp port range overflows"))?
            };
            let bind = SocketAddr::new(config.bind_ip, port);
            let std_socket = std::net::UdpSocket::bind(bind)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "cannot open UDP media port {bind}: {e}; choose other ports with --udp-port (worker N uses port + N)"
                        ),
                    )
                })?;
            std_socket.set_nonblocking(true)?;
            size_buffers(&std_socket, bind);
            let udp_addr = std_socket.local_addr()?;
            let advertised = config
                .node_ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, udp_addr.port()))
                .collect();
            let (tx, rx) = mpsc::channel();
            let mut worker = event_loop::Worker::new(
                event_loop::WorkerSetup {
                    index,
                    socket: std_socket,
                    advertised,
                    advertised_tcp: advertised_tcp.clone(),
                    cert: cert.clone(),
                    registry: registry.clone(),
                    metrics: config.metrics.workers[index].clone(),
                    congestion_control: config.congestion_control.clone(),
                },
                rx,
            )?;
            let waker = worker.waker();
            let alive = Arc::new(AtomicBool::new(true));
            let guard = AliveGuard(alive.clone());
            let thread = std::thread::Builder::new()
                .name(format!("aviary-worker-{index}"))
                .spawn(move || {
                    let _guard = guard;
                    worker.run();
                })?;
            handles.push(WorkerHandle {
                tx,
                waker: Some(waker),
                alive,
                udp_addr,
            });
            threads.push(thread);
        }
        if let Some(listener) = tcp_listener {
            tcp::start_acceptor(listener, registry, handles.clone())?;
        }
        Ok(Self {
            handles,
            threads,
            tcp_addr,
        })
    }

    /// The worker with this index.
    pub fn get(&self, index: usize) -> &WorkerHandle {
        &self.handles[index % self.handles.len()]
    }

    /// Handles to every worker, by index.
    pub fn handles(&self) -> Vec<WorkerHandle> {
        self.handles.clone()
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Always false: a pool has at least one worker.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Stops every worker and waits for them.
    pub fn shutdown(self) {
        for h in &self.handles {
            h.send(WorkerCommand::Shutdown);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Socket buffers asked for on each worker's UDP socket. A worker fanning one packet out to
/// a thousand subscribers does not read for a few milliseconds, while their RTCP keeps
/// arriving; the kernel's default (~200 KiB, under a hundred full-size datagrams) overflows,
/// and every publisher packet lost there comes back as a NACK from each subscriber. The
/// kernel caps the request at `net.core.rmem_max` / `wmem_max`.
const UDP_BUFFER: usize = 8 << 20;

fn size_buffers(socket: &std::net::UdpSocket, bind: SocketAddr) {
    let s = socket2::SockRef::from(socket);
    if let Err(e) = s.set_recv_buffer_size(UDP_BUFFER) {
        warn!(%bind, "cannot size the UDP receive buffer: {e}");
    }
    if let Err(e) = s.set_send_buffer_size(UDP_BUFFER) {
        warn!(%bind, "cannot size the UDP send buffer: {e}");
    }
    let (recv, send) = (s.recv_buffer_size(), s.send_buffer_size());
    debug!(%bind, ?recv, ?send, "UDP socket buffers");
}
