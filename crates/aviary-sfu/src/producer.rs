//! A producer: one media stream a client publishes (one m-line of a publisher transport).

use std::time::{Duration, Instant};

use str0m::media::{MediaKind, Mid};

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
    pub(crate) last_keyframe_request: Option<Instant>,
    /// A request arrived during the throttle interval and is owed.
    pub(crate) keyframe_owed: bool,
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

    /// When the next owed keyframe request may go out.
    pub(crate) fn keyframe_deadline(&self) -> Option<Instant> {
        if !self.keyframe_owed {
            return None;
        }
        Some(
            self.last_keyframe_request
                .map_or_else(Instant::now, |at| at + KEYFRAME_THROTTLE),
        )
    }

    /// Whether a request may be sent now; otherwise it is remembered as owed.
    pub(crate) fn take_keyframe_slot(&mut self, now: Instant) -> bool {
        let free = self
            .last_keyframe_request
            .is_none_or(|at| now.saturating_duration_since(at) >= KEYFRAME_THROTTLE);
        if free {
            self.last_keyframe_request = Some(now);
            self.keyframe_owed = false;
        } else {
            self.keyframe_owed = true;
        }
        free
    }
}
