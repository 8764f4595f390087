//! A producer: one media stream a client publishes (one m-line of a publisher transport).

use std::time::{Duration, Instant};

use str0m::media::{MediaKind, Mid, Rid};

use crate::layers::{Layer, sort_layers};

use crate::{ConsumerId, ProducerId, TransportId};

/// Shortest interval between two keyframe requests sent to the same publisher; requests in
/// between are folded into one sent when the interval is up.
pub(crate) const KEYFRAME_THROTTLE: Duration = Duration::from_millis(300);

/// One published stream.
#[derive(Debug)]
pub struct Producer {
    pub(crate) id: ProducerId,
    pub(crate) transport: TransportId,
    pub(crate) mid: Mid,
    pub(crate) kind: MediaKind,
    pub(crate) track_id: String,
    pub(crate) consumers: Vec<ConsumerId>,
    /// Its simulcast layers from lowest to highest quality; one layer without a rid when
    /// the publisher sends a single stream.
    pub(crate) layers: Vec<Layer>,
    pub(crate) packets: u64,
}

impl Producer {
    /// This producer's id.
    pub fn id(&self) -> ProducerId {
        self.id
    }

    /// The publisher transport it arrives on.
    pub fn transport(&self) -> TransportId {
        self.transport
    }

    /// Audio or video.
    pub fn kind(&self) -> MediaKind {
        self.kind
    }

    /// The track id from the publisher's `a=msid` line.
    pub fn track_id(&self) -> &str {
        &self.track_id
    }

    /// Its consumers.
    pub fn consumers(&self) -> &[ConsumerId] {
        &self.consumers
    }

    /// RTP packets received.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// The simulcast layers' rids, lowest quality first (empty without simulcast).
    pub fn rids(&self) -> Vec<Rid> {
        self.layers.iter().filter_map(|l| l.rid).collect()
    }

    pub(crate) fn is_simulcast(&self) -> bool {
        self.layers.first().is_some_and(|l| l.rid.is_some())
    }

    /// The index of the layer with this rid, adding it (in rank order) if it is new.
    pub(crate) fn layer_index(&mut self, rid: Option<Rid>) -> usize {
        if let Some(i) = self.layers.iter().position(|l| l.rid == rid) {
            return i;
        }
        // A rid the SDP did not announce, or the first packet of a stream without one.
        if rid.is_none() {
            return 0;
        }
        if !self.is_simulcast() {
            self.layers.clear();
        }
        self.layers.push(Layer::new(rid));
        sort_layers(&mut self.layers);
        self.layers
            .iter()
            .position(|l| l.rid == rid)
            .unwrap_or_default()
    }

    /// When the next owed keyframe request may go out.
    pub(crate) fn keyframe_deadline(&self) -> Option<Instant> {
        self.layers
            .iter()
            .filter(|l| l.keyframe_owed)
            .filter_map(|l| l.last_keyframe_request.map(|at| at + KEYFRAME_THROTTLE))
            .min()
    }

    /// Whether a request for `layer` may be sent now; otherwise it is remembered as owed.
    pub(crate) fn take_keyframe_slot(&mut self, layer: usize, now: Instant) -> bool {
        let Some(l) = self.layers.get_mut(layer) else {
            return false;
        };
        let free = l
            .last_keyframe_request
            .is_none_or(|at| now.saturating_duration_since(at) >= KEYFRAME_THROTTLE);
        if free {
            l.last_keyframe_request = Some(now);
            l.keyframe_owed = false;
        } else {
            l.keyframe_owed = true;
        }
        free
    }

    /// Layers whose owed request is due at `now`.
    pub(crate) fn owed_layers(&self, now: Instant) -> Vec<usize> {
        self.layers
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                l.keyframe_owed
                    && l.last_keyframe_request
                        .is_some_and(|at| at + KEYFRAME_THROTTLE <= now)
            })
            .map(|(i, _)| i)
            .collect()
    }
}
