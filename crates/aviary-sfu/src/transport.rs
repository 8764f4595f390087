//! A transport: one peer connection (one str0m `Rtc`) and its negotiation state.
//!
//! A transport knows nothing of rooms or participants; it turns str0m's outputs into the
//! router's [`Output`]s and keeps the one offer it may have in flight.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

use str0m::bwe::BweKind;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::media::{Direction, MediaKind, Mid, Rid};
use str0m::rtp::RtpPacket;
use str0m::{Candidate, IceConnectionState, Input, Rtc};
use tracing::{debug, trace};

use crate::error::NegotiateError;
use crate::layers::Vp8Munger;
use crate::output::{CloseReason, DataChannelLabels, DataKind, Event, Output};
use crate::red_answer::{OfferedAudio, order_red};
use crate::rewrite::Rewriter;
use crate::{ConsumerId, SendDataError, TransportId};

/// Immediate timeout rounds one `drive` runs before leaving the rest to the timer heap: a
/// bound on the work one call does, far above what one fan-out needs.
const MAX_ROUNDS_PER_DRIVE: usize = 512;

/// What a transport's drive produces: outputs for the router's owner, and events the router
/// itself acts on (media to forward, keyframe requests, m-lines coming and going).
#[derive(Default)]
pub(crate) struct Sink {
    /// The router's time: what "due" means when driving a transport.
    pub(crate) now: Option<Instant>,
    pub(crate) out: VecDeque<Output>,
    pub(crate) internal: VecDeque<Internal>,
    /// Every deadline a transport has announced, earliest first. Entries go stale when the
    /// transport moves its deadline or closes; the router skips those lazily, which keeps
    /// finding the next wake-up O(log n) instead of a scan over every transport.
    pub(crate) timers: BinaryHeap<Reverse<(Instant, TransportId)>>,
}

/// Events the router handles itself.
// RTP packets are the common case; boxing them would allocate per packet, while the queue's
// storage is reused, so the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Internal {
    MediaAdded {
        transport: TransportId,
        mid: Mid,
        kind: MediaKind,
        direction: Direction,
    },
    MediaChanged {
        transport: TransportId,
        mid: Mid,
        direction: Direction,
    },
    Rtp {
        transport: TransportId,
        packet: RtpPacket,
    },
    KeyframeRequest {
        transport: TransportId,
        mid: Mid,
    },
}

/// Which way media flows on a transport, seen from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportDirection {
    /// The client sends: the client offers, the server answers.
    Publisher,
    /// The client receives: the server offers, the client answers.
    Subscriber,
}

/// Arguments for [`crate::Router::create_transport`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TransportOptions {
    /// Publisher or subscriber.
    pub direction: TransportDirection,
    /// Local ICE username fragment; the caller picks it (randomly) so that it can demultiplex
    /// STUN by it. At least 4 characters.
    pub ice_ufrag: String,
    /// Local ICE password, at least 22 characters.
    pub ice_pwd: String,
}

impl TransportOptions {
    /// Options with every required argument.
    pub fn new(direction: TransportDirection, ice_ufrag: String, ice_pwd: String) -> Self {
        Self {
            direction,
            ice_ufrag,
            ice_pwd,
        }
    }
}

/// Bound on a data channel's send buffer; past it, messages are dropped rather than queued,
/// so that one slow receiver cannot grow the worker's memory without limit.
const MAX_BUFFERED_DATA: usize = 1024 * 1024;

/// A change to a subscriber's session that needs an offer.
#[derive(Clone, Debug)]
enum Change {
    /// The `_reliable` and `_lossy` channels.
    ServerChannels,
    /// A send-only m-line for a consumer.
    AddMedia {
        consumer: ConsumerId,
        kind: MediaKind,
        stream_id: String,
        track_id: String,
    },
    /// Stop sending on a consumer's m-line (the consumer closed).
    StopMedia(Mid),
    /// Send again on an idle m-line, for a new consumer of the same track.
    ResumeMedia { consumer: ConsumerId, mid: Mid },
}

/// What identifies a send m-line to the client: its kind and msid.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SendLine {
    kind: MediaKind,
    stream_id: String,
    track_id: String,
}

/// The numbering state of a send m-line, kept while it idles so that a consumer reusing it
/// carries on the sequence numbers, timestamps and VP8 picture ids the client last saw on
/// its SSRC (SRTP's replay check would drop numbers it has seen before).
#[derive(Debug, Clone)]
pub(crate) struct Numbering {
    pub(crate) rewriter: Rewriter,
    pub(crate) vp8: Vp8Munger,
}

/// An idle m-line taken by a new consumer: its mid, if the consumer may use it at once (the
/// stop had not been offered yet), and its numbering.
pub(crate) struct Reused {
    pub(crate) mid: Option<Mid>,
    pub(crate) numbering: Numbering,
}

/// Our offer awaiting its answer: str0m's token, the changes it carries (offered again if
/// str0m refuses the answer) and its SDP (sent again on an ICE restart).
struct InFlight {
    pending: SdpPendingOffer,
    changes: Vec<Change>,
    sdp: String,
    ice_restart: bool,
}

/// One peer connection.
pub struct Transport {
    id: TransportId,
    direction: TransportDirection,
    ice_ufrag: String,
    ice_pwd: String,
    pub(crate) rtc: Rtc,
    pub(crate) next_timeout: Option<Instant>,
    /// Written to while forwarding the current packet; driven once when it is done.
    pub(crate) touched: bool,
    pending_offer: Option<InFlight>,
    /// Changes waiting for the next offer. str0m drops changes made on an `SdpApi` that is
    /// not applied, so they are kept here and replayed when the offer is made.
    changes: Vec<Change>,
    /// The next offer restarts ICE (new local credentials).
    restart_ice: bool,
    /// An answer (subscriber) or offer (publisher) from the client was applied: ICE knows
    /// the client's credentials, so a restart means something.
    negotiated: bool,
    channels: [Option<ChannelId>; 2],
    labels: DataChannelLabels,
    connected: bool,
    /// ICE lost the client after it had connected; cleared when it comes back.
    ice_lost: bool,
    pub(crate) closed: Option<CloseReason>,
    /// Last cumulative (NACKs, PLIs+FIRs) str0m reported per send m-line.
    egress_feedback: std::collections::HashMap<Mid, (u64, u64)>,
    /// NACKs and keyframe requests received from the peer, summed over m-lines.
    pub(crate) nacks_received: u64,
    pub(crate) keyframe_requests_received: u64,
    /// Every send m-line offered, by mid.
    send_lines: std::collections::HashMap<Mid, SendLine>,
    /// Send m-lines whose consumer closed. Subscribing to the same track again reactivates
    /// its m-line instead of adding one: str0m never recycles its own m-lines, and an SDP
    /// that grew with every subscribe cycle would slow every renegotiation.
    idle: std::collections::HashMap<Mid, Numbering>,
    /// Bandwidth toward the client, in bits per second (TWCC, or REMB when the client sends
    /// no transport feedback), once estimated.
    pub(crate) estimate: Option<u64>,
    /// Some TWCC estimate came: REMB no longer counts.
    twcc: bool,
    /// A bandwidth to allocate within instead of `estimate` (a test hook of LiveKit's).
    pub(crate) bandwidth_override: Option<u64>,
    /// Shares `estimate` among this subscriber's consumers.
    pub(crate) allocator: crate::allocator::Allocator,
    /// The latest loss fraction per m-line: of what the client sent us (publisher), or
    /// what it reports of what we sent (subscriber).
    loss: std::collections::HashMap<(Mid, Option<Rid>), (f32, Instant)>,
    /// When the client was last heard from (any datagram).
    pub(crate) last_rx: Option<Instant>,
}

impl Transport {
    pub(crate) fn new(
        id: TransportId,
        options: TransportOptions,
        labels: DataChannelLabels,
        rtc: Rtc,
    ) -> Self {
        Self {
            id,
            direction: options.direction,
            ice_ufrag: options.ice_ufrag,
            ice_pwd: options.ice_pwd,
            rtc,
            next_timeout: None,
            touched: false,
            pending_offer: None,
            changes: Vec::new(),
            restart_ice: false,
            negotiated: false,
            channels: [None, None],
            labels,
            connected: false,
            ice_lost: false,
            closed: None,
            egress_feedback: std::collections::HashMap::new(),
            nacks_received: 0,
            keyframe_requests_received: 0,
            send_lines: std::collections::HashMap::new(),
            idle: std::collections::HashMap::new(),
            estimate: None,
            bandwidth_override: None,
            twcc: false,
            allocator: Default::default(),
            loss: std::collections::HashMap::new(),
            last_rx: None,
        }
    }

    /// The latest loss fraction of each kind of media on this transport (the worst
    /// m-line of the kind), as str0m's statistics reported it within `fresh` of `now`.
    pub(crate) fn loss_by_kind(
        &self,
        now: Instant,
        fresh: std::time::Duration,
    ) -> (Option<f32>, Option<f32>) {
        let (mut audio, mut video) = (None::<f32>, None::<f32>);
        // Simulcast layers share an m-line: the worst one speaks for it.
        for ((mid, _), (loss, at)) in &self.loss {
            if now.saturating_duration_since(*at) > fresh {
                continue;
            }
            let slot = match self.rtc.media(*mid).map(|m| m.kind()) {
                Some(MediaKind::Audio) => &mut audio,
                Some(MediaKind::Video) => &mut video,
                None => continue,
            };
            *slot = Some(slot.map_or(*loss, |l| l.max(*loss)));
        }
        (audio, video)
    }

    /// The estimated bandwidth toward the client, in bits per second, once known (only with
    /// congestion control on).
    pub fn estimate(&self) -> Option<u64> {
        self.estimate
    }

    /// This transport's id.
    pub fn id(&self) -> TransportId {
        self.id
    }

    /// Publisher or subscriber.
    pub fn direction(&self) -> TransportDirection {
        self.direction
    }

    /// The local ICE ufrag: as given in its options until an ICE restart changes it (the
    /// ufrag of a restart we offered counts from the offer on, as the client may use it
    /// from then).
    pub fn ice_ufrag(&self) -> &str {
        &self.ice_ufrag
    }

    /// The local ICE password that goes with [`Self::ice_ufrag`] (for checking the
    /// integrity of STUN before trusting its source address; see [`crate::demux`]).
    pub fn ice_password(&self) -> &str {
        &self.ice_pwd
    }

    /// True once ICE and DTLS are up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// ICE lost the client after it had connected (it may come back).
    pub(crate) fn ice_lost(&self) -> bool {
        self.ice_lost
    }

    /// True while an offer of ours awaits its answer.
    pub fn has_pending_offer(&self) -> bool {
        self.pending_offer.is_some()
    }

    /// True while ICE has lost the client (after having connected).
    pub fn is_ice_lost(&self) -> bool {
        self.ice_lost
    }

    /// Server-side data channels, created on a subscriber before its first offer.
    pub(crate) fn add_server_channels(&mut self) {
        self.changes.push(Change::ServerChannels);
    }

    /// Finds a consumer its m-line: an idle one that carried the same track (returned with
    /// its numbering), else a new one queued for the next offer. A mid comes back at once
    /// only when the idle m-line's stop was never offered; otherwise it is known once the
    /// offer is made.
    pub(crate) fn add_consumer_media(
        &mut self,
        consumer: ConsumerId,
        kind: MediaKind,
        stream_id: String,
        track_id: String,
    ) -> Option<Reused> {
        let line = SendLine {
            kind,
            stream_id,
            track_id,
        };
        let idle = self
            .idle
            .keys()
            .copied()
            .find(|mid| self.send_lines.get(mid) == Some(&line));
        if let Some(mid) = idle
            && let Some(numbering) = self.idle.remove(&mid)
        {
            let unsent_stop = self
                .changes
                .iter()
                .position(|c| matches!(c, Change::StopMedia(m) if *m == mid));
            if let Some(i) = unsent_stop {
                // The client still has the m-line sending: nothing to negotiate.
                self.changes.remove(i);
                return Some(Reused {
                    mid: Some(mid),
                    numbering,
                });
            }
            self.changes.push(Change::ResumeMedia { consumer, mid });
            return Some(Reused {
                mid: None,
                numbering,
            });
        }
        self.changes.push(Change::AddMedia {
            consumer,
            kind: line.kind,
            stream_id: line.stream_id,
            track_id: line.track_id,
        });
        None
    }

    /// Stops a consumer's m-line, keeping it idle with its numbering for a later consumer of
    /// the same track; or, if it was never offered, drops its queued addition (or gives a
    /// queued reactivation's m-line back to the idle ones).
    pub(crate) fn remove_consumer_media(
        &mut self,
        consumer: ConsumerId,
        mid: Option<Mid>,
        numbering: Numbering,
    ) {
        match mid {
            Some(mid) => {
                self.changes.push(Change::StopMedia(mid));
                if self.send_lines.contains_key(&mid) {
                    self.idle.insert(mid, numbering);
                }
            }
            None => {
                let mut resumed = None;
                self.changes.retain(|c| match c {
                    Change::AddMedia { consumer: id, .. } => *id != consumer,
                    Change::ResumeMedia { consumer: id, mid } if *id == consumer => {
                        resumed = Some(*mid);
                        false
                    }
                    _ => true,
                });
                if let Some(mid) = resumed {
                    self.idle.insert(mid, numbering);
                }
            }
        }
    }

    /// How many send m-lines the session has, idle ones included.
    pub fn send_media_count(&self) -> usize {
        self.send_lines.len()
    }

    /// Restarts ICE with new local credentials, carried by the next offer. An offer still
    /// in flight is sent again as it was, and the restart follows its answer: the client may
    /// never have seen it, or may have applied it and lost its answer, and the same SDP with
    /// the same mids suits both (str0m cannot keep a dropped offer's mids). Before the client
    /// ever answered there is no ICE session to restart; the offer in flight is only sent
    /// again. Returns the mids given to consumers' m-lines by an offer made now.
    pub(crate) fn restart_ice(&mut self, sink: &mut Sink) -> Vec<(ConsumerId, Mid)> {
        if let Some(f) = &self.pending_offer {
            sink.out.push_back(Output::Event(Event::OfferReady {
                transport: self.id,
                sdp: f.sdp.clone(),
                ice_restart: f.ice_restart,
            }));
            if self.negotiated && !f.ice_restart {
                self.restart_ice = true;
            }
            return Vec::new();
        }
        if !self.negotiated {
            return Vec::new();
        }
        self.restart_ice = true;
        self.offer_if_needed(sink)
    }

    /// Makes an offer from the pending changes unless one is already in flight; changes made
    /// meanwhile are folded into the offer that follows its answer. Returns the mids given to
    /// consumers' new m-lines.
    pub(crate) fn offer_if_needed(&mut self, sink: &mut Sink) -> Vec<(ConsumerId, Mid)> {
        let mut assigned = Vec::new();
        if self.pending_offer.is_some() || (self.changes.is_empty() && !self.restart_ice) {
            return assigned;
        }
        let changes = std::mem::take(&mut self.changes);
        let ice_restart = std::mem::take(&mut self.restart_ice);
        let mut api = self.rtc.sdp_api();
        if ice_restart {
            let creds = api.ice_restart(true);
            self.ice_ufrag = creds.ufrag;
            self.ice_pwd = creds.pass;
        }
        for change in changes.iter().cloned() {
            match change {
                Change::ServerChannels => {
                    for kind in [DataKind::Reliable, DataKind::Lossy] {
                        let (ordered, reliability) = match kind {
                            DataKind::Reliable => (true, Reliability::Reliable),
                            DataKind::Lossy => {
                                (false, Reliability::MaxRetransmits { retransmits: 0 })
                            }
                        };
                        api.add_channel_with_config(ChannelConfig {
                            label: self.labels.label(kind).to_string(),
                            ordered,
                            reliability,
                            ..Default::default()
                        });
                    }
                }
                Change::AddMedia {
                    consumer,
                    kind,
                    stream_id,
                    track_id,
                } => {
                    let mid = api.add_media(
                        kind,
                        Direction::SendOnly,
                        Some(stream_id.clone()),
                        Some(track_id.clone()),
                        None,
                    );
                    self.send_lines.insert(
                        mid,
                        SendLine {
                            kind,
                            stream_id,
                            track_id,
                        },
                    );
                    assigned.push((consumer, mid));
                }
                Change::StopMedia(mid) => api.set_direction(mid, Direction::Inactive),
                Change::ResumeMedia { consumer, mid } => {
                    api.set_direction(mid, Direction::SendOnly);
                    assigned.push((consumer, mid));
                }
            }
        }
        if let Some((offer, pending)) = api.apply() {
            let sdp = offer.to_sdp_string();
            self.pending_offer = Some(InFlight {
                pending,
                changes,
                sdp: sdp.clone(),
                ice_restart,
            });
            sink.out.push_back(Output::Event(Event::OfferReady {
                transport: self.id,
                sdp,
                ice_restart,
            }));
        }
        self.drive(sink);
        assigned
    }

    pub(crate) fn accept_offer(
        &mut self,
        sdp: &str,
        wants_red: &dyn Fn(OfferedAudio<'_>) -> Option<bool>,
        sink: &mut Sink,
    ) -> Result<String, NegotiateError> {
        if self.direction != TransportDirection::Publisher {
            return Err(NegotiateError::WrongDirection(self.id));
        }
        let offer =
            SdpOffer::from_sdp_string(sdp).map_err(|e| NegotiateError::Malformed(e.to_string()))?;
        let answer = self
            .contain(|rtc| rtc.sdp_api().accept_offer(offer))?
            .map_err(|e| NegotiateError::Refused(e.to_string()))?;
        self.negotiated = true;
        // An offer with new ICE credentials restarts ICE, and str0m answers it with new ones
        // of its own.
        let creds = self.rtc.direct_api().local_ice_credentials();
        self.ice_ufrag = creds.ufrag;
        self.ice_pwd = creds.pass;
        self.drive(sink);
        Ok(order_red(sdp, &answer.to_sdp_string(), wants_red))
    }

    /// Takes the answer to our offer. A follow-up offer is made if changes waited (or if
    /// str0m refused the answer: the refused offer's changes are offered again); the mids it
    /// gave consumers' m-lines come back with the answer's outcome.
    pub(crate) fn accept_answer(
        &mut self,
        sdp: &str,
        sink: &mut Sink,
    ) -> (Result<(), NegotiateError>, Vec<(ConsumerId, Mid)>) {
        let answer = match SdpAnswer::from_sdp_string(sdp) {
            Ok(a) => a,
            Err(e) => return (Err(NegotiateError::Malformed(e.to_string())), Vec::new()),
        };
        let Some(in_flight) = self.pending_offer.take() else {
            return (Err(NegotiateError::NoPendingOffer(self.id)), Vec::new());
        };
        let result =
            match self.contain(|rtc| rtc.sdp_api().accept_answer(in_flight.pending, answer)) {
                Ok(r) => r,
                Err(e) => return (Err(e), Vec::new()),
            };
        self.drive(sink);
        let result = match result {
            Ok(()) => {
                self.negotiated = true;
                Ok(())
            }
            Err(e) => {
                // str0m consumed its token: what the offer carried goes into the next one.
                let mut changes = in_flight.changes;
                changes.append(&mut self.changes);
                self.changes = changes;
                self.restart_ice |= in_flight.ice_restart;
                Err(NegotiateError::Refused(e.to_string()))
            }
        };
        (result, self.offer_if_needed(sink))
    }

    pub(crate) fn add_remote_candidate(&mut self, candidate: &str) -> Result<(), NegotiateError> {
        let line = candidate.strip_prefix("a=").unwrap_or(candidate);
        let c = Candidate::from_sdp_string(line)
            .map_err(|e| NegotiateError::Malformed(e.to_string()))?;
        self.rtc.add_remote_candidate(c);
        Ok(())
    }

    pub(crate) fn send_data(
        &mut self,
        kind: DataKind,
        data: &[u8],
        sink: &mut Sink,
    ) -> Result<(), SendDataError> {
        let id = self.channels[kind.index()].ok_or(SendDataError::NotOpen)?;
        let mut channel = self.rtc.channel(id).ok_or(SendDataError::NotOpen)?;
        if channel.buffered_amount() > MAX_BUFFERED_DATA {
            return Err(SendDataError::BufferFull);
        }
        let written = channel
            .write(true, data)
            .map_err(|_| SendDataError::NotOpen)?;
        self.drive(sink);
        if written {
            Ok(())
        } else {
            Err(SendDataError::BufferFull)
        }
    }

    pub(crate) fn handle_input(&mut self, input: Input<'_>, sink: &mut Sink) {
        match self.contain(|rtc| rtc.handle_input(input)) {
            // A bad datagram is not fatal to the peer; str0m only errors on real breakage.
            Ok(Err(e)) => debug!(transport = %self.id, "handle_input: {e}"),
            Ok(Ok(())) => {}
            Err(_) => return,
        }
        self.drive(sink);
    }

    /// Runs `f` on this transport's `Rtc`, containing a panic to this transport: a peer's
    /// input that makes str0m panic (a str0m bug: it asserts on some crafted SDP) closes
    /// that peer's connection, not its room.
    fn contain<T>(&mut self, f: impl FnOnce(&mut Rtc) -> T) -> Result<T, NegotiateError> {
        let rtc = &mut self.rtc;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(rtc))) {
            Ok(v) => Ok(v),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::warn!(transport = %self.id, "str0m panicked on the peer's input ({what}); closing the transport");
                self.closed = Some(CloseReason::Failed(format!("str0m panicked: {what}")));
                self.next_timeout = None;
                Err(NegotiateError::Refused(format!(
                    "the description could not be applied ({what})"
                )))
            }
        }
    }

    /// Drains str0m's outputs until its next timeout.
    pub(crate) fn drive(&mut self, sink: &mut Sink) {
        let mut rounds = 0;
        loop {
            match self.rtc.poll_output() {
                Ok(str0m::Output::Timeout(t)) => {
                    // With BWE on, str0m's pacer lets one packet out per timeout round and
                    // asks for another round at once. Run those rounds here: left to the
                    // timer heap, a transport would send one packet per pass of the
                    // worker's loop, and a fan-out faster than that queues without bound.
                    if let Some(now) = sink.now
                        && t <= now
                        && rounds < MAX_ROUNDS_PER_DRIVE
                    {
                        rounds += 1;
                        match self.contain(|rtc| rtc.handle_input(Input::Timeout(now))) {
                            Ok(Ok(())) => continue,
                            Ok(Err(e)) => debug!(transport = %self.id, "handle_timeout: {e}"),
                            Err(_) => return,
                        }
                    }
                    if self.next_timeout != Some(t) {
                        self.next_timeout = Some(t);
                        sink.timers.push(Reverse((t, self.id)));
                    }
                    return;
                }
                Ok(str0m::Output::Transmit(t)) => sink.out.push_back(Output::Transmit(t)),
                Ok(str0m::Output::Event(e)) => self.handle_event(e, sink),
                Err(e) => {
                    self.closed = Some(CloseReason::Failed(e.to_string()));
                    self.next_timeout = None;
                    return;
                }
            }
        }
    }

    fn handle_event(&mut self, event: str0m::Event, sink: &mut Sink) {
        let transport = self.id;
        let out = &mut sink.out;
        match event {
            str0m::Event::RtpPacket(packet) => {
                sink.internal.push_back(Internal::Rtp { transport, packet });
            }
            str0m::Event::KeyframeRequest(req) => {
                sink.internal.push_back(Internal::KeyframeRequest {
                    transport,
                    mid: req.mid,
                });
            }
            str0m::Event::MediaAdded(m) => sink.internal.push_back(Internal::MediaAdded {
                transport,
                mid: m.mid,
                kind: m.kind,
                direction: m.direction,
            }),
            str0m::Event::MediaChanged(m) => sink.internal.push_back(Internal::MediaChanged {
                transport,
                mid: m.mid,
                direction: m.direction,
            }),
            str0m::Event::Connected => {
                self.connected = true;
                out.push_back(Output::Event(Event::TransportConnected { transport }));
            }
            str0m::Event::IceConnectionStateChange(state) => {
                debug!(%transport, ?state, "ice state");
                // A client that lost its network may come back (it restarts ICE after a
                // resume), so losing ICE does not close the transport: its owner decides
                // how long to wait.
                match state {
                    IceConnectionState::Disconnected if self.connected && !self.ice_lost => {
                        self.ice_lost = true;
                        out.push_back(Output::Event(Event::TransportDisconnected { transport }));
                    }
                    IceConnectionState::Connected | IceConnectionState::Completed
                        if self.ice_lost =>
                    {
                        self.ice_lost = false;
                        out.push_back(Output::Event(Event::TransportConnected { transport }));
                    }
                    _ => {}
                }
            }
            str0m::Event::ChannelOpen(id, label) => {
                if let Some(kind) = self.labels.kind(&label) {
                    self.channels[kind.index()] = Some(id);
                    out.push_back(Output::Event(Event::DataChannelOpen { transport, kind }));
                } else {
                    debug!(%transport, label, "ignoring unknown data channel");
                }
            }
            str0m::Event::ChannelData(data) => {
                let kind = if self.channels[DataKind::Reliable.index()] == Some(data.id) {
                    DataKind::Reliable
                } else if self.channels[DataKind::Lossy.index()] == Some(data.id) {
                    DataKind::Lossy
                } else {
                    return;
                };
                out.push_back(Output::Event(Event::DataReceived {
                    transport,
                    kind,
                    data: data.data,
                }));
            }
            str0m::Event::MediaIngressStats(stats) => {
                if let Some(loss) = stats.loss {
                    self.loss
                        .insert((stats.mid, stats.rid), (loss, stats.timestamp));
                }
            }
            str0m::Event::MediaEgressStats(stats) => {
                if let Some(loss) = stats.loss {
                    self.loss
                        .insert((stats.mid, stats.rid), (loss, stats.timestamp));
                }
                // str0m reports running totals; keep the increments.
                let last = self.egress_feedback.entry(stats.mid).or_insert((0, 0));
                let plis = stats.plis + stats.firs;
                self.nacks_received += stats.nacks.saturating_sub(last.0);
                self.keyframe_requests_received += plis.saturating_sub(last.1);
                *last = (stats.nacks, plis);
            }
            str0m::Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                self.twcc = true;
                self.estimate = Some(estimate.as_u64());
            }
            str0m::Event::EgressBitrateEstimate(BweKind::Remb { estimate, .. }) if !self.twcc => {
                self.estimate = Some(estimate.as_u64());
            }
            str0m::Event::ChannelClose(id) => {
                for slot in &mut self.channels {
                    if *slot == Some(id) {
                        *slot = None;
                    }
                }
            }
            other => trace!(%transport, ?other, "unhandled rtc event"),
        }
    }
}
