//! A producer: one media stream a client publishes (one m-line of a publisher transport).

use std::time::{Duration, Instant};

use str0m::media::{MediaKind, Mid, Rid};

use crate::layers::{Layer, MAX_LAYERS, sort_layers};
use crate::loudness::Loudness;

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
    /// Audio: how loud it has been lately.
    pub(crate) loudness: Loudness,
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

    /// The index of the layer with this rid, and whether it was added just now (moving the
    /// indexes of the layers above it). `None` for a stream this producer has no layer for:
    /// no rid on a simulcast producer, or a new rid past [`MAX_LAYERS`].
    pub(crate) fn layer_index(&mut self, rid: Option<Rid>) -> Option<(usize, bool)> {
        if let Some(i) = self.layers.iter().position(|l| l.rid == rid) {
            return Some((i, false));
        }
        let rid = rid?;
        if !self.is_simulcast() {
            // The SDP named no layers, but the stream names one (str0m accepts any rid
            // then): from now on this is a simulcast producer.
            self.layers.clear();
        }
        if self.layers.len() >= MAX_LAYERS {
            return None;
        }
        self.layers.push(Layer::new(Some(rid)));
        sort_layers(&mut self.layers);
        let i = self.layers.iter().position(|l| l.rid == Some(rid))?;
        Some((i, true))
    }

    /// When the next owed keyframe request may go out.
    pub(crate) fn keyframe_deadline(&self) -> Option<Instant> {
        self.layers.iter().filter_map(Layer::owed_at).min()
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
        let due = |l: &Layer| l.owed_at().is_some_and(|at| at <= now);
        (0..self.layers.len())
            .filter(|&i| due(&self.layers[i]))
            .collect()
    }
}
