//! The router: one per room, owner of every transport, producer and consumer in it.
//!
//! It holds no locks and no clock; the worker that owns it feeds it time and datagrams and
//! drains its outputs (see the crate docs for the run-loop contract). A publisher's RTP
//! packet is forwarded to every consumer within the call that received it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::format::Codec;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Rids};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::rtp::RtpPacket;
use str0m::{Candidate, IceCreds, Input, Rtc};
use tracing::{debug, trace};

use crate::allocator::TrackDemand;
use crate::consumer::{Consumer, ConsumerOptions, RedOut};
use crate::error::ConsumeError;
use crate::layers::{Layer, Vp8Munger, sort_layers, target_layer};
use crate::loudness::Loudness;
use crate::output::{
    ConsumerCloseReason, DataChannelLabels, DataKind, Event, LinkReport, Output, RouterStats,
};
use crate::producer::Producer;
use crate::rewrite::Rewriter;
use crate::selector::{Allowed, LayerSelector};
use crate::transport::{
    Internal, Numbering, Reused, Sink, Transport, TransportDirection, TransportOptions,
};
use crate::{
    ConsumerId, DtlsCert, NegotiateError, OfferedAudio, ProducerId, SendDataError, TransportError,
    TransportId,
};

/// Lasting settings of a router.
#[derive(Clone, Debug, Default)]
pub struct RouterConfig {
    /// Certificate shared by every transport; generated per transport when unset.
    pub dtls_cert: Option<DtlsCert>,
    /// The local addresses (and protocols) offered as host candidates.
    pub candidates: Vec<(SocketAddr, Protocol)>,
    /// The labels of the data channels subscriber transports open and publishers' clients
    /// are expected to open.
    pub data_channels: DataChannelLabels,
    /// Estimate each subscriber's bandwidth and fit what it receives into it; `None` sends
    /// every subscriber what it asked for.
    pub congestion_control: Option<CongestionControl>,
}

/// How subscribers' bandwidth is estimated and shared.
#[derive(Clone, Debug)]
pub struct CongestionControl {
    /// The estimate a subscriber starts with, in bits per second, until feedback refines it.
    pub initial_estimate: u64,
    /// A video track that does not fit even at its lowest layer is paused (else it keeps
    /// that layer).
    pub allow_pause: bool,
}

impl Default for CongestionControl {
    fn default() -> Self {
        Self {
            initial_estimate: 1_500_000,
            allow_pause: false,
        }
    }
}

/// Loss figures older than this no longer describe the link.
const LOSS_FRESH: Duration = Duration::from_secs(6);

/// How often each subscriber's bandwidth is shared out again.
const ALLOCATE_INTERVAL: Duration = Duration::from_millis(250);

/// How long to sleep when no transport wants a wake-up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often str0m reports per-stream statistics.
const STATS_INTERVAL: Duration = Duration::from_secs(2);

/// A room's media plane.
pub struct Router {
    config: RouterConfig,
    /// Boxed: a `Transport` (with its `Rtc`) is ~10 KiB, and a map of them inline would
    /// keep that much per empty slot.
    transports: HashMap<TransportId, Box<Transport>>,
    producers: HashMap<ProducerId, Producer>,
    consumers: HashMap<ConsumerId, Consumer>,
    producer_by_mid: HashMap<(TransportId, Mid), ProducerId>,
    consumer_by_mid: HashMap<(TransportId, Mid), ConsumerId>,
    next_id: u64,
    sink: Sink,
    /// Subscriber transports written to while forwarding one packet; driven once at the end.
    touched: Vec<TransportId>,
    now: Instant,
    packets_received: u64,
    packets_forwarded: u64,
    red_received: u64,
    red_forwarded: u64,
    red_unwrapped: u64,
    keyframe_requests_sent: u64,
    /// Feedback counted on transports that are gone, so the totals never go down.
    retired_nacks: u64,
    retired_keyframe_requests: u64,
    /// When bandwidth is next shared out (with congestion control on).
    next_allocation: Instant,
}

impl Router {
    /// A router with no transports, at time `now`.
    pub fn new(config: RouterConfig, now: Instant) -> Self {
        Self {
            config,
            transports: HashMap::new(),
            producers: HashMap::new(),
            consumers: HashMap::new(),
            producer_by_mid: HashMap::new(),
            consumer_by_mid: HashMap::new(),
            next_id: 1,
            sink: Sink {
                now: Some(now),
                ..Sink::default()
            },
            touched: Vec::new(),
            now,
            packets_received: 0,
            packets_forwarded: 0,
            red_received: 0,
            red_forwarded: 0,
            red_unwrapped: 0,
            keyframe_requests_sent: 0,
            retired_nacks: 0,
            retired_keyframe_requests: 0,
            next_allocation: now + ALLOCATE_INTERVAL,
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Creates a transport. A subscriber gets the two LiveKit data channels and its first
    /// offer comes out as [`Event::OfferReady`].
    pub fn create_transport(&mut self, options: TransportOptions) -> TransportId {
        let id = TransportId(self.next_id());
        let mut builder = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            // Opus with RED, as LiveKit offers it; forwarded as is when both ends have it.
            .enable_opus(true, true)
            // Egress stats carry the NACK/PLI counts reported in metrics.
            .set_stats_interval(Some(STATS_INTERVAL))
            .set_local_ice_credentials(IceCreds {
                ufrag: options.ice_ufrag.clone(),
                pass: options.ice_pwd.clone(),
            });
        if let Some(cert) = &self.config.dtls_cert {
            builder = builder.set_dtls_cert(cert.clone());
        }
        if let Some(cc) = &self.config.congestion_control
            && options.direction == TransportDirection::Subscriber
        {
            builder = builder.enable_bwe(Some(Bitrate::bps(cc.initial_estimate)));
        }
        let mut rtc = builder.build(self.now);
        for (addr, proto) in &self.config.candidates {
            let candidate = match proto {
                // We only accept TCP connections (RFC 6544 passive).
                Protocol::Tcp => Candidate::builder()
                    .tcp()
                    .host(*addr)
                    .tcptype(TcpType::Passive)
                    .build(),
                _ => Candidate::host(*addr, *proto),
            };
            match candidate {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => debug!(%addr, "unusable local candidate: {e}"),
            }
        }
        let direction = options.direction;
        let mut transport = Transport::new(id, options, self.config.data_channels.clone(), rtc);
        if direction == TransportDirection::Subscriber {
            transport.add_server_channels();
            transport.offer_if_needed(&mut self.sink);
        }
        transport.drive(&mut self.sink);
        self.transports.insert(id, Box::new(transport));
        self.after(id);
        id
    }

    /// Closes a transport at once, with its producers and consumers (their events follow).
    pub fn close_transport(&mut self, id: TransportId) -> Result<(), TransportError> {
        let mut t = self
            .transports
            .remove(&id)
            .ok_or(TransportError::NotFound(id))?;
        t.rtc.disconnect();
        self.retire(&t);
        self.forget_transport(id);
        Ok(())
    }

    /// Answers a publisher's offer (with RED first wherever Opus with RED was offered).
    pub fn accept_offer(&mut self, id: TransportId, sdp: &str) -> Result<String, NegotiateError> {
        self.accept_offer_with_red(id, sdp, &|_| None)
    }

    /// Answers a publisher's offer, asking for RED audio (Opus with redundancy) where
    /// `wants_red` says `Some(true)` and for plain Opus where it says `Some(false)`, on the
    /// audio m-lines whose offer has both.
    pub fn accept_offer_with_red(
        &mut self,
        id: TransportId,
        sdp: &str,
        wants_red: &dyn Fn(OfferedAudio<'_>) -> Option<bool>,
    ) -> Result<String, NegotiateError> {
        let t = self
            .transports
            .get_mut(&id)
            .ok_or(NegotiateError::NotFound(id))?;
        let answer = t.accept_offer(sdp, wants_red, &mut self.sink);
        self.after(id);
        answer
    }

    /// Takes a subscriber's answer to our offer; a further offer follows if changes waited.
    pub fn accept_answer(&mut self, id: TransportId, sdp: &str) -> Result<(), NegotiateError> {
        let t = self
            .transports
            .get_mut(&id)
            .ok_or(NegotiateError::NotFound(id))?;
        let (result, assigned) = t.accept_answer(sdp, &mut self.sink);
        // The payload types a consumer picked before the answer were from our offer (RED
        // among them); the subscriber may have answered without some.
        for c in self.consumers.values_mut().filter(|c| c.transport == id) {
            c.pt_map.clear();
        }
        self.assign_mids(id, assigned);
        self.after(id);
        result
    }

    /// Restarts ICE on a subscriber transport: a new offer with fresh local credentials
    /// follows as [`Event::OfferReady`] (after the answer to an offer still in flight, which
    /// is sent again first). Returns the transport's ufrag: the new one when the restart
    /// offer was made now, which the caller must route to this transport from now on (the
    /// old one stays valid until the client answers).
    pub fn restart_ice(&mut self, id: TransportId) -> Result<String, NegotiateError> {
        let t = self
            .transports
            .get_mut(&id)
            .ok_or(NegotiateError::NotFound(id))?;
        if t.direction() != TransportDirection::Subscriber {
            return Err(NegotiateError::WrongDirection(id));
        }
        let assigned = t.restart_ice(&mut self.sink);
        let ufrag = t.ice_ufrag().to_string();
        self.assign_mids(id, assigned);
        self.after(id);
        Ok(ufrag)
    }

    /// Adds a trickled remote candidate (`candidate:...` line). Empty means end of candidates.
    pub fn add_remote_candidate(
        &mut self,
        id: TransportId,
        candidate: &str,
    ) -> Result<(), NegotiateError> {
        let t = self
            .transports
            .get_mut(&id)
            .ok_or(NegotiateError::NotFound(id))?;
        if candidate.trim().is_empty() {
            return Ok(());
        }
        t.add_remote_candidate(candidate)?;
        t.drive(&mut self.sink);
        Ok(())
    }

    /// Sends a message on one of the transport's data channels.
    pub fn send_data(
        &mut self,
        id: TransportId,
        kind: DataKind,
        data: &[u8],
    ) -> Result<(), SendDataError> {
        let t = self
            .transports
            .get_mut(&id)
            .ok_or(SendDataError::NotFound(id))?;
        let result = t.send_data(kind, data, &mut self.sink);
        self.after(id);
        result
    }

    /// Forwards `producer` to a subscriber transport. The m-line is offered at the next
    /// negotiation (at once if none is in flight).
    pub fn consume(&mut self, options: ConsumerOptions) -> Result<ConsumerId, ConsumeError> {
        let producer = self
            .producers
            .get(&options.producer)
            .ok_or(ConsumeError::ProducerNotFound(options.producer))?;
        let kind = producer.kind;
        let clock_rate = if kind == MediaKind::Audio {
            48_000
        } else {
            90_000
        };
        let t = self
            .transports
            .get_mut(&options.transport)
            .ok_or(ConsumeError::TransportNotFound(options.transport))?;
        if t.direction() != TransportDirection::Subscriber {
            return Err(ConsumeError::NotASubscriber(options.transport));
        }
        let id = ConsumerId(self.next_id);
        self.next_id += 1;
        let (mid, rewriter, vp8) =
            match t.add_consumer_media(id, kind, options.stream_id, options.track_id) {
                // The m-line's numbering carries on from its last consumer.
                Some(Reused { mid, numbering }) => {
                    let (mut rewriter, mut vp8) = (numbering.rewriter, numbering.vp8);
                    rewriter.resync();
                    vp8.resync();
                    (mid, rewriter, vp8)
                }
                None => (None, Rewriter::new(clock_rate), Vp8Munger::default()),
            };
        if let Some(mid) = mid {
            self.consumer_by_mid.insert((options.transport, mid), id);
        }
        self.consumers.insert(
            id,
            Consumer {
                id,
                producer: options.producer,
                transport: options.transport,
                kind,
                mid,
                paused: options.paused,
                started: false,
                rewriter,
                pt_map: HashMap::new(),
                packets: 0,
                selector: LayerSelector::new(options.preferred_layer),
                vp8,
            },
        );
        if let Some(p) = self.producers.get_mut(&options.producer) {
            p.consumers.push(id);
        }
        let assigned = match self.transports.get_mut(&options.transport) {
            Some(t) => t.offer_if_needed(&mut self.sink),
            None => Vec::new(),
        };
        self.assign_mids(options.transport, assigned);
        self.after(options.transport);
        Ok(id)
    }

    /// Closes a producer from the server side (its publisher lost the right to publish):
    /// its consumers close and [`Event::ProducerClosed`] follows. The publisher's m-line
    /// stays until it renegotiates; what it still sends is dropped.
    pub fn close_producer(&mut self, id: ProducerId) -> Result<(), ConsumeError> {
        if !self.producers.contains_key(&id) {
            return Err(ConsumeError::ProducerNotFound(id));
        }
        self.remove_producer(id);
        Ok(())
    }

    /// Stops forwarding and removes the consumer; its m-line is stopped at the next offer.
    pub fn close_consumer(&mut self, id: ConsumerId) -> Result<(), ConsumeError> {
        if !self.consumers.contains_key(&id) {
            return Err(ConsumeError::ConsumerNotFound(id));
        }
        self.remove_consumer(id, ConsumerCloseReason::Local, false);
        Ok(())
    }

    /// Pauses or resumes a consumer. Resuming re-bases its numbering and asks for a keyframe.
    pub fn pause_consumer(&mut self, id: ConsumerId, paused: bool) -> Result<(), ConsumeError> {
        let c = self
            .consumers
            .get_mut(&id)
            .ok_or(ConsumeError::ConsumerNotFound(id))?;
        if c.paused == paused {
            return Ok(());
        }
        c.paused = paused;
        if !paused {
            c.started = false;
            c.rewriter.resync();
            // A simulcast consumer starts again at a keyframe of its target layer.
            c.selector.reset();
        }
        Ok(())
    }

    /// Sets the highest simulcast layer a consumer may forward (0 is the producer's lowest;
    /// larger than the producer has means its highest). The consumer moves at the next
    /// keyframe of the layer it should be on, which is asked for at once.
    pub fn set_preferred_layer(
        &mut self,
        id: ConsumerId,
        layer: usize,
    ) -> Result<(), ConsumeError> {
        let c = self
            .consumers
            .get_mut(&id)
            .ok_or(ConsumeError::ConsumerNotFound(id))?;
        c.selector.preferred = layer;
        if c.paused {
            // It asks for its keyframe when it resumes.
            return Ok(());
        }
        let (producer, current, cap) = (c.producer, c.selector.current, c.selector.cap());
        let now = self.now;
        let target = self
            .producers
            .get(&producer)
            .filter(|p| p.is_simulcast())
            .zip(cap)
            .and_then(|(p, cap)| target_layer(&p.layers, cap, now));
        if let Some(target) = target
            && Some(target) != current
        {
            self.request_layer_keyframe(producer, target);
        }
        Ok(())
    }

    /// How every transport's link has been doing lately (see [`LinkReport`]), at `now`: one
    /// pass over the transports and one over the consumers, whatever the room's size.
    pub fn link_reports(&self, now: Instant) -> HashMap<TransportId, LinkReport> {
        let mut reports: HashMap<TransportId, LinkReport> = self
            .transports
            .iter()
            .map(|(id, t)| {
                // Receiver reports come every second or so for video, every few for audio.
                let (audio_loss, video_loss) = t.loss_by_kind(now, LOSS_FRESH);
                let report = LinkReport {
                    connected: t.is_connected() && !t.ice_lost(),
                    silent_for: t.last_rx.map(|at| now.saturating_duration_since(at)),
                    audio_loss,
                    video_loss,
                    held_back: 0,
                    paused: 0,
                };
                (*id, report)
            })
            .collect();
        for c in self.consumers.values().filter(|c| !c.paused) {
            let (Some(p), Some(report)) = (
                self.producers.get(&c.producer),
                reports.get_mut(&c.transport),
            ) else {
                continue;
            };
            let top = p.layers.len().saturating_sub(1).min(c.selector.preferred);
            match c.selector.cap() {
                None => report.paused += 1,
                Some(cap) if cap < top => report.held_back += 1,
                Some(_) => {}
            }
        }
        reports
    }

    /// Makes the allocator share `bps` among a subscriber's consumers instead of its
    /// estimated bandwidth (LiveKit's `SimulateScenario.subscriber_bandwidth`); `None`
    /// goes back to the estimate. Only with congestion control on.
    pub fn set_bandwidth_override(&mut self, transport: TransportId, bps: Option<u64>) {
        if let Some(t) = self.transports.get_mut(&transport) {
            t.bandwidth_override = bps;
        }
    }

    /// Sets a producer's priority among the video a subscriber's bandwidth is shared by
    /// (higher first; LiveKit serves screen shares before cameras).
    pub fn set_producer_priority(
        &mut self,
        id: ProducerId,
        priority: u8,
    ) -> Result<(), ConsumeError> {
        self.producers
            .get_mut(&id)
            .ok_or(ConsumeError::ProducerNotFound(id))?
            .priority = priority;
        Ok(())
    }

    /// Asks the producer's publisher for a keyframe on every layer (throttled per layer).
    pub fn request_keyframe(&mut self, producer: ProducerId) {
        let layers = self.producers.get(&producer).map_or(0, |p| p.layers.len());
        for layer in 0..layers {
            self.request_layer_keyframe(producer, layer);
        }
    }

    /// A subscriber with no layer yet asked for a keyframe: the layer it waits for is asked.
    fn request_target_keyframe(&mut self, producer: ProducerId, preferred: usize) {
        let now = self.now;
        let target = self.producers.get(&producer).and_then(|p| {
            if p.is_simulcast() {
                target_layer(&p.layers, preferred, now)
            } else {
                Some(0)
            }
        });
        if let Some(layer) = target {
            self.request_layer_keyframe(producer, layer);
        }
    }

    /// Asks for a keyframe on one layer of a producer (throttled).
    fn request_layer_keyframe(&mut self, producer: ProducerId, layer: usize) {
        let now = self.now;
        let Some(p) = self.producers.get_mut(&producer) else {
            return;
        };
        if p.kind != MediaKind::Video || !p.take_keyframe_slot(layer, now) {
            return;
        }
        let rid = p.layers.get(layer).and_then(|l| l.rid);
        let (transport, mid) = (p.transport, p.mid);
        if let Some(t) = self.transports.get_mut(&transport) {
            if let Some(rx) = t.rtc.direct_api().stream_rx_by_mid(mid, rid) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
                self.keyframe_requests_sent += 1;
            }
            t.drive(&mut self.sink);
        }
    }

    /// A datagram for `id`, already demultiplexed by the caller.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        id: TransportId,
        receive: Receive<'_>,
    ) -> Result<(), TransportError> {
        self.now = now;
        self.sink.now = Some(now);
        let t = self
            .transports
            .get_mut(&id)
            .ok_or(TransportError::NotFound(id))?;
        t.last_rx = Some(now);
        t.handle_input(Input::Receive(now, receive), &mut self.sink);
        self.after(id);
        Ok(())
    }

    /// Advances time: every transport whose deadline has passed gets its timeout, and owed
    /// keyframe requests go out.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.sink.now = Some(now);
        let mut due = Vec::new();
        while let Some(&Reverse((at, id))) = self.sink.timers.peek() {
            if at > now {
                break;
            }
            self.sink.timers.pop();
            due.push(id);
        }
        for id in due {
            // Stale entries (the deadline moved, or a duplicate was already handled) skip.
            let Some(t) = self.transports.get_mut(&id) else {
                continue;
            };
            if t.next_timeout.is_none_or(|at| at > now) {
                continue;
            }
            t.handle_input(Input::Timeout(now), &mut self.sink);
            self.after(id);
        }
        let owed: Vec<(ProducerId, usize)> = self
            .producers
            .values()
            .flat_map(|p| p.owed_layers(now).into_iter().map(|l| (p.id, l)))
            .collect();
        for (p, layer) in owed {
            self.request_layer_keyframe(p, layer);
        }
        if self.config.congestion_control.is_some() && now >= self.next_allocation {
            self.next_allocation = now + ALLOCATE_INTERVAL;
            self.allocate(now);
        }
    }

    /// Shares each subscriber's estimated bandwidth among its consumers.
    fn allocate(&mut self, now: Instant) {
        let Some(cc) = self.config.congestion_control.clone() else {
            return;
        };
        // Ordered, so that what comes out does not depend on hashing.
        let mut demands: BTreeMap<TransportId, Vec<TrackDemand>> = BTreeMap::new();
        for c in self.consumers.values() {
            let Some(p) = self.producers.get(&c.producer) else {
                continue;
            };
            demands.entry(c.transport).or_default().push(TrackDemand {
                consumer: c.id,
                kind: c.kind,
                priority: p.priority,
                disabled: c.paused,
                preferred: c.selector.preferred,
                layer_bps: p.layer_costs(now),
                allowed: c.selector.allowed,
            });
        }
        for (tid, mut tracks) in demands {
            let Some(t) = self.transports.get_mut(&tid) else {
                continue;
            };
            let Some(estimate) = t.bandwidth_override.or(t.estimate) else {
                continue;
            };
            tracks.sort_by_key(|d| d.consumer);
            let plan = t.allocator.allocate(now, estimate, &tracks, cc.allow_pause);
            trace!(transport = %tid, estimate, ?plan, ?tracks, "allocation");
            if let Some(desired) = plan.bwe {
                t.rtc
                    .bwe()
                    .set_bitrate(Bitrate::ZERO, Bitrate::bps(desired));
                t.drive(&mut self.sink);
                self.after(tid);
            }
            for (consumer, allowed) in plan.changes {
                self.set_allowed(consumer, allowed);
            }
        }
    }

    /// Applies the allocator's cap to a consumer. Pausing and resuming are told as
    /// [`Event::ConsumerPausedForBandwidth`]; a resumed consumer starts at a keyframe.
    fn set_allowed(&mut self, id: ConsumerId, allowed: Allowed) {
        let Some(c) = self.consumers.get_mut(&id) else {
            return;
        };
        let was = c.selector.allowed;
        c.selector.allowed = allowed;
        debug!(consumer = %id, ?was, ?allowed, "bandwidth allocation");
        let paused = allowed == Allowed::Nothing;
        if paused == (was == Allowed::Nothing) {
            // A new cap is reached at the target's next keyframe, asked for by forwarding.
            return;
        }
        c.selector.reset();
        let (transport, producer) = (c.transport, c.producer);
        if !paused {
            c.started = false;
            c.rewriter.resync();
        }
        let cap = c.selector.cap();
        self.sink
            .out
            .push_back(Output::Event(Event::ConsumerPausedForBandwidth {
                consumer: id,
                transport,
                paused,
            }));
        if let Some(cap) = cap {
            self.request_target_keyframe(producer, cap);
        }
    }

    /// The next thing to do; [`Output::Timeout`] once there is nothing left.
    #[must_use]
    pub fn poll_output(&mut self) -> Output {
        if let Some(o) = self.sink.out.pop_front() {
            return o;
        }
        self.compact_timers();
        let transports = self.sink.timers.peek().map(|Reverse((at, _))| *at);
        let keyframes = self
            .producers
            .values()
            .filter_map(|p| p.keyframe_deadline());
        let allocation = self
            .config
            .congestion_control
            .as_ref()
            .map(|_| self.next_allocation);
        let next = keyframes
            .chain(transports)
            .chain(allocation)
            .min()
            .unwrap_or(self.now + IDLE_TIMEOUT);
        Output::Timeout(next)
    }

    /// Drops stale timer entries from the top of the heap, and rebuilds it when stale
    /// entries dominate (many deadline changes between wake-ups).
    fn compact_timers(&mut self) {
        let timers = &mut self.sink.timers;
        if timers.len() > 4 * self.transports.len() + 64 {
            *timers = self
                .transports
                .values()
                .filter_map(|t| t.next_timeout.map(|at| Reverse((at, t.id()))))
                .collect();
        }
        while let Some(&Reverse((at, id))) = timers.peek() {
            if self
                .transports
                .get(&id)
                .is_some_and(|t| t.next_timeout == Some(at))
            {
                break;
            }
            timers.pop();
        }
    }

    /// For a simulcast producer, the highest layer any of its running consumers may want
    /// (`None` when none does): what its publisher needs to encode. `None` for a producer
    /// without simulcast.
    pub fn wanted_layer(&self, producer: ProducerId) -> Option<Option<usize>> {
        let p = self.producers.get(&producer).filter(|p| p.is_simulcast())?;
        let top = p.layers.len().saturating_sub(1);
        Some(
            p.consumers
                .iter()
                .filter_map(|c| self.consumers.get(c))
                .filter(|c| !c.paused)
                .filter_map(|c| c.selector.cap())
                .map(|cap| cap.min(top))
                .max(),
        )
    }

    /// Audio producers speaking now, with their level (0..=1, 1 loudest), loudest first.
    pub fn speakers(&self, now: Instant) -> Vec<(ProducerId, f32)> {
        let mut speaking: Vec<(ProducerId, f32)> = self
            .producers
            .values()
            .filter(|p| p.kind == MediaKind::Audio)
            .filter_map(|p| p.loudness.speaking(now).map(|level| (p.id, level)))
            .collect();
        speaking.sort_by(|a, b| b.1.total_cmp(&a.1));
        speaking
    }

    /// The transport with this id.
    pub fn transport(&self, id: TransportId) -> Option<&Transport> {
        self.transports.get(&id).map(|t| &**t)
    }

    /// The producer with this id.
    pub fn producer(&self, id: ProducerId) -> Option<&Producer> {
        self.producers.get(&id)
    }

    /// The consumer with this id.
    pub fn consumer(&self, id: ConsumerId) -> Option<&Consumer> {
        self.consumers.get(&id)
    }

    /// Number of open transports.
    pub fn transport_count(&self) -> usize {
        self.transports.len()
    }

    /// Counters for metrics.
    pub fn stats(&self) -> RouterStats {
        RouterStats {
            transports: self.transports.len(),
            producers: self.producers.len(),
            consumers: self.consumers.len(),
            packets_received: self.packets_received,
            packets_forwarded: self.packets_forwarded,
            red_received: self.red_received,
            red_forwarded: self.red_forwarded,
            red_unwrapped: self.red_unwrapped,
            keyframe_requests_sent: self.keyframe_requests_sent,
            nacks_received: self.retired_nacks
                + self
                    .transports
                    .values()
                    .map(|t| t.nacks_received)
                    .sum::<u64>(),
            keyframe_requests_received: self.retired_keyframe_requests
                + self
                    .transports
                    .values()
                    .map(|t| t.keyframe_requests_received)
                    .sum::<u64>(),
        }
    }

    fn retire(&mut self, t: &Transport) {
        self.retired_nacks += t.nacks_received;
        self.retired_keyframe_requests += t.keyframe_requests_received;
    }

    /// After any call that drove transport `id`: act on internal events and reap it if it
    /// failed.
    fn after(&mut self, id: TransportId) {
        self.process_internal();
        let Some(reason) = self.transports.get(&id).and_then(|t| t.closed.clone()) else {
            return;
        };
        if let Some(mut t) = self.transports.remove(&id) {
            t.rtc.disconnect();
            self.retire(&t);
        }
        self.sink
            .out
            .push_back(Output::Event(Event::TransportClosed {
                transport: id,
                reason,
            }));
        self.forget_transport(id);
    }

    fn process_internal(&mut self) {
        while let Some(ev) = self.sink.internal.pop_front() {
            match ev {
                Internal::Rtp { transport, packet } => self.forward(transport, packet),
                Internal::KeyframeRequest { transport, mid } => {
                    // Relayed for the layer this subscriber gets (the first until it has one).
                    let wanted = self
                        .consumer_by_mid
                        .get(&(transport, mid))
                        .and_then(|c| self.consumers.get(c))
                        .map(|c| (c.producer, c.selector.current, c.selector.cap()));
                    if let Some((p, layer, cap)) = wanted {
                        match (layer, cap) {
                            (Some(l), _) => self.request_layer_keyframe(p, l),
                            (None, Some(cap)) => self.request_target_keyframe(p, cap),
                            (None, None) => {}
                        }
                    }
                }
                Internal::MediaAdded {
                    transport,
                    mid,
                    kind,
                    direction,
                } => self.media_added(transport, mid, kind, direction),
                Internal::MediaChanged {
                    transport,
                    mid,
                    direction,
                } => {
                    if !receives(direction)
                        && let Some(p) = self.producer_by_mid.get(&(transport, mid)).copied()
                    {
                        self.remove_producer(p);
                    }
                }
            }
        }
    }

    fn media_added(&mut self, transport: TransportId, mid: Mid, kind: MediaKind, dir: Direction) {
        let Some(t) = self.transports.get(&transport) else {
            return;
        };
        if t.direction() != TransportDirection::Publisher || !receives(dir) {
            return;
        }
        if self.producer_by_mid.contains_key(&(transport, mid)) {
            return;
        }
        let media = t.rtc.media(mid);
        let track_id = media.map(|m| m.track_id().to_string()).unwrap_or_default();
        let mut layers: Vec<Layer> = match media.map(|m| m.rids_rx()) {
            Some(Rids::Specific(rids)) if !rids.is_empty() => {
                rids.iter().map(|r| Layer::new(Some(*r))).collect()
            }
            _ => vec![Layer::new(None)],
        };
        sort_layers(&mut layers);
        let first_pt = media.and_then(|m| m.remote_pts().first().copied());
        let mime = first_pt
            .and_then(|pt| t.rtc.codec_config().find(|p| p.pt() == pt))
            .map(|p| mime_type(p.spec().codec))
            .unwrap_or_default();
        let id = ProducerId(self.next_id());
        self.producers.insert(
            id,
            Producer {
                id,
                transport,
                mid,
                kind,
                track_id: track_id.clone(),
                consumers: Vec::new(),
                layers,
                loudness: Loudness::default(),
                priority: 0,
                packets: 0,
            },
        );
        self.producer_by_mid.insert((transport, mid), id);
        self.sink
            .out
            .push_back(Output::Event(Event::ProducerCreated {
                producer: id,
                transport,
                kind,
                track_id,
                mid,
                mime,
            }));
    }

    fn assign_mids(&mut self, transport: TransportId, assigned: Vec<(ConsumerId, Mid)>) {
        for (consumer, mid) in assigned {
            if let Some(c) = self.consumers.get_mut(&consumer) {
                // Offered again after str0m refused the answer to the first offer.
                if let Some(old) = c.mid.replace(mid)
                    && self.consumer_by_mid.get(&(transport, old)) == Some(&consumer)
                {
                    self.consumer_by_mid.remove(&(transport, old));
                }
                self.consumer_by_mid.insert((transport, mid), consumer);
            }
        }
    }

    /// Fans one publisher packet out to every consumer of its producer.
    fn forward(&mut self, from: TransportId, packet: RtpPacket) {
        let Some(t) = self.transports.get_mut(&from) else {
            return;
        };
        let Some((mid, rid)) = t
            .rtc
            .direct_api()
            .stream_rx(&packet.header.ssrc)
            .map(|s| (s.mid(), s.rid()))
        else {
            return;
        };
        let in_pt = packet.header.payload_type;
        // The codec, and whether this packet is its RFC 2198 RED wrapping (str0m folds RED's
        // payload type into the codec's parameters).
        let spec = t.rtc.codec_config().params().iter().find_map(|p| {
            if p.pt() == in_pt {
                Some((p.spec(), false))
            } else if p.red() == Some(in_pt) {
                Some((p.spec(), true))
            } else {
                None
            }
        });
        let Some(&pid) = self.producer_by_mid.get(&(from, mid)) else {
            return;
        };
        let Some(producer) = self.producers.get_mut(&pid) else {
            return;
        };
        self.packets_received += 1;
        if spec.is_some_and(|(_, red)| red) {
            self.red_received += 1;
        }
        let now = self.now;
        let Some(mut incoming) = producer.receive(rid, spec, &packet, now) else {
            return;
        };
        let layer = &mut producer.layers[incoming.layer];
        if producer.kind == MediaKind::Video && layer.nacked_ssrc != Some(packet.header.ssrc) {
            // str0m leaves NACKs off for a stream whose payload type it did not pair with
            // RTX, which is what happens to libwebrtc publishers' streams (mapped by mid and
            // rid): a packet lost on the way in would stay lost for every subscriber.
            layer.nacked_ssrc = Some(packet.header.ssrc);
            if let Some(t) = self.transports.get_mut(&from)
                && let Some(rx) = t.rtc.direct_api().stream_rx(&packet.header.ssrc)
            {
                rx.suppress_nack(false);
            }
        }
        if incoming.layers_moved {
            for cid in &producer.consumers {
                if let Some(c) = self.consumers.get_mut(cid) {
                    c.selector.reset();
                }
            }
        }
        let producer = &*producer;
        // Consumers mostly share a cap: one target per cap per packet.
        let mut targets: Vec<(Option<usize>, Option<usize>)> = Vec::new();
        let mut wants_keyframe = false;
        let mut wanted_layers: Vec<usize> = Vec::new();
        for cid in &producer.consumers {
            let Some(c) = self.consumers.get_mut(cid) else {
                continue;
            };
            let Some(sub) = self.transports.get_mut(&c.transport) else {
                continue;
            };
            let target = if incoming.simulcast {
                let cap = c.selector.cap();
                match targets.iter().find(|(k, _)| *k == cap) {
                    Some(&(_, t)) => t,
                    None => {
                        let t = cap.and_then(|cap| target_layer(&producer.layers, cap, now));
                        targets.push((cap, t));
                        t
                    }
                }
            } else {
                None
            };
            let done = c.forward(sub, &packet, &mut incoming, target);
            if let Some(w) = done.wanted
                && !wanted_layers.contains(&w)
            {
                wanted_layers.push(w);
            }
            if !done.written {
                continue;
            }
            self.packets_forwarded += 1;
            match done.red {
                Some(RedOut::Kept) => self.red_forwarded += 1,
                Some(RedOut::Unwrapped) => self.red_unwrapped += 1,
                None => {}
            }
            wants_keyframe |= done.first;
            if !sub.touched {
                sub.touched = true;
                self.touched.push(c.transport);
            }
        }
        for id in std::mem::take(&mut self.touched) {
            if let Some(t) = self.transports.get_mut(&id) {
                t.touched = false;
                t.drive(&mut self.sink);
            }
        }
        if wants_keyframe {
            self.request_keyframe(pid);
        }
        for layer in wanted_layers {
            self.request_layer_keyframe(pid, layer);
        }
    }

    fn remove_producer(&mut self, id: ProducerId) {
        let Some(p) = self.producers.remove(&id) else {
            return;
        };
        self.producer_by_mid.remove(&(p.transport, p.mid));
        for c in p.consumers {
            self.remove_consumer(c, ConsumerCloseReason::ProducerClosed, true);
        }
        self.sink
            .out
            .push_back(Output::Event(Event::ProducerClosed { producer: id }));
    }

    fn remove_consumer(&mut self, id: ConsumerId, reason: ConsumerCloseReason, notify: bool) {
        let Some(c) = self.consumers.remove(&id) else {
            return;
        };
        if let Some(mid) = c.mid {
            self.consumer_by_mid.remove(&(c.transport, mid));
        }
        if let Some(p) = self.producers.get_mut(&c.producer) {
            p.consumers.retain(|x| *x != id);
        }
        if let Some(t) = self.transports.get_mut(&c.transport) {
            let numbering = Numbering {
                rewriter: c.rewriter,
                vp8: c.vp8,
            };
            t.remove_consumer_media(id, c.mid, numbering);
            let assigned = t.offer_if_needed(&mut self.sink);
            self.assign_mids(c.transport, assigned);
        }
        if notify {
            self.sink
                .out
                .push_back(Output::Event(Event::ConsumerClosed {
                    consumer: id,
                    reason,
                }));
        }
    }

    /// Drops everything that lived on a transport that is gone.
    fn forget_transport(&mut self, id: TransportId) {
        let producers: Vec<ProducerId> = self
            .producers
            .values()
            .filter(|p| p.transport == id)
            .map(|p| p.id)
            .collect();
        for p in producers {
            self.remove_producer(p);
        }
        let consumers: Vec<ConsumerId> = self
            .consumers
            .values()
            .filter(|c| c.transport == id)
            .map(|c| c.id)
            .collect();
        for c in consumers {
            self.remove_consumer(c, ConsumerCloseReason::TransportClosed, true);
        }
        self.process_internal();
    }
}

/// The MIME type LiveKit uses in `TrackInfo.mime_type` for a codec.
fn mime_type(codec: Codec) -> String {
    let name = match codec {
        Codec::Opus => "audio/opus",
        Codec::PCMU => "audio/PCMU",
        Codec::PCMA => "audio/PCMA",
        Codec::G722 => "audio/G722",
        Codec::Vp8 => "video/VP8",
        Codec::Vp9 => "video/VP9",
        Codec::H264 => "video/H264",
        Codec::H265 => "video/H265",
        Codec::Av1 => "video/AV1",
        other => return format!("{other:?}").to_lowercase(),
    };
    name.to_string()
}

fn receives(direction: Direction) -> bool {
    matches!(direction, Direction::RecvOnly | Direction::SendRecv)
}
