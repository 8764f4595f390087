//! A consumer: one producer forwarded to one subscriber transport, with its own SSRC (str0m's
//! send stream for its m-line) and its own sequence/timestamp space.

use std::collections::HashMap;
use std::time::Duration;

use str0m::media::{MediaKind, Mid, Pt};
use str0m::rtp::{RtpPacket, RtpWrite};
use tracing::trace;

use crate::layers::Vp8Munger;
use crate::producer::Incoming;
use crate::rewrite::Rewriter;
use crate::selector::LayerSelector;
use crate::transport::Transport;
use crate::{ConsumerId, ProducerId, TransportId};

/// Retransmission history per consumer. str0m keeps 3 s by default; NACKs come within a
/// round trip or two, and a shorter history is a third of the memory per subscriber (and of
/// the cache upkeep per forwarded packet).
const RTX_CACHE_AGE: Duration = Duration::from_secs(1);
/// Enough for 1 s at ~6 Mbit/s of full-size packets.
const RTX_CACHE_PACKETS: usize = 600;
/// str0m's default cap on retransmitted / transmitted bytes.
const RTX_RATIO_CAP: Option<f32> = Some(0.15);

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
    /// The simulcast layer it forwards and the ones it should.
    pub(crate) selector: LayerSelector,
    pub(crate) vp8: Vp8Munger,
}

/// What forwarding one packet to a consumer came to.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Forwarded {
    /// The packet was written to the subscriber transport.
    pub(crate) written: bool,
    /// It was the first since the consumer started or resumed: a keyframe is wanted.
    pub(crate) first: bool,
    /// The simulcast layer whose keyframe the consumer waits for.
    pub(crate) wanted: Option<usize>,
    /// For a RED packet written: how it went out.
    pub(crate) red: Option<RedOut>,
}

/// How a RED (RFC 2198) audio packet went to a subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RedOut {
    /// As it came: the subscriber negotiated RED.
    Kept,
    /// Its primary encoding only: the subscriber has the codec without RED.
    Unwrapped,
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
        self.selector.current
    }

    /// The highest layer it may forward.
    pub fn preferred_layer(&self) -> usize {
        self.selector.preferred
    }

    /// Forwards one packet of its producer to `sub`, its transport, if it should: `target`
    /// is the layer it should be on (simulcast only). The caller drives `sub` afterwards.
    pub(crate) fn forward(
        &mut self,
        sub: &mut Transport,
        packet: &RtpPacket,
        incoming: &mut Incoming<'_>,
        target: Option<usize>,
    ) -> Forwarded {
        let mut done = Forwarded::default();
        let Some(out_mid) = self.mid else {
            return done;
        };
        // Paused by its subscriber, or by the allocator for want of bandwidth.
        if self.paused || self.selector.cap().is_none() || !sub.is_connected() {
            return done;
        }
        let layer = incoming.layer;
        let mut switch = false;
        if incoming.simulcast {
            let decision = self
                .selector
                .decide(layer, target, || incoming.is_keyframe());
            done.wanted = decision.wanted;
            if !decision.forward {
                return done;
            }
            switch = decision.switch;
        }
        let in_pt = packet.header.payload_type;
        let spec = incoming.spec;
        let out_pt = *self.pt_map.entry(in_pt).or_insert_with(|| {
            let (spec, red) = spec?;
            let cfg = sub.rtc.codec_config();
            let params = cfg.find(|p| p.spec() == spec).or_else(|| {
                cfg.find(|p| p.spec().codec == spec.codec && p.spec().clock_rate == spec.clock_rate)
            })?;
            match (red, params.red()) {
                (true, Some(red_pt)) => Some((red_pt, false)),
                // The subscriber has the codec but not RED: send the primary encoding.
                (true, None) => Some((params.pt(), true)),
                (false, _) => Some((params.pt(), false)),
            }
        });
        let Some((out_pt, unwrap_red)) = out_pt else {
            trace!(consumer = %self.id, ?in_pt, "subscriber lacks the codec");
            return done;
        };
        let mut api = sub.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(out_mid, None) else {
            return done;
        };
        let payload: std::sync::Arc<[u8]> = if unwrap_red {
            match red_primary(&packet.payload) {
                Some(p) => p.into(),
                None => return done,
            }
        } else {
            packet.payload.clone()
        };
        // Only now, with the packet sure to go out, does the switch happen: numbering is
        // re-based on this keyframe.
        if switch {
            self.rewriter.resync();
            self.vp8.resync();
        }
        let Some((seq, ts)) =
            self.rewriter
                .rewrite(*packet.seq_no, packet.header.timestamp, packet.timestamp)
        else {
            return done;
        };
        if self.packets == 0 {
            tx.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, RTX_RATIO_CAP);
            // With congestion control on, str0m would pace video at the estimate; the
            // allocator already keeps the rate within it, and a fan-out that leaves at once
            // costs neither latency nor the pacer's timers.
            tx.set_unpaced(true);
        }
        let mut write = RtpWrite::new(out_pt, seq.into(), ts, packet.timestamp, payload)
            .marker(packet.header.marker)
            .ext_vals(incoming.ext.clone())
            .nackable(self.kind == MediaKind::Video);
        if let Some(patch) = incoming
            .vp8
            .as_ref()
            .and_then(|(d, long)| self.vp8.patch(d, *long))
        {
            write = write.vp8_patch(patch);
        }
        tx.write_rtp(write);
        self.packets += 1;
        done.written = true;
        if spec.is_some_and(|(_, red)| red) {
            done.red = Some(if unwrap_red {
                RedOut::Unwrapped
            } else {
                RedOut::Kept
            });
        }
        if switch {
            self.selector.switched(layer);
            self.started = true;
        }
        if !self.started {
            self.started = true;
            done.first = true;
        }
        done
    }
}

/// The primary block of an RFC 2198 RED payload: after the 4-byte headers of the redundant
/// blocks (F bit set), a 1-byte header, the redundant data, then the primary data.
fn red_primary(payload: &[u8]) -> Option<&[u8]> {
    let mut at = 0;
    let mut redundant = 0usize;
    loop {
        let b = *payload.get(at)?;
        if b & 0x80 == 0 {
            at += 1;
            break;
        }
        let len = ((*payload.get(at + 2)? as usize & 0x03) << 8) | *payload.get(at + 3)? as usize;
        redundant += len;
        at += 4;
    }
    payload.get(at + redundant..)
}

#[cfg(test)]
mod tests {
    use super::red_primary;

    #[test]
    fn red_primary_skips_redundant_blocks() {
        // One redundant block of 3 bytes (PT 111, offset 960), then the primary (PT 111).
        let payload = [0x80 | 111, 0x0f, 0x00, 3, 111, 9, 9, 9, 1, 2, 3, 4];
        assert_eq!(red_primary(&payload), Some(&[1u8, 2, 3, 4][..]));
        // No redundancy: only the final header.
        assert_eq!(red_primary(&[111, 5, 6]), Some(&[5u8, 6][..]));
        // Truncated headers or data are refused, never indexed past the end.
        assert_eq!(red_primary(&[0x80 | 111, 0x0f]), None);
        assert_eq!(red_primary(&[0x80 | 111, 0, 0, 50, 111, 1]), None);
        assert_eq!(red_primary(&[]), None);
    }
}
