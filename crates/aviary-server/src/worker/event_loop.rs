//! One worker thread: its socket, its rooms' routers, and the demultiplexer between them.

use std::collections::{HashMap, HashSet};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::metrics::WorkerMetrics;
use aviary_sfu::{
    ConsumerId, ConsumerOptions, DataKind, DtlsCert, Event, Output, ProducerId, Protocol, Receive,
    Router, RouterConfig, RouterStats, TransportDirection, TransportId, TransportOptions, demux,
};
use livekit_protocol as proto;
use mio::{Events, Interest, Poll, Token, Waker};
use prost::Message as _;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, error, trace, warn};

use super::tcp::{self, UfragRegistry};
use super::{MediaEvent, PeerKey, ProducedMedia, RedTracks, WorkerCommand};
use crate::guid::random_string;
use crate::ids::{Identity, ParticipantSid, RoomSid, TrackSid};

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);
/// TCP connections get tokens from here up.
const FIRST_TCP: usize = 16;
/// How often router counters are added to the metrics.
const STATS_FLUSH: Duration = Duration::from_secs(1);
/// One media datagram in this many has its forwarding delay measured.
const DELAY_SAMPLE: u64 = 8;
/// Datagrams read per turn before timers and commands get their turn.
const RECV_BATCH: usize = 256;
/// Receive buffers per `recvmmsg`; each may hold several datagrams coalesced by GRO.
const RECV_SLOTS: usize = 16;
/// Room for one datagram (str0m's MTU is well below; a larger one is cut and fails to parse).
const MAX_DATAGRAM: usize = 2048;
/// How often speaking participants are worked out (upstream's audio update interval).
const SPEAKER_INTERVAL: Duration = Duration::from_millis(500);
/// How often connection quality is scored (LiveKit's interval).
const QUALITY_INTERVAL: Duration = Duration::from_secs(5);
/// Signaling commands handled per turn before sockets and timers get theirs.
const COMMAND_BATCH: usize = 64;
/// Time spent on signaling commands per turn, at most (give or take one command).
const COMMAND_TIME: Duration = Duration::from_millis(2);
/// Reliable messages kept for one receiver whose channel is not open yet.
const WAITING_DATA: usize = 64;
/// Destinations one data packet may name; a packet naming more is dropped.
const MAX_DATA_DESTINATIONS: usize = 1024;
/// Local ufrags routed per transport: the current one and the one before an ICE restart.
const ROUTED_UFRAGS: usize = 2;
/// Longest sleep, so that a lost wake-up costs at most this much.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// A room's index inside this worker (cheaper to copy per packet than its sid).
type RoomIdx = u32;

struct Peer {
    identity: Identity,
    can_publish_data: bool,
    subscriber: Option<TransportId>,
    publisher: Option<TransportId>,
    /// The highest reliable data sequence relayed from this peer, shared with its room:
    /// a client that resumes re-sends what came after it, and repeats are dropped.
    last_reliable_seq: Arc<AtomicU32>,
}

struct TransportEntry {
    participant: ParticipantSid,
    direction: TransportDirection,
    /// Every local ufrag it has had (an ICE restart adds one); all route to it.
    ufrags: Vec<String>,
}

/// A (subscriber, track) pair.
type Slot = (ParticipantSid, TrackSid);

struct RoomMedia {
    sid: RoomSid,
    router: Router,
    /// Where this room's events go (its room task).
    events: UnboundedSender<MediaEvent>,
    peers: HashMap<ParticipantSid, Peer>,
    transports: HashMap<TransportId, TransportEntry>,
    /// Track sid → its producer and publisher's participant sid.
    tracks: HashMap<TrackSid, (ProducerId, ParticipantSid)>,
    /// Producer → track sid, for producers bound to a track.
    producer_tracks: HashMap<ProducerId, TrackSid>,
    /// (subscriber sid, track sid) → consumer.
    consumers: HashMap<Slot, ConsumerId>,
    /// (subscriber sid, track sid) → its last `UpdateTrackSettings`: (paused, max layer).
    settings: HashMap<Slot, (bool, usize)>,
    /// Lossy data messages dropped because a receiver's buffer was full.
    dropped_lossy: u64,
    /// Reliable data messages handed to receivers.
    reliable_delivered: u64,
    /// Receivers whose reliable data channel filled up: reliable data is never dropped
    /// silently, so their subscriber connection is closed (they rejoin) after the drain.
    slow_receivers: Vec<TransportId>,
    /// Reliable messages for receivers whose reliable channel is not open yet (a server
    /// message right after a join), sent when it opens; bounded per receiver.
    waiting_data: HashMap<TransportId, Vec<Vec<u8>>>,
    reliable_receivers_dropped: u64,
    /// Participants announced as speaking.
    speakers: HashSet<ParticipantSid>,
    /// Producer → the highest layer its publisher was last told is wanted.
    announced_layers: HashMap<ProducerId, Option<usize>>,
    /// What was last added to the metrics from this room's router.
    reported: RouterStats,
    reported_dropped_lossy: u64,
    /// (delivered, receivers dropped) last added to the metrics.
    reported_reliable: (u64, u64),
    next_timeout: Instant,
}

impl RoomMedia {
    /// Tells the room.
    fn emit(&self, event: MediaEvent) {
        // A room that is gone no longer cares.
        let _ = self.events.send(event);
    }

    /// Tells the room something about a transport's participant.
    fn notify(
        &self,
        transport: TransportId,
        event: impl FnOnce(ParticipantSid, TransportDirection) -> MediaEvent,
    ) {
        if let Some(entry) = self.transports.get(&transport) {
            self.emit(event(entry.participant.clone(), entry.direction));
        }
    }
}

/// Where incoming datagrams go. Both maps are keyed by values the peer chooses, so they use
/// std's DoS-resistant hasher.
#[derive(Default)]
struct Demux {
    by_ufrag: HashMap<String, Route>,
    by_addr: HashMap<SocketAddr, (RoomIdx, TransportId)>,
}

/// Where a local ufrag leads, and the password its STUN must be signed with before its
/// source address is trusted.
struct Route {
    room: RoomIdx,
    transport: TransportId,
    password: String,
}

impl Demux {
    fn forget(&mut self, room: RoomIdx, transport: TransportId, ufrags: &[String]) {
        for ufrag in ufrags {
            self.by_ufrag.remove(ufrag);
        }
        self.by_addr.retain(|_, v| *v != (room, transport));
    }
}

/// One ICE/TCP connection.
struct TcpConn {
    stream: mio::net::TcpStream,
    remote: SocketAddr,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// The transport its first frame named.
    owner: Option<(RoomIdx, TransportId)>,
    opened: Instant,
    last_rx: Instant,
    /// The local address the client connected to (which of our candidates it chose).
    local_ip: Option<IpAddr>,
}

/// What a worker is built from.
pub(super) struct WorkerSetup {
    pub(super) index: usize,
    pub(super) socket: std::net::UdpSocket,
    /// The UDP addresses put into candidates, the preferred first (never empty).
    pub(super) advertised: Vec<SocketAddr>,
    /// The same for ICE/TCP (empty when it is off).
    pub(super) advertised_tcp: Vec<SocketAddr>,
    pub(super) cert: DtlsCert,
    pub(super) registry: UfragRegistry,
    pub(super) metrics: WorkerMetrics,
    pub(super) congestion_control: Option<aviary_sfu::CongestionControl>,
}

/// Buffers for batched UDP reads.
struct RecvBufs {
    bufs: Vec<Box<[u8]>>,
    meta: Vec<quinn_udp::RecvMeta>,
}

impl RecvBufs {
    /// Slots big enough for `gro_segments` datagrams each.
    fn new(gro_segments: usize) -> Self {
        let size = MAX_DATAGRAM * gro_segments.max(1);
        Self {
            bufs: (0..RECV_SLOTS)
                .map(|_| vec![0u8; size].into_boxed_slice())
                .collect(),
            meta: vec![quinn_udp::RecvMeta::default(); RECV_SLOTS],
        }
    }
}

/// The worker's sockets, apart from its rooms so that a router's outputs can be sent while
/// the room is borrowed.
struct Net {
    metrics: WorkerMetrics,
    socket: mio::net::UdpSocket,
    /// quinn-udp's view of `socket`: batched reads that report each datagram's
    /// destination address, sends from a chosen source address.
    udp: quinn_udp::UdpSocketState,
    /// Several addresses are advertised: each reply must leave from the one the client
    /// sent to, or its ICE check fails.
    pick_source: bool,
    tcp: HashMap<Token, TcpConn>,
    tcp_by_addr: HashMap<SocketAddr, Token>,
}

impl Net {
    fn send(&mut self, registry: &mio::Registry, t: &aviary_sfu::Transmit) {
        let traffic = match t.proto {
            Protocol::Udp => &self.metrics.udp,
            _ => &self.metrics.tcp,
        };
        traffic.packets_out.inc();
        traffic.bytes_out.inc_by(t.contents.len() as u64);
        match t.proto {
            Protocol::Udp => {
                let transmit = quinn_udp::Transmit {
                    destination: t.destination,
                    ecn: None,
                    contents: &t.contents,
                    segment_size: None,
                    src_ip: self.pick_source.then(|| t.source.ip()),
                };
                // Only WouldBlock comes back (quinn-udp logs the rest): a full buffer
                // drops the datagram, as the network would.
                if let Err(e) = self
                    .udp
                    .send(quinn_udp::UdpSockRef::from(&self.socket), &transmit)
                {
                    self.metrics.dropped.inc();
                    trace!(dest = %t.destination, "send: {e}");
                }
            }
            _ => {
                let Some(token) = self.tcp_by_addr.get(&t.destination).copied() else {
                    return;
                };
                let Some(conn) = self.tcp.get_mut(&token) else {
                    return;
                };
                if conn.wbuf.len() > tcp::MAX_WRITE_BUFFER {
                    self.metrics.dropped.inc();
                    trace!(dest = %t.destination, "tcp buffer full; packet dropped");
                    return;
                }
                tcp::frame(&t.contents, &mut conn.wbuf);
                if flush(conn).is_err() {
                    self.close_tcp(registry, token);
                } else if !conn.wbuf.is_empty() {
                    // The rest goes out when the socket says it is writable.
                    let _ = registry.reregister(
                        &mut conn.stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    );
                }
            }
        }
    }

    /// Closes the ICE/TCP connections of a transport that is gone.
    fn close_tcp_of(&mut self, registry: &mio::Registry, room: RoomIdx, transport: TransportId) {
        let tokens: Vec<Token> = self
            .tcp
            .iter()
            .filter(|(_, c)| c.owner == Some((room, transport)))
            .map(|(t, _)| *t)
            .collect();
        for t in tokens {
            self.close_tcp(registry, t);
        }
    }

    fn close_tcp(&mut self, registry: &mio::Registry, token: Token) {
        if let Some(mut conn) = self.tcp.remove(&token) {
            let _ = registry.deregister(&mut conn.stream);
            self.tcp_by_addr.remove(&conn.remote);
            debug!(remote = %conn.remote, "ice-tcp connection closed");
        }
    }
}

/// Writes as much of the connection's buffer as the socket takes.
fn flush(conn: &mut TcpConn) -> io::Result<()> {
    use std::io::Write;
    while !conn.wbuf.is_empty() {
        match conn.stream.write(&conn.wbuf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                conn.wbuf.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(super) struct Worker {
    index: usize,
    poll: Poll,
    net: Net,
    advertised_tcp: Vec<SocketAddr>,
    registry: UfragRegistry,
    next_token: usize,
    media_seen: u64,
    waker: Arc<Waker>,
    rx: mpsc::Receiver<WorkerCommand>,
    advertised: Vec<SocketAddr>,
    cert: DtlsCert,
    congestion_control: Option<aviary_sfu::CongestionControl>,
    rooms: HashMap<RoomIdx, RoomMedia>,
    room_idx: HashMap<RoomSid, RoomIdx>,
    next_room: RoomIdx,
    demux: Demux,
}

impl Worker {
    pub(super) fn new(setup: WorkerSetup, rx: mpsc::Receiver<WorkerCommand>) -> io::Result<Self> {
        let WorkerSetup {
            index,
            socket,
            advertised,
            advertised_tcp,
            cert,
            registry,
            metrics,
            congestion_control,
        } = setup;
        if advertised.is_empty() {
            return Err(io::Error::other("a worker needs an address to advertise"));
        }
        let udp = quinn_udp::UdpSocketState::new(quinn_udp::UdpSockRef::from(&socket))?;
        let pick_source = advertised.len() > 1;
        let poll = Poll::new()?;
        let mut socket = mio::net::UdpSocket::from_std(socket);
        poll.registry()
            .register(&mut socket, SOCKET, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Self {
            index,
            poll,
            net: Net {
                metrics,
                socket,
                udp,
                pick_source,
                tcp: HashMap::new(),
                tcp_by_addr: HashMap::new(),
            },
            advertised_tcp,
            registry,
            next_token: FIRST_TCP,
            media_seen: 0,
            waker,
            rx,
            advertised,
            cert,
            congestion_control,
            rooms: HashMap::new(),
            room_idx: HashMap::new(),
            next_room: 0,
            demux: Demux::default(),
        })
    }

    pub(super) fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    pub(super) fn run(&mut self) {
        let _span = tracing::info_span!("worker", index = self.index).entered();
        debug!(addrs = ?self.advertised, "worker started");
        let mut events = Events::with_capacity(64);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut recv = RecvBufs::new(self.net.udp.gro_segments());
        let mut more_to_read = false;
        let mut more_commands = false;
        let mut last_flush = Instant::now();
        let mut last_speakers = Instant::now();
        let mut last_quality = Instant::now();
        loop {
            let now = Instant::now();
            if now.duration_since(last_flush) >= STATS_FLUSH {
                last_flush = now;
                self.flush_stats();
                self.close_idle_tcp(now);
            }
            if now.duration_since(last_speakers) >= SPEAKER_INTERVAL {
                last_speakers = now;
                for room in self.rooms.values_mut() {
                    announce_speakers(room, now);
                    announce_wanted_layers(room);
                }
            }
            if now.duration_since(last_quality) >= QUALITY_INTERVAL {
                last_quality = now;
                for room in self.rooms.values() {
                    report_quality(room, now);
                }
            }
            let deadline = self
                .rooms
                .values()
                .map(|r| r.next_timeout)
                .min()
                .unwrap_or(now + MAX_SLEEP)
                .min(last_speakers + SPEAKER_INTERVAL)
                .min(last_quality + QUALITY_INTERVAL);
            let sleep = if more_to_read || more_commands {
                Duration::ZERO
            } else {
                deadline.saturating_duration_since(now).min(MAX_SLEEP)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(sleep))
                && e.kind() != io::ErrorKind::Interrupted
            {
                error!("poll failed: {e}");
                return;
            }
            let woke = Instant::now();
            // A bounded batch, in count and in time, so that a flood of signaling (an SDP
            // takes a while to parse) cannot starve media.
            more_commands = false;
            for n in 0.. {
                if n == COMMAND_BATCH || woke.elapsed() >= COMMAND_TIME {
                    more_commands = true;
                    break;
                }
                match self.rx.try_recv() {
                    Ok(WorkerCommand::Shutdown) => return,
                    Ok(cmd) => self.handle_command(cmd),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            for event in events.iter() {
                let token = event.token();
                if token.0 >= FIRST_TCP {
                    if event.is_writable() {
                        self.tcp_writable(token);
                    }
                    if event.is_readable() || event.is_read_closed() {
                        self.tcp_readable(token, &mut buf);
                    }
                }
            }
            more_to_read = self.read_socket(&mut recv);
            self.handle_timeouts(Instant::now());
            self.net
                .metrics
                .busy_us
                .inc_by(woke.elapsed().as_micros() as u64);
        }
    }

    /// Closes ICE/TCP connections silent for [`tcp::IDLE_TIMEOUT`].
    fn close_idle_tcp(&mut self, now: Instant) {
        let idle: Vec<Token> = self
            .net
            .tcp
            .iter()
            .filter(|(_, c)| now.duration_since(c.last_rx) >= tcp::IDLE_TIMEOUT)
            .map(|(t, _)| *t)
            .collect();
        for t in idle {
            self.net.close_tcp(self.poll.registry(), t);
        }
    }

    /// Adds what every router counted since the last flush to the metrics.
    fn flush_stats(&mut self) {
        let m = &self.net.metrics;
        let (mut transports, mut producers, mut consumers) = (0, 0, 0);
        for room in self.rooms.values_mut() {
            let s = room.router.stats();
            report(m, room, s);
            transports += s.transports as i64;
            producers += s.producers as i64;
            consumers += s.consumers as i64;
        }
        m.rooms.set(self.rooms.len() as i64);
        m.transports.set(transports);
        m.producers.set(producers);
        m.consumers.set(consumers);
    }

    /// Reads up to one batch; returns true if the socket may hold more.
    fn read_socket(&mut self, recv: &mut RecvBufs) -> bool {
        let mut read = 0;
        while read < RECV_BATCH {
            let mut slices: Vec<IoSliceMut<'_>> =
                recv.bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let n = match self.net.udp.recv(
                quinn_udp::UdpSockRef::from(&self.net.socket),
                &mut slices,
                &mut recv.meta,
            ) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    // ICMP errors surface here on Linux; they are about one peer, not us.
                    trace!("recv: {e}");
                    continue;
                }
            };
            let now = Instant::now();
            for (slice, meta) in slices.iter().zip(&recv.meta).take(n) {
                // GRO may have joined several datagrams of one sender, `stride` bytes each.
                for datagram in slice[..meta.len].chunks(meta.stride.max(1)) {
                    read += 1;
                    self.net.metrics.udp.packets_in.inc();
                    self.net.metrics.udp.bytes_in.inc_by(datagram.len() as u64);
                    self.handle_datagram(datagram, meta.addr, meta.dst_ip, Protocol::Udp, now);
                }
            }
        }
        true
    }

    fn adopt_tcp(&mut self, stream: std::net::TcpStream, remote: SocketAddr, first: Vec<u8>) {
        let local_ip = stream.local_addr().ok().map(|a| a.ip());
        let mut stream = mio::net::TcpStream::from_std(stream);
        let token = Token(self.next_token);
        self.next_token += 1;
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
        {
            debug!(%remote, "cannot register tcp connection: {e}");
            return;
        }
        if let Some(old) = self.net.tcp_by_addr.insert(remote, token) {
            self.net.close_tcp(self.poll.registry(), old);
            self.net.tcp_by_addr.insert(remote, token);
        }
        let owner = demux::stun_local_ufrag(&first)
            .and_then(|u| self.demux.by_ufrag.get(u))
            .map(|r| (r.room, r.transport));
        // A transport needs one connection; a few allow for a client's retries. Past that
        // the oldest goes, so one client cannot hold connections without limit.
        let mut same: Vec<(Instant, Token)> = self
            .net
            .tcp
            .iter()
            .filter(|(_, c)| owner.is_some() && c.owner == owner)
            .map(|(t, c)| (c.opened, *t))
            .collect();
        if same.len() >= tcp::MAX_PER_TRANSPORT {
            same.sort();
            for (_, t) in &same[..=same.len() - tcp::MAX_PER_TRANSPORT] {
                self.net.close_tcp(self.poll.registry(), *t);
            }
        }
        let now = Instant::now();
        self.net.tcp.insert(
            token,
            TcpConn {
                stream,
                remote,
                rbuf: Vec::new(),
                wbuf: Vec::new(),
                owner,
                opened: now,
                last_rx: now,
                local_ip,
            },
        );
        debug!(%remote, "ice-tcp connection adopted");
        self.net.metrics.tcp.packets_in.inc();
        self.net.metrics.tcp.bytes_in.inc_by(first.len() as u64);
        self.handle_datagram(&first, remote, local_ip, Protocol::Tcp, Instant::now());
    }

    fn tcp_readable(&mut self, token: Token, buf: &mut [u8]) {
        use std::io::Read;
        let mut frames = Vec::new();
        let mut closed = false;
        let (remote, local_ip) = {
            let Some(conn) = self.net.tcp.get_mut(&token) else {
                return;
            };
            loop {
                match conn.stream.read(buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => {
                        conn.rbuf.extend_from_slice(&buf[..n]);
                        conn.last_rx = Instant::now();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            match tcp::take_frames(&mut conn.rbuf) {
                Ok(f) => frames = f,
                Err(_) => closed = true,
            }
            (conn.remote, conn.local_ip)
        };
        for frame in frames {
            self.net.metrics.tcp.packets_in.inc();
            self.net.metrics.tcp.bytes_in.inc_by(frame.len() as u64);
            self.handle_datagram(&frame, remote, local_ip, Protocol::Tcp, Instant::now());
        }
        if closed {
            self.net.close_tcp(self.poll.registry(), token);
        }
    }

    fn tcp_writable(&mut self, token: Token) {
        let Some(conn) = self.net.tcp.get_mut(&token) else {
            return;
        };
        if flush(conn).is_err() {
            self.net.close_tcp(self.poll.registry(), token);
        } else if conn.wbuf.is_empty() {
            let _ = self
                .poll
                .registry()
                .reregister(&mut conn.stream, token, Interest::READABLE);
        }
    }

    /// The candidate a datagram reached: the advertised address with the IP it was sent to,
    /// else (behind a NAT, or the address is unknown) the preferred one.
    fn destination(&self, proto: Protocol, local: Option<IpAddr>) -> SocketAddr {
        let list = match proto {
            Protocol::Udp => &self.advertised,
            _ if self.advertised_tcp.is_empty() => &self.advertised,
            _ => &self.advertised_tcp,
        };
        local
            .and_then(|ip| list.iter().find(|a| a.ip() == ip))
            .or(list.first())
            .copied()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    fn handle_datagram(
        &mut self,
        data: &[u8],
        source: SocketAddr,
        local: Option<IpAddr>,
        proto: Protocol,
        now: Instant,
    ) {
        crate::capture::save("datagram", &crate::capture::DATAGRAM, data);
        // STUN names its transport, which matters when one remote address talks to two of
        // our transports (a client reusing a socket); everything else goes by address.
        let route = demux::stun_local_ufrag(data).and_then(|ufrag| self.demux.by_ufrag.get(ufrag));
        let by_ufrag = route.map(|r| (r.room, r.transport));
        // A new address is trusted only with STUN its transport's password signed: knowing
        // a ufrag (it travels in the clear) must not let anyone redirect a transport.
        let learn = route.is_some_and(|r| {
            self.demux.by_addr.get(&source) != Some(&(r.room, r.transport))
                && demux::stun_integrity_ok(data, &r.password)
        });
        let target = by_ufrag.or_else(|| self.demux.by_addr.get(&source).copied());
        let Some((room, transport)) = target else {
            self.net.metrics.dropped.inc();
            trace!(%source, len = data.len(), "datagram for no transport");
            return;
        };
        let destination = self.destination(proto, local);
        let Ok(receive) = Receive::new(proto, source, destination, data) else {
            self.net.metrics.dropped.inc();
            trace!(%source, "unparseable datagram");
            return;
        };
        if learn {
            // Later packets from this address need no STUN to find their transport.
            self.demux.by_addr.insert(source, (room, transport));
        }
        // RTP/RTCP (RFC 7983: first byte 128..=191); sampled, as reading the clock per
        // packet is not free.
        let is_media = matches!(data.first(), Some(128..=191));
        self.media_seen += 1;
        let sample = is_media && self.media_seen.is_multiple_of(DELAY_SAMPLE);
        self.with_router(room, |r| {
            let _ = r.handle_receive(now, transport, receive);
        });
        if sample {
            self.net
                .metrics
                .forwarding_delay
                .observe(now.elapsed().as_secs_f64());
        }
    }

    fn handle_timeouts(&mut self, now: Instant) {
        let due: Vec<RoomIdx> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.next_timeout <= now)
            .map(|(i, _)| *i)
            .collect();
        for idx in due {
            self.with_router(idx, |r| r.handle_timeout(now));
        }
    }

    fn handle_command(&mut self, cmd: WorkerCommand) {
        match cmd {
            WorkerCommand::OpenRoom { room, events } => self.open_room(room, events),
            WorkerCommand::CloseRoom { room } => {
                if let Some(idx) = self.room_idx.get(&room).copied() {
                    self.close_room(idx);
                }
            }
            WorkerCommand::AddPeer {
                key,
                identity,
                can_publish_data,
                last_reliable_seq,
            } => self.add_peer(key, identity, can_publish_data, last_reliable_seq),
            WorkerCommand::BindTrack {
                key,
                producer,
                track_sid,
                priority,
            } => {
                if let Some(room) = self.room_mut(&key.room) {
                    if room.router.producer(producer).is_none() {
                        // Unpublished before the binding arrived: the track ends at once,
                        // or it would stay listed with no media behind it.
                        room.emit(MediaEvent::TrackEnded {
                            participant: key.participant,
                            track_sid,
                        });
                        return;
                    }
                    let _ = room.router.set_producer_priority(producer, priority);
                    room.tracks
                        .insert(track_sid.clone(), (producer, key.participant));
                    room.producer_tracks.insert(producer, track_sid);
                }
            }
            WorkerCommand::Subscribe {
                key,
                publisher,
                track_sid,
            } => self.subscribe(key, publisher, track_sid),
            WorkerCommand::Unsubscribe { key, track_sid } => {
                let Some(&idx) = self.room_idx.get(&key.room) else {
                    return;
                };
                self.with_room(idx, |room| {
                    if let Some(c) = room.consumers.remove(&(key.participant.clone(), track_sid)) {
                        let _ = room.router.close_consumer(c);
                    }
                });
            }
            WorkerCommand::SubscriberBandwidth { key, bps } => {
                if let Some(room) = self.room_mut(&key.room)
                    && let Some(t) = room.peers.get(&key.participant).and_then(|p| p.subscriber)
                {
                    room.router.set_bandwidth_override(t, bps);
                }
            }
            WorkerCommand::TrackSettings {
                key,
                track_sid,
                paused,
                max_layer,
            } => {
                let Some(&idx) = self.room_idx.get(&key.room) else {
                    return;
                };
                self.with_room(idx, |room| {
                    let slot = (key.participant.clone(), track_sid);
                    if let Some(&c) = room.consumers.get(&slot) {
                        let _ = room.router.pause_consumer(c, paused);
                        let _ = room.router.set_preferred_layer(c, max_layer);
                    }
                    if room.tracks.contains_key(&slot.1) {
                        room.settings.insert(slot, (paused, max_layer));
                    }
                });
            }
            WorkerCommand::SendData {
                room,
                packet,
                kind,
                to,
            } => {
                let Some(&idx) = self.room_idx.get(&room) else {
                    return;
                };
                self.with_room(idx, |room| {
                    let targets: Vec<TransportId> = room
                        .peers
                        .iter()
                        .filter(|(sid, _)| to.is_empty() || to.contains(sid))
                        .filter_map(|(_, p)| p.subscriber)
                        .collect();
                    deliver(room, &targets, kind, &packet);
                });
            }
            WorkerCommand::CloseTrack { room, track_sid } => {
                let Some(&idx) = self.room_idx.get(&room) else {
                    return;
                };
                self.with_room(idx, |room| {
                    if let Some(&(producer, _)) = room.tracks.get(&track_sid) {
                        let _ = room.router.close_producer(producer);
                    }
                });
            }
            WorkerCommand::CloseProducer { room, producer } => {
                let Some(&idx) = self.room_idx.get(&room) else {
                    return;
                };
                self.with_room(idx, |room| {
                    let _ = room.router.close_producer(producer);
                });
            }
            WorkerCommand::SetDataPermission {
                key,
                can_publish_data,
            } => {
                if let Some(peer) = self
                    .room_mut(&key.room)
                    .and_then(|r| r.peers.get_mut(&key.participant))
                {
                    peer.can_publish_data = can_publish_data;
                }
            }
            WorkerCommand::PublisherOffer { key, sdp, red } => self.publisher_offer(key, sdp, &red),
            WorkerCommand::SubscriberAnswer { key, sdp } => {
                let Some((idx, tid)) = self.transport_of(&key, TransportDirection::Subscriber)
                else {
                    return;
                };
                let result = self.with_router(idx, |r| r.accept_answer(tid, &sdp));
                // A restart deferred behind the answered offer may have been offered now.
                self.follow_ufrag(idx, tid);
                if let Some(Err(e)) = result {
                    self.emit(
                        idx,
                        MediaEvent::NegotiationFailed {
                            participant: key.participant,
                            direction: TransportDirection::Subscriber,
                            reason: e.to_string(),
                        },
                    );
                }
            }
            WorkerCommand::Candidate {
                key,
                target,
                candidate,
            } => {
                if let Some((idx, tid)) = self.transport_of(&key, target)
                    && let Some(Err(e)) =
                        self.with_router(idx, |r| r.add_remote_candidate(tid, &candidate))
                {
                    debug!(participant = %key.participant, "bad candidate: {e}");
                }
            }
            WorkerCommand::RestartIce { key } => self.restart_ice(&key),
            WorkerCommand::RemovePeer { key } => self.remove_peer(&key),
            WorkerCommand::AdoptTcp {
                stream,
                remote,
                first,
            } => self.adopt_tcp(stream, remote, first),
            WorkerCommand::Shutdown => {}
        }
    }

    /// Creates a room's router, or points an existing room's events somewhere new.
    fn open_room(&mut self, sid: RoomSid, events: UnboundedSender<MediaEvent>) {
        if let Some(room) = self.room_mut(&sid) {
            room.events = events;
            return;
        }
        let idx = self.next_room;
        self.next_room = self.next_room.wrapping_add(1);
        let udp = self.advertised.iter().map(|a| (*a, Protocol::Udp));
        let tcp = self.advertised_tcp.iter().map(|a| (*a, Protocol::Tcp));
        let candidates = udp.chain(tcp).collect();
        let config = RouterConfig {
            dtls_cert: Some(self.cert.clone()),
            candidates,
            data_channels: super::livekit_data_channels(),
            congestion_control: self.congestion_control.clone(),
        };
        let now = Instant::now();
        debug!(room = %sid, "room opened");
        self.room_idx.insert(sid.clone(), idx);
        self.rooms.insert(
            idx,
            RoomMedia {
                sid,
                router: Router::new(config, now),
                events,
                peers: HashMap::new(),
                transports: HashMap::new(),
                tracks: HashMap::new(),
                producer_tracks: HashMap::new(),
                consumers: HashMap::new(),
                settings: HashMap::new(),
                speakers: HashSet::new(),
                announced_layers: HashMap::new(),
                dropped_lossy: 0,
                reliable_delivered: 0,
                slow_receivers: Vec::new(),
                waiting_data: HashMap::new(),
                reliable_receivers_dropped: 0,
                reported: RouterStats::default(),
                reported_dropped_lossy: 0,
                reported_reliable: (0, 0),
                next_timeout: now,
            },
        );
    }

    /// Drops a room's router and forgets every transport of it.
    fn close_room(&mut self, idx: RoomIdx) {
        let Some(mut room) = self.rooms.remove(&idx) else {
            return;
        };
        self.room_idx.remove(&room.sid);
        for (tid, entry) in &room.transports {
            self.demux.forget(idx, *tid, &entry.ufrags);
            for ufrag in &entry.ufrags {
                self.registry.remove(ufrag);
            }
            self.net.close_tcp_of(self.poll.registry(), idx, *tid);
        }
        let stats = room.router.stats();
        report(&self.net.metrics, &mut room, stats);
        debug!(room = %room.sid, "room closed");
    }

    fn new_transport(
        &mut self,
        idx: RoomIdx,
        participant: &ParticipantSid,
        direction: TransportDirection,
    ) -> Option<TransportId> {
        let mut ufrag = random_string(8);
        while self.demux.by_ufrag.contains_key(&ufrag) {
            ufrag = random_string(8);
        }
        let password = random_string(24);
        let options = TransportOptions::new(direction, ufrag.clone(), password.clone());
        let entry = TransportEntry {
            participant: participant.clone(),
            direction,
            ufrags: vec![ufrag.clone()],
        };
        // The entry goes in before the drain, so that the first offer finds its peer.
        let tid = self.with_room(idx, |room| {
            let tid = room.router.create_transport(options);
            room.transports.insert(tid, entry);
            tid
        })?;
        self.route_ufrag(idx, tid, ufrag, password);
        Some(tid)
    }

    /// Routes STUN for local ufrag `ufrag` (UDP and ICE/TCP) to a transport. The ufrag
    /// before it stays routed (a client may still use it until its answer is in); older
    /// ones are forgotten, so restarts cannot grow the maps.
    fn route_ufrag(&mut self, idx: RoomIdx, tid: TransportId, ufrag: String, password: String) {
        self.registry.insert(&ufrag, self.index);
        let mut retired = Vec::new();
        if let Some(entry) = self
            .rooms
            .get_mut(&idx)
            .and_then(|r| r.transports.get_mut(&tid))
            && !entry.ufrags.contains(&ufrag)
        {
            entry.ufrags.push(ufrag.clone());
            while entry.ufrags.len() > ROUTED_UFRAGS {
                retired.push(entry.ufrags.remove(0));
            }
        }
        for old in retired {
            self.registry.remove(&old);
            self.demux.by_ufrag.remove(&old);
        }
        self.demux.by_ufrag.insert(
            ufrag,
            Route {
                room: idx,
                transport: tid,
                password,
            },
        );
    }

    /// After an ICE restart (ours or the client's), the transport's new ufrag routes to it.
    fn follow_ufrag(&mut self, idx: RoomIdx, tid: TransportId) {
        let Some((ufrag, password)) = self
            .rooms
            .get(&idx)
            .and_then(|r| r.router.transport(tid))
            .map(|t| (t.ice_ufrag().to_string(), t.ice_password().to_string()))
        else {
            return;
        };
        let routed = self
            .demux
            .by_ufrag
            .get(&ufrag)
            .is_some_and(|r| (r.room, r.transport) == (idx, tid));
        if !routed {
            debug!(%tid, "ice restarted; routing the new ufrag");
            self.route_ufrag(idx, tid, ufrag, password);
        }
    }

    fn room_mut(&mut self, sid: &RoomSid) -> Option<&mut RoomMedia> {
        let idx = self.room_idx.get(sid)?;
        self.rooms.get_mut(idx)
    }

    fn emit(&self, idx: RoomIdx, event: MediaEvent) {
        if let Some(room) = self.rooms.get(&idx) {
            room.emit(event);
        }
    }

    fn subscribe(&mut self, key: PeerKey, publisher: ParticipantSid, track_sid: TrackSid) {
        let Some(&idx) = self.room_idx.get(&key.room) else {
            return;
        };
        self.with_room(idx, |room| {
            let slot = (key.participant.clone(), track_sid.clone());
            if room.consumers.contains_key(&slot) {
                return;
            }
            let Some(&(producer, _)) = room.tracks.get(&track_sid) else {
                debug!(track = %track_sid, "subscribe to an unbound track");
                return;
            };
            let Some(transport) = room.peers.get(&key.participant).and_then(|p| p.subscriber)
            else {
                return;
            };
            // LiveKit clients find the track by the msid stream id `PA_x|TR_y`. The msid is
            // the same on every subscription to the track, so the router reactivates the
            // m-line an earlier subscription left idle instead of adding one.
            let mut options = ConsumerOptions::new(
                producer,
                transport,
                format!("{publisher}|{track_sid}"),
                track_sid.to_string(),
            );
            if let Some(&(paused, max_layer)) = room.settings.get(&slot) {
                options.paused = paused;
                options.preferred_layer = max_layer;
            }
            match room.router.consume(options) {
                Ok(c) => {
                    room.consumers.insert(slot, c);
                }
                Err(e) => debug!(track = %track_sid, "consume failed: {e}"),
            }
        });
    }

    fn add_peer(
        &mut self,
        key: PeerKey,
        identity: Identity,
        can_publish_data: bool,
        last_reliable_seq: Arc<AtomicU32>,
    ) {
        let Some(&idx) = self.room_idx.get(&key.room) else {
            debug!(room = %key.room, "peer for a room that is not open");
            return;
        };
        if self
            .rooms
            .get(&idx)
            .is_some_and(|r| r.peers.contains_key(&key.participant))
        {
            self.remove_peer(&key);
        }
        if let Some(room) = self.rooms.get_mut(&idx) {
            room.peers.insert(
                key.participant.clone(),
                Peer {
                    identity,
                    can_publish_data,
                    subscriber: None,
                    publisher: None,
                    last_reliable_seq,
                },
            );
        }
        let tid = self.new_transport(idx, &key.participant, TransportDirection::Subscriber);
        if let Some(room) = self.rooms.get_mut(&idx)
            && let Some(peer) = room.peers.get_mut(&key.participant)
        {
            peer.subscriber = tid;
        }
    }

    fn publisher_offer(&mut self, key: PeerKey, sdp: String, red: &RedTracks) {
        let Some(&idx) = self.room_idx.get(&key.room) else {
            return;
        };
        let existing = self
            .rooms
            .get(&idx)
            .and_then(|r| r.peers.get(&key.participant))
            .map(|p| p.publisher);
        let tid = match existing {
            None => return,
            Some(Some(tid)) => tid,
            Some(None) => {
                let Some(tid) =
                    self.new_transport(idx, &key.participant, TransportDirection::Publisher)
                else {
                    return;
                };
                if let Some(peer) = self
                    .rooms
                    .get_mut(&idx)
                    .and_then(|r| r.peers.get_mut(&key.participant))
                {
                    peer.publisher = Some(tid);
                }
                tid
            }
        };
        let event = match self.with_router(idx, |r| {
            r.accept_offer_with_red(tid, &sdp, &|audio| red.wants(audio))
        }) {
            Some(Ok(sdp)) => MediaEvent::PublisherAnswer {
                participant: key.participant,
                sdp,
            },
            Some(Err(e)) => MediaEvent::NegotiationFailed {
                participant: key.participant,
                direction: TransportDirection::Publisher,
                reason: e.to_string(),
            },
            None => return,
        };
        // The client's offer may restart ICE, and then our answer has a new ufrag.
        self.follow_ufrag(idx, tid);
        self.emit(idx, event);
    }

    /// A resumed session: the subscriber connection restarts ICE with a new offer.
    fn restart_ice(&mut self, key: &PeerKey) {
        let Some((idx, tid)) = self.transport_of(key, TransportDirection::Subscriber) else {
            return;
        };
        match self.with_router(idx, |r| r.restart_ice(tid)) {
            Some(Ok(_)) => self.follow_ufrag(idx, tid),
            Some(Err(e)) => debug!(participant = %key.participant, "no ice restart: {e}"),
            None => {}
        }
    }

    fn remove_peer(&mut self, key: &PeerKey) {
        let Some(&idx) = self.room_idx.get(&key.room) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&idx) else {
            return;
        };
        let Some(peer) = room.peers.remove(&key.participant) else {
            return;
        };
        room.consumers.retain(|(sub, _), _| *sub != key.participant);
        room.settings.retain(|(sub, _), _| *sub != key.participant);
        room.speakers.remove(&key.participant);
        for tid in [peer.subscriber, peer.publisher].into_iter().flatten() {
            room.waiting_data.remove(&tid);
            if let Some(entry) = room.transports.remove(&tid) {
                self.demux.forget(idx, tid, &entry.ufrags);
                for ufrag in &entry.ufrags {
                    self.registry.remove(ufrag);
                }
            }
            self.net.close_tcp_of(self.poll.registry(), idx, tid);
            let _ = room.router.close_transport(tid);
        }
        // Closing may have ended producers and consumers: their events go out now.
        self.with_room(idx, |_| {});
    }

    fn transport_of(
        &self,
        key: &PeerKey,
        direction: TransportDirection,
    ) -> Option<(RoomIdx, TransportId)> {
        let idx = *self.room_idx.get(&key.room)?;
        let peer = self.rooms.get(&idx)?.peers.get(&key.participant)?;
        let tid = match direction {
            TransportDirection::Subscriber => peer.subscriber,
            TransportDirection::Publisher => peer.publisher,
        }?;
        Some((idx, tid))
    }

    /// Runs `f` on a room's router and drains its outputs. A panic inside closes that room
    /// (its room is told its media failed) and leaves the worker running.
    fn with_room<R>(&mut self, idx: RoomIdx, f: impl FnOnce(&mut RoomMedia) -> R) -> Option<R> {
        let room = self.rooms.get_mut(&idx)?;
        let net = &mut self.net;
        let demux = &mut self.demux;
        let registry = self.poll.registry();
        let ufrags = &self.registry;
        let result = catch_unwind(AssertUnwindSafe(|| {
            let r = f(room);
            drain(idx, room, net, registry, demux, ufrags);
            r
        }));
        match result {
            Ok(r) => {
                if !room.slow_receivers.is_empty() {
                    self.drop_slow_receivers(idx);
                }
                Some(r)
            }
            Err(_) => {
                error!(room = %room.sid, "router panicked; closing the room's media");
                self.fail_room(idx);
                None
            }
        }
    }

    /// Closes the subscriber connections whose reliable data channel is full: the message
    /// cannot be delivered in order any more, and dropping it silently would break the
    /// channel's promise. The room asks those clients to rejoin.
    fn drop_slow_receivers(&mut self, idx: RoomIdx) {
        let Some(room) = self.rooms.get_mut(&idx) else {
            return;
        };
        let slow = std::mem::take(&mut room.slow_receivers);
        for tid in slow {
            room.waiting_data.remove(&tid);
            let Some(entry) = room.transports.remove(&tid) else {
                continue;
            };
            warn!(room = %room.sid, participant = %entry.participant, "reliable data backed up; closing the receiver's connection");
            room.reliable_receivers_dropped += 1;
            self.demux.forget(idx, tid, &entry.ufrags);
            for ufrag in &entry.ufrags {
                self.registry.remove(ufrag);
            }
            self.net.close_tcp_of(self.poll.registry(), idx, tid);
            if let Some(peer) = room.peers.get_mut(&entry.participant) {
                peer.subscriber = None;
            }
            let _ = room.router.close_transport(tid);
            room.emit(MediaEvent::Closed {
                participant: entry.participant,
                direction: entry.direction,
            });
        }
        self.with_room(idx, |_| {});
    }

    /// [`Self::with_room`] for calls that need only the router.
    fn with_router<R>(&mut self, idx: RoomIdx, f: impl FnOnce(&mut Router) -> R) -> Option<R> {
        self.with_room(idx, |room| f(&mut room.router))
    }

    fn fail_room(&mut self, idx: RoomIdx) {
        if let Some(room) = self.rooms.get(&idx) {
            room.emit(MediaEvent::RoomFailed);
        }
        self.close_room(idx);
    }
}

fn drain(
    idx: RoomIdx,
    room: &mut RoomMedia,
    net: &mut Net,
    registry: &mio::Registry,
    demux: &mut Demux,
    ufrags: &UfragRegistry,
) {
    loop {
        match room.router.poll_output() {
            Output::Transmit(t) => net.send(registry, &t),
            Output::Timeout(at) => {
                room.next_timeout = at;
                return;
            }
            Output::Event(event) => handle_event(idx, room, net, registry, demux, ufrags, event),
        }
    }
}

fn handle_event(
    idx: RoomIdx,
    room: &mut RoomMedia,
    net: &mut Net,
    registry: &mio::Registry,
    demux: &mut Demux,
    ufrags: &UfragRegistry,
    event: Event,
) {
    match event {
        Event::OfferReady {
            transport,
            sdp,
            ice_restart,
        } => {
            room.notify(transport, |participant, _| MediaEvent::SubscriberOffer {
                participant,
                sdp,
                ice_restart,
            });
        }
        Event::TransportConnected { transport } => {
            room.notify(transport, |participant, direction| MediaEvent::Connected {
                participant,
                direction,
            });
        }
        Event::TransportDisconnected { transport } => {
            debug!(room = %room.sid, %transport, "ice lost the client");
            room.notify(transport, |participant, direction| {
                MediaEvent::Disconnected {
                    participant,
                    direction,
                }
            });
        }
        Event::TransportClosed { transport, reason } => {
            warn!(room = %room.sid, %transport, ?reason, "transport closed");
            room.notify(transport, |participant, direction| MediaEvent::Closed {
                participant,
                direction,
            });
            room.waiting_data.remove(&transport);
            if let Some(entry) = room.transports.remove(&transport) {
                demux.forget(idx, transport, &entry.ufrags);
                net.close_tcp_of(registry, idx, transport);
                for ufrag in &entry.ufrags {
                    ufrags.remove(ufrag);
                }
                if let Some(peer) = room.peers.get_mut(&entry.participant) {
                    match entry.direction {
                        TransportDirection::Subscriber => peer.subscriber = None,
                        TransportDirection::Publisher => peer.publisher = None,
                    }
                }
            }
        }
        Event::DataChannelOpen { transport, kind } => {
            debug!(room = %room.sid, %transport, ?kind, "data channel open");
            if kind == DataKind::Reliable
                && let Some(waiting) = room.waiting_data.remove(&transport)
            {
                for bytes in waiting {
                    deliver(room, &[transport], DataKind::Reliable, &bytes);
                }
            }
        }
        Event::DataReceived {
            transport,
            kind,
            data,
        } => relay_data(room, transport, kind, &data),
        Event::ProducerCreated {
            producer,
            transport,
            kind,
            track_id,
            mid,
            mime,
        } => room.notify(transport, |participant, _| MediaEvent::ProducerCreated {
            participant,
            media: ProducedMedia {
                producer,
                cid: track_id,
                kind,
                mid: mid.to_string(),
                mime,
            },
        }),
        Event::ProducerClosed { producer } => {
            if let Some(track_sid) = room.producer_tracks.remove(&producer) {
                room.consumers.retain(|(_, t), _| *t != track_sid);
                room.settings.retain(|(_, t), _| *t != track_sid);
                room.announced_layers.remove(&producer);
                if let Some((_, publisher)) = room.tracks.remove(&track_sid) {
                    room.emit(MediaEvent::TrackEnded {
                        participant: publisher,
                        track_sid,
                    });
                }
            }
        }
        Event::ConsumerPausedForBandwidth {
            consumer, paused, ..
        } => {
            if let Some((participant, track_sid)) = room
                .consumers
                .iter()
                .find(|(_, c)| **c == consumer)
                .map(|(k, _)| k.clone())
            {
                room.emit(MediaEvent::StreamState {
                    participant,
                    track_sid,
                    paused,
                });
            }
        }
        Event::ConsumerClosed { consumer, .. } => {
            room.consumers.retain(|_, c| *c != consumer);
        }
        other => trace!(?other, "unhandled router event"),
    }
}

/// Scores every participant's connection from what the router saw of its transports.
fn report_quality(room: &RoomMedia, now: Instant) {
    let reports = room.router.link_reports(now);
    let report = |t: Option<TransportId>| t.and_then(|t| reports.get(&t).copied());
    let infos: Vec<proto::ConnectionQualityInfo> = room
        .peers
        .iter()
        .map(|(sid, peer)| {
            let (quality, score) = crate::connection_quality::score(
                report(peer.publisher).as_ref(),
                report(peer.subscriber).as_ref(),
            );
            proto::ConnectionQualityInfo {
                participant_sid: sid.to_string(),
                quality: quality as i32,
                score,
            }
        })
        .collect();
    if !infos.is_empty() {
        room.emit(MediaEvent::ConnectionQuality(infos));
    }
}

/// A data packet from a publisher: stamped with the sender and relayed to its destinations
/// (everyone else when it names none) on the same kind of channel. A reliable packet whose
/// sequence was already relayed (a client re-sending after a resume) is dropped.
fn relay_data(room: &mut RoomMedia, from: TransportId, kind: DataKind, data: &[u8]) {
    let Some(sender_sid) = room.transports.get(&from).map(|e| e.participant.clone()) else {
        return;
    };
    let Some(sender) = room.peers.get(&sender_sid) else {
        return;
    };
    if !sender.can_publish_data {
        trace!(participant = %sender_sid, "data dropped: no canPublishData");
        return;
    }
    let Ok(mut packet) = proto::DataPacket::decode(data) else {
        trace!(participant = %sender_sid, "undecodable data packet");
        return;
    };
    if kind == DataKind::Reliable && packet.sequence != 0 {
        let last = sender.last_reliable_seq.load(Ordering::Relaxed);
        if packet.sequence <= last {
            trace!(participant = %sender_sid, seq = packet.sequence, "repeated data dropped");
            return;
        }
        sender
            .last_reliable_seq
            .store(packet.sequence, Ordering::Relaxed);
    }
    packet.participant_identity = sender.identity.to_string();
    // The channel it came on says how it travels on (upstream trusts the channel too).
    #[allow(deprecated)]
    {
        packet.kind = match kind {
            DataKind::Reliable => proto::data_packet::Kind::Reliable,
            DataKind::Lossy => proto::data_packet::Kind::Lossy,
        } as i32;
    }
    let mut identities: HashSet<String> = std::mem::take(&mut packet.destination_identities)
        .into_iter()
        .collect();
    let mut sids: HashSet<String> = HashSet::new();
    // The deprecated per-packet fields are still read by older clients, so they are filled.
    #[allow(deprecated)]
    {
        packet.participant_sid = sender_sid.to_string();
        if let Some(proto::data_packet::Value::User(user)) = &mut packet.value {
            user.participant_identity = sender.identity.to_string();
            user.participant_sid = sender_sid.to_string();
            identities.extend(user.destination_identities.iter().cloned());
            sids.extend(user.destination_sids.iter().cloned());
        }
    }
    if identities.len() + sids.len() > MAX_DATA_DESTINATIONS {
        trace!(participant = %sender_sid, "data packet naming too many destinations dropped");
        return;
    }
    let targets: Vec<TransportId> = room
        .peers
        .iter()
        .filter(|(sid, _)| **sid != sender_sid)
        .filter(|(sid, p)| {
            (identities.is_empty() && sids.is_empty())
                || identities.contains(p.identity.as_str())
                || sids.contains(sid.as_str())
        })
        .filter_map(|(_, p)| p.subscriber)
        .collect();
    deliver(room, &targets, kind, &packet.encode_to_vec());
}

fn deliver(room: &mut RoomMedia, targets: &[TransportId], kind: DataKind, bytes: &[u8]) {
    for t in targets {
        match (room.router.send_data(*t, kind, bytes), kind) {
            (Ok(()), DataKind::Reliable) => room.reliable_delivered += 1,
            (Ok(()), DataKind::Lossy) => {}
            (Err(e), DataKind::Lossy) => {
                room.dropped_lossy += 1;
                trace!(transport = %t, "lossy data not delivered: {e}");
            }
            (Err(aviary_sfu::SendDataError::BufferFull), DataKind::Reliable) => {
                if !room.slow_receivers.contains(t) {
                    room.slow_receivers.push(*t);
                }
            }
            (Err(aviary_sfu::SendDataError::NotOpen), DataKind::Reliable) => {
                // Kept for when the channel opens; a receiver that never opens it and
                // keeps being sent to is treated as one that cannot keep up.
                let waiting = room.waiting_data.entry(*t).or_default();
                if waiting.len() < WAITING_DATA {
                    waiting.push(bytes.to_vec());
                } else if !room.slow_receivers.contains(t) {
                    room.slow_receivers.push(*t);
                }
            }
            (Err(e), DataKind::Reliable) => {
                // Its channel is not open (yet, or any more): nothing was promised to it.
                trace!(transport = %t, "reliable data not delivered: {e}");
            }
        }
    }
}

/// Tells the room who started or stopped speaking since the last time: the speakers now
/// (loudest first, `active`), and those who stopped (`active: false`), as upstream's
/// `SpeakersChanged` carries only changes.
fn announce_speakers(room: &mut RoomMedia, now: Instant) {
    let mut speaking: Vec<(ParticipantSid, f32)> = Vec::new();
    for (producer, level) in room.router.speakers(now) {
        let Some(publisher) = room
            .producer_tracks
            .get(&producer)
            .and_then(|track| room.tracks.get(track))
            .map(|(_, publisher)| publisher)
        else {
            continue;
        };
        // Several microphones of one participant: the loudest (they come loudest first).
        if !speaking.iter().any(|(sid, _)| sid == publisher) {
            speaking.push((publisher.clone(), level));
        }
    }
    let same = speaking.len() == room.speakers.len()
        && speaking.iter().all(|(sid, _)| room.speakers.contains(sid));
    if same {
        return;
    }
    let mut changed: Vec<proto::SpeakerInfo> = speaking
        .iter()
        .map(|(sid, level)| proto::SpeakerInfo {
            sid: sid.to_string(),
            level: *level,
            active: true,
        })
        .collect();
    changed.extend(
        room.speakers
            .iter()
            .filter(|sid| !speaking.iter().any(|(s, _)| s == *sid))
            .map(|sid| proto::SpeakerInfo {
                sid: sid.to_string(),
                level: 0.0,
                active: false,
            }),
    );
    room.speakers = speaking.into_iter().map(|(sid, _)| sid).collect();
    room.emit(MediaEvent::Speakers(changed));
}

/// Dynacast: tells the room, when it changed, which layers of each simulcast track anyone
/// receives, so that the publisher's SDK (with dynacast on) encodes only those.
fn announce_wanted_layers(room: &mut RoomMedia) {
    let mut changes = Vec::new();
    for (producer, track_sid) in &room.producer_tracks {
        let Some(wanted) = room.router.wanted_layer(*producer) else {
            continue;
        };
        if room.announced_layers.get(producer) == Some(&wanted) {
            continue;
        }
        if let Some((_, publisher)) = room.tracks.get(track_sid) {
            changes.push((*producer, publisher.clone(), track_sid.clone(), wanted));
        }
    }
    for (producer, participant, track_sid, max_layer) in changes {
        room.announced_layers.insert(producer, max_layer);
        room.emit(MediaEvent::SubscribedLayers {
            participant,
            track_sid,
            max_layer,
        });
    }
}

fn report(m: &WorkerMetrics, room: &mut RoomMedia, now: RouterStats) {
    let was = room.reported;
    m.rtp_in.inc_by(now.packets_received - was.packets_received);
    m.rtp_forwarded
        .inc_by(now.packets_forwarded - was.packets_forwarded);
    m.red_in.inc_by(now.red_received - was.red_received);
    m.red_forwarded
        .inc_by(now.red_forwarded - was.red_forwarded);
    m.red_unwrapped
        .inc_by(now.red_unwrapped - was.red_unwrapped);
    m.nacks.inc_by(now.nacks_received - was.nacks_received);
    m.plis_in
        .inc_by(now.keyframe_requests_received - was.keyframe_requests_received);
    m.plis_out
        .inc_by(now.keyframe_requests_sent - was.keyframe_requests_sent);
    m.data_dropped
        .inc_by(room.dropped_lossy - room.reported_dropped_lossy);
    let (delivered, dropped) = room.reported_reliable;
    m.data_reliable_delivered
        .inc_by(room.reliable_delivered - delivered);
    m.data_receivers_dropped
        .inc_by(room.reliable_receivers_dropped - dropped);
    room.reported_reliable = (room.reliable_delivered, room.reliable_receivers_dropped);
    room.reported = now;
    room.reported_dropped_lossy = room.dropped_lossy;
}
