//! A producer: one media stream a client publishes (one m-line of a publisher transport).

use std::time::Instant;

use str0m::format::{Codec, CodecSpec};
use str0m::media::{MediaKind, Mid, Rid};
use str0m::rtp::{ExtensionValues, RtpPacket, Vp8Descriptor};

use crate::layers::{Layer, MAX_LAYERS, sort_layers, starts_keyframe, vp8_long_picture_id};
use crate::loudness::Loudness;

use crate::{ConsumerId, ProducerId, TransportId};

/// Bytes an RTP packet carries besides its payload (header and the usual extensions),
/// counted in a layer's bitrate.
const RTP_OVERHEAD: usize = 28;

/// What is known of one incoming packet, worked out once for every consumer.
pub(crate) struct Incoming<'a> {
    /// Its layer (an index into the producer's layers).
    pub(crate) layer: usize,
    /// A new layer appeared and the indexes moved: consumers start again at a keyframe.
    pub(crate) layers_moved: bool,
    /// The codec, and whether the packet is its RFC 2198 RED wrapping.
    pub(crate) spec: Option<(CodecSpec, bool)>,
    /// The VP8 descriptor of a simulcast packet and whether its picture id is 15 bits.
    pub(crate) vp8: Option<(Vp8Descriptor, bool)>,
    /// The header extensions passed on to subscribers.
    pub(crate) ext: ExtensionValues,
    pub(crate) simulcast: bool,
    payload: &'a [u8],
    keyframe: Option<bool>,
}

impl Incoming<'_> {
    /// Whether the packet starts a keyframe (looked into once, on first asking).
    pub(crate) fn is_keyframe(&mut self) -> bool {
        let (payload, spec, vp8) = (self.payload, self.spec, &self.vp8);
        *self.keyframe.get_or_insert_with(|| {
            spec.is_some_and(|(s, _)| {
                starts_keyframe(s.codec, payload, vp8.as_ref().map(|(d, _)| d))
            })
        })
    }
}

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
    /// Among video tracks sharing a subscriber's bandwidth, higher is served first.
    pub(crate) priority: u8,
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

    /// Takes in one packet of the stream with `rid`: counts it, tracks its layer's activity
    /// and bitrate and the audio level, and works out what consumers need. `None` for a
    /// stream that belongs to no layer (nobody gets it).
    pub(crate) fn receive<'a>(
        &mut self,
        rid: Option<Rid>,
        spec: Option<(CodecSpec, bool)>,
        packet: &'a RtpPacket,
        now: Instant,
    ) -> Option<Incoming<'a>> {
        self.packets += 1;
        let (layer, layers_moved) = self.layer_index(rid)?;
        if let Some(level) = packet.header.ext_vals.audio_level {
            self.loudness.observe(level, now);
        }
        if let Some(l) = self.layers.get_mut(layer) {
            // Padding alone (a paused layer probing bandwidth) does not make a layer active.
            if !packet.payload.is_empty() {
                l.last_packet = Some(now);
            }
            l.rate.add(packet.payload.len() + RTP_OVERHEAD, now);
        }
        let simulcast = self.is_simulcast();
        // Simulcast VP8 is renumbered at switches, which needs its descriptor.
        let vp8 = match spec {
            Some((s, _)) if simulcast && s.codec == Codec::Vp8 => {
                Vp8Descriptor::parse(&packet.payload)
                    .ok()
                    .map(|d| (d, vp8_long_picture_id(&packet.payload)))
            }
            _ => None,
        };
        let ext = ExtensionValues {
            audio_level: packet.header.ext_vals.audio_level,
            voice_activity: packet.header.ext_vals.voice_activity,
            video_orientation: packet.header.ext_vals.video_orientation,
            ..Default::default()
        };
        Some(Incoming {
            layer,
            layers_moved,
            spec,
            vp8,
            ext,
            simulcast,
            payload: &packet.payload,
            keyframe: None,
        })
    }

    /// What each layer costs a subscriber, lowest first, for bandwidth allocation: its
    /// recent mean rate, and never less than a lower layer's (a layer that just restarted
    /// can read near zero for a window, and must not look cheap); 0 for a layer not being
    /// received.
    pub(crate) fn layer_costs(&self, now: Instant) -> Vec<u64> {
        let mut floor = 0;
        self.layers
            .iter()
            .map(|l| match l.rate.mean_bps(now) {
                0 => 0,
                mean => {
                    floor = floor.max(mean);
                    floor
                }
            })
            .collect()
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
        self.layers
            .get_mut(layer)
            .is_some_and(|l| l.take_keyframe_slot(now))
    }

    /// Layers whose owed request is due at `now`.
    pub(crate) fn owed_layers(&self, now: Instant) -> Vec<usize> {
        let due = |l: &Layer| l.owed_at().is_some_and(|at| at <= now);
        (0..self.layers.len())
            .filter(|&i| due(&self.layers[i]))
            .collect()
    }
}
