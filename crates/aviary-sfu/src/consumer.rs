//! A consumer: one producer forwarded to one subscriber transport, with its own SSRC (str0m's
//! send stream for its m-line) and its own sequence/timestamp space.

use std::collections::HashMap;

use str0m::media::{MediaKind, Mid, Pt};

use crate::layers::Vp8Munger;
use crate::rewrite::Rewriter;
use crate::{ConsumerId, ProducerId, TransportId};

/// Arguments for [`crate::Router::consume`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConsumerOptions {
    /// What to forward.
    pub producer: ProducerId,
    /// The subscriber transport to forward to.
    pub transport: TransportId,
    /// The msid stream id the subscriber sees (LiveKit: `PA_publisher|TR_track`).
    pub stream_id: String,
    /// The msid track id the subscriber sees (LiveKit: the track sid).
    pub track_id: String,
    /// Start paused (no packets until [`crate::Router::pause_consumer`] resumes it).
    pub paused: bool,
    /// The highest simulcast layer wanted (0 is the lowest); see
    /// [`crate::Router::set_preferred_layer`]. Defaults to the highest there is.
    pub preferred_layer: usize,
}

impl ConsumerOptions {
    /// Options with every required argument; `paused` defaults to false.
    pub fn new(
        producer: ProducerId,
        transport: TransportId,
        stream_id: String,
        track_id: String,
    ) -> Self {
        Self {
            producer,
            transport,
            stream_id,
            track_id,
            paused: false,
            preferred_layer: usize::MAX,
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

/// One forwarded stream.
#[derive(Debug)]
pub struct Consumer {
    pub(crate) id: ConsumerId,
    pub(crate) producer: ProducerId,
    pub(crate) transport: TransportId,
    pub(crate) kind: MediaKind,
    /// Set once the m-line exists in an offer.
    pub(crate) mid: Option<Mid>,
    pub(crate) paused: bool,
    /// Whether the first packet since start/resume has gone out (a keyframe is requested then).
    pub(crate) started: bool,
    pub(crate) rewriter: Rewriter,
    /// Publisher payload type → subscriber payload type, and whether a RED packet must be
    /// unwrapped to its primary block first (`None`: the subscriber lacks the codec).
    pub(crate) pt_map: HashMap<Pt, Option<(Pt, bool)>>,
    pub(crate) packets: u64,
    /// The simulcast layer being forwarded (an index into the producer's layers); `None`
    /// until the first keyframe of the target layer.
    pub(crate) layer: Option<usize>,
    pub(crate) preferred_layer: usize,
    pub(crate) vp8: Vp8Munger,
}

impl Consumer {
    /// This consumer's id.
    pub fn id(&self) -> ConsumerId {
        self.id
    }

    /// What it forwards.
    pub fn producer(&self) -> ProducerId {
        self.producer
    }

    /// Where it forwards to.
    pub fn transport(&self) -> TransportId {
        self.transport
    }

    /// Its m-line in the subscriber session, once offered.
    pub fn mid(&self) -> Option<Mid> {
        self.mid
    }

    /// Whether forwarding is paused.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// RTP packets forwarded.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// The simulcast layer it forwards (0 is the producer's lowest), once it has one.
    pub fn current_layer(&self) -> Option<usize> {
        self.layer
    }

    /// The highest layer it may forward.
    pub fn preferred_layer(&self) -> usize {
        self.preferred_layer
    }
}
