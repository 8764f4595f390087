//! What the router tells its owner: outputs to act on, events, counters, and the small
//! types they carry. Apart from the router and its transports so that both use them
//! without depending on each other.

use std::time::Instant;

use str0m::media::{MediaKind, Mid};
use str0m::net::Transmit;

use crate::{ConsumerId, ProducerId, TransportId};

/// What the router asks of its owner.
#[derive(Debug)]
pub enum Output {
    /// Send this datagram.
    Transmit(Transmit),
    /// Something happened.
    Event(Event),
    /// Nothing more to do until this instant (or the next input).
    Timeout(Instant),
}

/// Things that happened inside the router.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// ICE and DTLS are up on this transport (again, after [`Event::TransportDisconnected`]).
    TransportConnected {
        /// Which transport.
        transport: TransportId,
    },
    /// ICE lost the client (no connectivity checks for a while). The transport stays: the
    /// client may restart ICE and come back ([`Event::TransportConnected`] again); how long
    /// to wait is the owner's decision.
    TransportDisconnected {
        /// Which transport.
        transport: TransportId,
    },
    /// The transport is gone and its id is no longer valid.
    TransportClosed {
        /// Which transport.
        transport: TransportId,
        /// Why.
        reason: CloseReason,
    },
    /// The server has an offer for a subscriber transport; send it to the client.
    OfferReady {
        /// Which transport.
        transport: TransportId,
        /// The offer's SDP.
        sdp: String,
        /// It restarts ICE (new credentials; see [`Router::restart_ice`]).
        ice_restart: bool,
    },
    /// A LiveKit data channel opened.
    DataChannelOpen {
        /// Which transport.
        transport: TransportId,
        /// Which channel.
        kind: DataKind,
    },
    /// A data channel message arrived from the client.
    DataReceived {
        /// Which transport.
        transport: TransportId,
        /// On which channel.
        kind: DataKind,
        /// The message, as sent.
        data: Vec<u8>,
    },
    /// A publisher's offer added a stream we receive.
    ProducerCreated {
        /// The new producer.
        producer: ProducerId,
        /// Its publisher transport.
        transport: TransportId,
        /// Audio or video.
        kind: MediaKind,
        /// The publisher's msid track id (LiveKit clients send it as the track's `cid`).
        track_id: String,
        /// Its m-line.
        mid: Mid,
        /// MIME type of the negotiated codec (`audio/opus`, `video/VP8`, ...), if known.
        mime: String,
    },
    /// A producer ended (the publisher stopped the m-line, or its transport closed).
    ProducerClosed {
        /// Which.
        producer: ProducerId,
    },
    /// The bandwidth allocator paused a consumer (its subscriber's link cannot carry even
    /// its lowest layer) or resumed it. LiveKit tells the subscriber with a
    /// `StreamStateUpdate`.
    ConsumerPausedForBandwidth {
        /// Which consumer.
        consumer: ConsumerId,
        /// Its subscriber transport.
        transport: TransportId,
        /// Paused (or resumed).
        paused: bool,
    },
    /// A consumer ended; its m-line is stopped at the next negotiation.
    ConsumerClosed {
        /// Which.
        consumer: ConsumerId,
        /// Why.
        reason: ConsumerCloseReason,
    },
}

/// How one transport's link has been doing lately: what connection quality is scored from.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkReport {
    /// ICE and DTLS are up (and ICE has not lost the client).
    pub connected: bool,
    /// How long since anything arrived from the client (`None`: nothing ever did).
    pub silent_for: Option<std::time::Duration>,
    /// The worst recent loss fraction among audio m-lines (publisher: of what arrived;
    /// subscriber: as its receiver reports say).
    pub audio_loss: Option<f32>,
    /// The same among video m-lines.
    pub video_loss: Option<f32>,
    /// Consumers on this subscriber transport that the bandwidth allocator holds below the
    /// layer their subscriber asked for.
    pub held_back: usize,
    /// Consumers on it that the allocator paused.
    pub paused: usize,
}

/// Counters of a router, for metrics. Totals since the router started, except the counts of
/// live objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Open transports.
    pub transports: usize,
    /// Live producers.
    pub producers: usize,
    /// Live consumers.
    pub consumers: usize,
    /// RTP packets received from publishers.
    pub packets_received: u64,
    /// RTP packets written to consumers.
    pub packets_forwarded: u64,
    /// RED (RFC 2198) audio packets received from publishers.
    pub red_received: u64,
    /// RED packets written to consumers as they came (the subscriber has RED).
    pub red_forwarded: u64,
    /// RED packets written to consumers as their primary encoding (no RED there).
    pub red_unwrapped: u64,
    /// Keyframe requests sent to publishers.
    pub keyframe_requests_sent: u64,
    /// NACKs received from subscribers.
    pub nacks_received: u64,
    /// PLIs/FIRs received from subscribers.
    pub keyframe_requests_received: u64,
}

/// Why a transport closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The owner closed it.
    Local,
    /// str0m reported an error; the text says which.
    Failed(String),
}

/// The two data channels a subscriber transport opens from the server side, and that a
/// publisher's client opens: one reliable, one lossy. Their labels are the owner's
/// ([`DataChannelLabels`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// Ordered, retransmitted.
    Reliable,
    /// Unordered, no retransmissions.
    Lossy,
}

impl DataKind {
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The labels of the two data channels (LiveKit's are `_reliable` and `_lossy`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataChannelLabels {
    /// The reliable channel's label.
    pub reliable: String,
    /// The lossy channel's label.
    pub lossy: String,
}

impl Default for DataChannelLabels {
    fn default() -> Self {
        Self {
            reliable: "reliable".into(),
            lossy: "lossy".into(),
        }
    }
}

impl DataChannelLabels {
    /// The label of a kind's channel.
    pub fn label(&self, kind: DataKind) -> &str {
        match kind {
            DataKind::Reliable => &self.reliable,
            DataKind::Lossy => &self.lossy,
        }
    }

    pub(crate) fn kind(&self, label: &str) -> Option<DataKind> {
        if label == self.reliable {
            Some(DataKind::Reliable)
        } else if label == self.lossy {
            Some(DataKind::Lossy)
        } else {
            None
        }
    }
}

/// Why a consumer closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsumerCloseReason {
    /// The owner closed it.
    Local,
    /// Its producer went away.
    ProducerClosed,
    /// Its transport went away.
    TransportClosed,
}
