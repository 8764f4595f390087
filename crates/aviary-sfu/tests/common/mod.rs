//! A simulated network for router tests: str0m clients and one `Router`, wired in memory,
//! on a simulated clock. Nothing here opens a socket or sleeps.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aviary_sfu::{
    Event, Output, Protocol, Receive, Router, RouterConfig, TransportDirection, TransportId,
    TransportOptions,
};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Rid, Simulcast, SimulcastLayer};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};
use str0m::{Candidate, Rtc};

/// One-way latency of every simulated link.
pub const LATENCY: Duration = Duration::from_millis(5);

/// A small seeded generator, so loss patterns repeat run to run.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(6364136223846793005).wrapping_add(1))
    }

    /// A value in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A simulated client: a str0m `Rtc` (RTP mode, full ICE) at its own address.
pub struct Client {
    pub name: String,
    pub rtc: Rtc,
    pub addr: SocketAddr,
    pub transport: TransportId,
    pub events: Vec<str0m::Event>,
    next_timeout: Instant,
    /// Probability that a packet from the router to this client is lost.
    pub loss_in: f64,
    /// Probability that a packet from this client to the router is lost.
    pub loss_out: f64,
    /// Packets the simulated network dropped on the way in / out.
    pub dropped_in: usize,
    pub dropped_out: usize,
    /// A bottleneck on the way from the router to this client: bits per second, and the
    /// bytes its drop-tail queue holds.
    pub rate_in: Option<(u64, usize)>,
    /// When the bottleneck has sent what it holds.
    link_free_at: Instant,
    /// Packets the router sent toward this client (before the bottleneck).
    pub sent_in: usize,
    /// RTP datagrams delivered to this client, by payload type (SRTP leaves the header in
    /// the clear): retransmissions show here under their RTX payload type.
    pub rtp_pts_in: HashMap<u8, usize>,
    /// RTP datagrams from this client that the network delivered, by payload type.
    pub rtp_pts_out: HashMap<u8, usize>,
}

/// The payload type of an SRTP datagram (None for RTCP, STUN, DTLS).
fn rtp_pt(data: &[u8]) -> Option<u8> {
    let is_rtp = data.len() >= 12 && data[0] >> 6 == 2 && !(192..=223).contains(&data[1]);
    is_rtp.then(|| data[1] & 0x7f)
}

impl Client {
    /// The RTX payload type this client's session pairs with `codec`'s, if negotiated.
    pub fn rtx_pt(&self, codec: Codec) -> Option<u8> {
        self.rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == codec)
            .and_then(|p| p.resend())
            .map(|pt| *pt)
    }

    /// Every RTP packet this client received.
    pub fn rtp(&self) -> Vec<&RtpPacket> {
        self.events
            .iter()
            .filter_map(|e| match e {
                str0m::Event::RtpPacket(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// Keyframe requests this client received (as a publisher) for simulcast layer `rid`.
    pub fn keyframe_requests_for(&self, rid: &str) -> usize {
        self.events
            .iter()
            .filter(
                |e| matches!(e, str0m::Event::KeyframeRequest(r) if r.rid.as_deref() == Some(rid)),
            )
            .count()
    }

    /// Keyframe requests this client received (as a publisher).
    pub fn keyframe_requests(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, str0m::Event::KeyframeRequest(_)))
            .count()
    }

    pub fn connected(&self) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, str0m::Event::Connected))
    }
}

struct Datagram {
    at: Instant,
    from: SocketAddr,
    to: SocketAddr,
    data: Vec<u8>,
}

/// The router, its clients and the wires between them.
pub struct Sim {
    pub now: Instant,
    pub router: Router,
    pub router_events: Vec<Event>,
    router_timeout: Instant,
    server: SocketAddr,
    pub clients: Vec<Client>,
    by_addr: HashMap<SocketAddr, usize>,
    wire: VecDeque<Datagram>,
    rng: Lcg,
    ufrag_seq: u32,
    /// While set, the router's offers wait unanswered (a client that lost its signaling).
    pub hold_offers: bool,
    /// Clients made while set offer Opus with RED (RFC 2198), as libwebrtc does.
    pub clients_use_red: bool,
}

impl Sim {
    pub fn new(seed: u64) -> Self {
        Self::with_config(seed, RouterConfig::default())
    }

    /// A simulation whose router has `config` (its candidates replaced by the simulated
    /// server address).
    pub fn with_config(seed: u64, mut config: RouterConfig) -> Self {
        let now = Instant::now();
        let server: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        config.candidates = vec![(server, Protocol::Udp)];
        Self {
            now,
            router: Router::new(config, now),
            router_events: Vec::new(),
            router_timeout: now,
            server,
            clients: Vec::new(),
            by_addr: HashMap::new(),
            wire: VecDeque::new(),
            rng: Lcg::new(seed),
            ufrag_seq: 0,
            hold_offers: false,
            clients_use_red: false,
        }
    }

    fn new_client(&mut self, name: &str, direction: TransportDirection) -> usize {
        self.ufrag_seq += 1;
        let options = TransportOptions::new(
            direction,
            format!("ufrag{}", self.ufrag_seq),
            format!("password-password-{:06}", self.ufrag_seq),
        );
        let transport = self.router.create_transport(options);
        let idx = self.clients.len();
        let addr: SocketAddr = format!("10.0.1.{}:6000", idx + 1).parse().unwrap();
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .enable_opus(true, self.clients_use_red)
            .build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        self.clients.push(Client {
            name: name.to_string(),
            rtc,
            addr,
            transport,
            events: Vec::new(),
            next_timeout: self.now,
            loss_in: 0.0,
            loss_out: 0.0,
            dropped_in: 0,
            dropped_out: 0,
            rate_in: None,
            link_free_at: self.now,
            sent_in: 0,
            rtp_pts_in: HashMap::new(),
            rtp_pts_out: HashMap::new(),
        });
        self.by_addr.insert(addr, idx);
        idx
    }

    /// A subscriber client: the router's offer is answered and ICE/DTLS run until connected.
    pub fn join_subscriber(&mut self, name: &str) -> usize {
        let idx = self.new_client(name, TransportDirection::Subscriber);
        self.drain_router();
        self.answer_pending_offers();
        self.run_until(Duration::from_secs(5), |s| s.clients[idx].connected());
        assert!(self.clients[idx].connected(), "{name} did not connect");
        idx
    }

    /// A publisher client sending the given kinds; returns its index and mids.
    pub fn join_publisher(&mut self, name: &str, kinds: &[MediaKind]) -> (usize, Vec<Mid>) {
        let idx = self.new_client(name, TransportDirection::Publisher);
        let mut api = self.clients[idx].rtc.sdp_api();
        let mids: Vec<Mid> = kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                api.add_media(
                    *kind,
                    Direction::SendOnly,
                    Some(format!("{name}-stream")),
                    Some(format!("{name}-track{i}")),
                    None,
                )
            })
            .collect();
        let (offer, pending) = api.apply().expect("an offer");
        self.publish_offer(idx, offer, pending);
        (idx, mids)
    }

    /// The router answers a publisher's offer, and the client connects.
    fn publish_offer(&mut self, idx: usize, offer: SdpOffer, pending: SdpPendingOffer) {
        let answer = self
            .router
            .accept_offer(self.clients[idx].transport, &offer.to_sdp_string())
            .expect("router answers");
        let answer = SdpAnswer::from_sdp_string(&answer).unwrap();
        self.clients[idx]
            .rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .unwrap();
        self.drain_router();
        self.run_until(Duration::from_secs(5), |s| s.clients[idx].connected());
        let name = &self.clients[idx].name;
        assert!(self.clients[idx].connected(), "{name} did not connect");
    }

    /// A publisher client sending one video m-line with simulcast layers `rids`.
    pub fn join_simulcast_publisher(&mut self, name: &str, rids: &[&str]) -> (usize, Mid) {
        let idx = self.new_client(name, TransportDirection::Publisher);
        let mut simulcast = Simulcast::new();
        simulcast.send = rids.iter().map(|r| SimulcastLayer::new(r)).collect();
        let mut api = self.clients[idx].rtc.sdp_api();
        let mid = api.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            Some(format!("{name}-stream")),
            Some(format!("{name}-track0")),
            Some(simulcast),
        );
        let (offer, pending) = api.apply().expect("an offer");
        self.publish_offer(idx, offer, pending);
        (idx, mid)
    }

    /// Answers every `OfferReady` the router produced for our clients.
    pub fn answer_pending_offers(&mut self) {
        if self.hold_offers {
            return;
        }
        let offers: Vec<(TransportId, String)> = self
            .router_events
            .iter()
            .filter_map(|e| match e {
                Event::OfferReady { transport, sdp, .. } => Some((*transport, sdp.clone())),
                _ => None,
            })
            .collect();
        self.router_events
            .retain(|e| !matches!(e, Event::OfferReady { .. }));
        for (transport, sdp) in offers {
            let Some(idx) = self.clients.iter().position(|c| c.transport == transport) else {
                continue;
            };
            let offer = SdpOffer::from_sdp_string(&sdp).unwrap();
            let answer = self.clients[idx].rtc.sdp_api().accept_offer(offer).unwrap();
            // The transport may have closed meanwhile.
            let _ = self
                .router
                .accept_answer(transport, &answer.to_sdp_string());
            self.drain_router();
        }
    }

    /// Writes one RTP packet from a publisher client on `mid`.
    pub fn send_rtp(&mut self, idx: usize, mid: Mid, seq: u64, ts: u32, payload: &[u8]) {
        self.send_rtp_layer(idx, mid, None, seq, ts, payload);
    }

    /// Writes one audio packet with payload type `pt` from a publisher client on `mid`.
    pub fn send_audio_pt(&mut self, idx: usize, mid: Mid, pt: u8, seq: u64, payload: &[u8]) {
        let now = self.now;
        let c = &mut self.clients[idx];
        let mut api = c.rtc.direct_api();
        let tx = api.stream_tx_by_mid(mid, None).expect("send stream");
        let ts = (seq as u32).wrapping_mul(960);
        tx.write_rtp(RtpWrite::new(pt.into(), seq.into(), ts, now, payload.to_vec()).marker(true));
        self.drain_client(idx);
    }

    /// Writes one audio packet carrying an RFC 6464 audio level (-127..=0 dBov).
    pub fn send_rtp_level(&mut self, idx: usize, mid: Mid, seq: u64, ts: u32, level: i8) {
        let now = self.now;
        let c = &mut self.clients[idx];
        let pt = c
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus)
            .unwrap()
            .pt();
        let mut api = c.rtc.direct_api();
        let tx = api.stream_tx_by_mid(mid, None).expect("send stream");
        tx.write_rtp(
            RtpWrite::new(pt, seq.into(), ts, now, vec![0xf8, 0xff, 0xfe])
                .marker(true)
                .ext_vals(ExtensionValues {
                    audio_level: Some(level),
                    voice_activity: Some(true),
                    ..Default::default()
                }),
        );
        self.drain_client(idx);
    }

    /// Writes one RTP packet from a publisher client on `mid`, simulcast layer `rid`.
    pub fn send_rtp_layer(
        &mut self,
        idx: usize,
        mid: Mid,
        rid: Option<&str>,
        seq: u64,
        ts: u32,
        payload: &[u8],
    ) {
        let now = self.now;
        let c = &mut self.clients[idx];
        let kind = c.rtc.media(mid).unwrap().kind();
        let codec = if kind == MediaKind::Audio {
            Codec::Opus
        } else {
            Codec::Vp8
        };
        let pt = c
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == codec)
            .unwrap()
            .pt();
        let mut api = c.rtc.direct_api();
        let tx = api
            .stream_tx_by_mid(mid, rid.map(Rid::from))
            .expect("send stream");
        tx.write_rtp(
            RtpWrite::new(pt, seq.into(), ts, now, payload.to_vec())
                .marker(true)
                .nackable(true)
                // As libwebrtc does, every packet names its layer.
                .ext_vals(ExtensionValues {
                    rid: rid.map(Rid::from),
                    ..Default::default()
                }),
        );
        self.drain_client(idx);
    }

    /// Takes what the router has to send and report.
    pub fn drain_router(&mut self) {
        loop {
            match self.router.poll_output() {
                Output::Transmit(t) => {
                    let target = self.by_addr.get(&t.destination).copied();
                    let lost =
                        target.is_some_and(|i| self.rng.next_f64() < self.clients[i].loss_in);
                    let mut at = self.now + LATENCY;
                    let mut overflow = false;
                    if let Some(i) = target {
                        let c = &mut self.clients[i];
                        c.sent_in += 1;
                        if let Some((rate, queue)) = c.rate_in {
                            // Serialized behind what the bottleneck already holds.
                            let start = c.link_free_at.max(self.now);
                            let held =
                                start.duration_since(self.now).as_secs_f64() * rate as f64 / 8.0;
                            let bytes = t.contents.len() + 28;
                            if held as usize + bytes > queue {
                                overflow = true;
                            } else {
                                let on_wire =
                                    Duration::from_secs_f64(bytes as f64 * 8.0 / rate as f64);
                                c.link_free_at = start + on_wire;
                                at = c.link_free_at + LATENCY;
                            }
                        }
                    }
                    if let (true, Some(i)) = (lost || overflow, target) {
                        self.clients[i].dropped_in += 1;
                    } else {
                        self.wire.push_back(Datagram {
                            at,
                            from: t.source,
                            to: t.destination,
                            data: t.contents.to_vec(),
                        });
                    }
                }
                Output::Event(e) => self.router_events.push(e),
                Output::Timeout(t) => {
                    self.router_timeout = t;
                    return;
                }
            }
        }
    }

    fn drain_client(&mut self, idx: usize) {
        loop {
            let c = &mut self.clients[idx];
            match c.rtc.poll_output().expect("client poll") {
                str0m::Output::Transmit(t) => {
                    if self.rng.next_f64() < self.clients[idx].loss_out {
                        self.clients[idx].dropped_out += 1;
                        continue;
                    }
                    if let Some(pt) = rtp_pt(&t.contents) {
                        *self.clients[idx].rtp_pts_out.entry(pt).or_default() += 1;
                    }
                    self.wire.push_back(Datagram {
                        at: self.now + LATENCY,
                        from: t.source,
                        to: t.destination,
                        data: t.contents.to_vec(),
                    });
                }
                str0m::Output::Event(e) => c.events.push(e),
                str0m::Output::Timeout(t) => {
                    c.next_timeout = t;
                    return;
                }
            }
        }
    }

    /// Advances to the next deadline or delivery and handles it.
    pub fn step(&mut self) {
        let next_wire = self.wire.iter().map(|d| d.at).min();
        let next_client = self.clients.iter().map(|c| c.next_timeout).min();
        let next = [Some(self.router_timeout), next_wire, next_client]
            .into_iter()
            .flatten()
            .min()
            .unwrap();
        // Time never goes backwards, and always moves a little so loops make progress.
        self.now = next.max(self.now + Duration::from_micros(100));
        let now = self.now;
        let due: Vec<Datagram> = {
            let (due, keep): (Vec<_>, Vec<_>) = self.wire.drain(..).partition(|d| d.at <= now);
            self.wire = keep.into();
            due
        };
        for d in due {
            if d.to == self.server {
                if let Some(&idx) = self.by_addr.get(&d.from) {
                    let transport = self.clients[idx].transport;
                    if let Ok(r) = Receive::new(Protocol::Udp, d.from, d.to, &d.data) {
                        let _ = self.router.handle_receive(now, transport, r);
                    }
                    self.drain_router();
                }
            } else if let Some(&idx) = self.by_addr.get(&d.to) {
                if let Some(pt) = rtp_pt(&d.data) {
                    *self.clients[idx].rtp_pts_in.entry(pt).or_default() += 1;
                }
                if let Ok(r) = Receive::new(Protocol::Udp, d.from, d.to, &d.data) {
                    let _ = self.clients[idx]
                        .rtc
                        .handle_input(str0m::Input::Receive(now, r));
                }
                self.drain_client(idx);
            }
        }
        if self.router_timeout <= now {
            self.router.handle_timeout(now);
            self.drain_router();
        }
        for idx in 0..self.clients.len() {
            if self.clients[idx].next_timeout <= now {
                let _ = self.clients[idx]
                    .rtc
                    .handle_input(str0m::Input::Timeout(now));
                self.drain_client(idx);
            }
        }
        self.answer_pending_offers();
    }

    /// Steps until `done` or `limit` of simulated time passes.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) {
        let end = self.now + limit;
        while self.now < end && !done(self) {
            self.step();
        }
    }

    /// Steps for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(d, |_| false);
    }
}

impl Sim {
    /// Producers the router reported, in order.
    pub fn producers(&self) -> Vec<(aviary_sfu::ProducerId, MediaKind)> {
        self.router_events
            .iter()
            .filter_map(|e| match e {
                Event::ProducerCreated { producer, kind, .. } => Some((*producer, *kind)),
                _ => None,
            })
            .collect()
    }

    /// Forwards `producer` to subscriber client `sub` and completes the renegotiation.
    pub fn consume(
        &mut self,
        producer: aviary_sfu::ProducerId,
        sub: usize,
    ) -> aviary_sfu::ConsumerId {
        let transport = self.clients[sub].transport;
        let options = aviary_sfu::ConsumerOptions::new(
            producer,
            transport,
            "pub-stream".into(),
            format!("track-{producer}"),
        );
        let id = self.router.consume(options).expect("consume");
        self.drain_router();
        self.answer_pending_offers();
        self.run_for(Duration::from_millis(50));
        id
    }

    /// Sends `count` packets from a publisher on `mid`, `gap` apart, starting at `first_seq`.
    pub fn stream(
        &mut self,
        publisher: usize,
        mid: Mid,
        first_seq: u64,
        count: u64,
        gap: Duration,
        ts_step: u32,
    ) {
        for i in 0..count {
            let seq = first_seq + i;
            let payload = seq.to_be_bytes();
            self.send_rtp(
                publisher,
                mid,
                seq,
                (seq as u32).wrapping_mul(ts_step),
                &payload,
            );
            self.run_for(gap);
        }
    }
}

/// A VP8 payload as a simulcast encoder sends it: descriptor with a 15-bit picture id (each
/// layer's encoder numbers its pictures from its own start), TL0PICIDX and KEYIDX, the S
/// bit on a frame's `first` packet, a payload header whose P bit marks a keyframe, then
/// which layer and frame it is.
pub fn vp8_payload(layer: u8, frame: u16, keyframe: bool, first: bool) -> Vec<u8> {
    let picture_id = (u16::from(layer) * 10_000 + frame) & 0x7fff;
    vec![
        if first { 0x90 } else { 0x80 },
        0xf0,
        0x80 | (picture_id >> 8) as u8,
        picture_id as u8,
        (layer * 50).wrapping_add(frame as u8),
        layer,
        if keyframe { 0x00 } else { 0x01 },
        layer,
        (frame >> 8) as u8,
        frame as u8,
    ]
}

/// The publisher's sequence number a subscriber's packet carries in its payload.
pub fn payload_seq(p: &RtpPacket) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&p.payload[..8]);
    u64::from_be_bytes(b)
}

impl Sim {
    /// Has a publisher write `count` RTP packets on `mid` and returns the datagrams it would
    /// send, without delivering them (for benchmarks that feed the router directly).
    pub fn capture_rtp(
        &mut self,
        idx: usize,
        mid: Mid,
        first_seq: u64,
        count: u64,
        payload: &[u8],
    ) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
        let mut out = Vec::with_capacity(count as usize);
        for i in 0..count {
            let seq = first_seq + i;
            let c = &mut self.clients[idx];
            let kind = c.rtc.media(mid).unwrap().kind();
            let codec = if kind == MediaKind::Audio {
                Codec::Opus
            } else {
                Codec::Vp8
            };
            let pt = c
                .rtc
                .codec_config()
                .find(|p| p.spec().codec == codec)
                .unwrap()
                .pt();
            let now = self.now;
            let mut api = c.rtc.direct_api();
            api.stream_tx_by_mid(mid, None)
                .unwrap()
                .write_rtp(RtpWrite::new(
                    pt,
                    seq.into(),
                    (seq as u32).wrapping_mul(3000),
                    now,
                    payload.to_vec(),
                ));
            // The packet leaves through str0m's pacer, so time may have to move a little.
            let before = out.len();
            for _ in 0..100 {
                match c.rtc.poll_output().unwrap() {
                    str0m::Output::Transmit(t) => {
                        if t.contents.first().is_some_and(|b| (128..=191).contains(b)) {
                            out.push((t.source, t.destination, t.contents.to_vec()));
                        }
                    }
                    str0m::Output::Event(e) => c.events.push(e),
                    str0m::Output::Timeout(t) => {
                        c.next_timeout = t;
                        if out.len() > before {
                            break;
                        }
                        self.now = self.now.max(t) + Duration::from_micros(10);
                        let _ = c.rtc.handle_input(str0m::Input::Timeout(self.now));
                    }
                }
            }
        }
        out
    }

    /// Feeds captured datagrams straight to the router and discards what it sends. Returns
    /// how many datagrams it sent and the wall time spent inside the router; every 100
    /// packets the clients run for a few simulated ms (not timed) to keep ICE alive.
    pub fn feed_router(
        &mut self,
        transport: TransportId,
        packets: &[(SocketAddr, SocketAddr, Vec<u8>)],
    ) -> (usize, Duration) {
        let mut sent = 0;
        let mut busy = Duration::ZERO;
        for (i, (from, to, data)) in packets.iter().enumerate() {
            if i % 100 == 99 {
                self.run_for(Duration::from_millis(5));
            }
            self.now += Duration::from_micros(50);
            let start = Instant::now();
            if let Ok(r) = Receive::new(Protocol::Udp, *from, *to, data) {
                let _ = self.router.handle_receive(self.now, transport, r);
            }
            // Written packets leave through each transport's pacer on its next timeout, as in
            // the worker's loop.
            for _ in 0..2 {
                loop {
                    match self.router.poll_output() {
                        Output::Transmit(_) => sent += 1,
                        Output::Event(e) => self.router_events.push(e),
                        Output::Timeout(t) => {
                            self.now = self.now.max(t);
                            break;
                        }
                    }
                }
                self.router.handle_timeout(self.now);
            }
            busy += start.elapsed();
        }
        // Whatever the pacers still hold goes out as time passes.
        let start = Instant::now();
        let mut quiet = 0;
        while quiet < 3 {
            self.now += Duration::from_millis(1);
            self.router.handle_timeout(self.now);
            let before = sent;
            loop {
                match self.router.poll_output() {
                    Output::Transmit(_) => sent += 1,
                    Output::Event(e) => self.router_events.push(e),
                    Output::Timeout(_) => break,
                }
            }
            quiet = if sent == before { quiet + 1 } else { 0 };
        }
        (sent, busy + start.elapsed())
    }
}
