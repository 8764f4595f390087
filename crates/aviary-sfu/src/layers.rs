//! Simulcast: which of a producer's layers each consumer forwards, and the VP8 descriptor
//! rewriting that keeps a subscriber's decoder happy across a switch.
//!
//! A simulcast publisher sends one RTP stream per layer (`rid`), each with its own sequence
//! numbers, timestamps and, for VP8, picture ids. A consumer forwards exactly one of them.
//! It moves to another layer only at a keyframe of that layer, so the subscriber's decoder
//! never sees a frame that refers to pictures of a stream it was not given.

use std::time::{Duration, Instant};

use str0m::format::{
    Codec, detect_av1_keyframe, detect_h264_keyframe, detect_h264_nalu, detect_vp9_keyframe,
};
use str0m::media::Rid;
use str0m::rtp::{Vp8Descriptor, Vp8Patch};

use crate::rate::RateMeter;

/// Shortest interval between two keyframe requests sent to the same publisher for a layer;
/// requests in between are folded into one sent when the interval is up.
pub(crate) const KEYFRAME_THROTTLE: Duration = Duration::from_millis(300);

/// A layer that sent nothing for this long is taken as stopped (the publisher's encoder
/// drops layers when its bandwidth estimate falls, and brings them back later).
pub(crate) const LAYER_IDLE: Duration = Duration::from_millis(1500);

/// An H.264 sequence parameter set: a keyframe starts with it.
const H264_SPS: u8 = 7;

/// Layers one producer may have (LiveKit's clients send at most three).
pub(crate) const MAX_LAYERS: usize = 4;

/// One layer of a producer, ordered from lowest to highest quality in the producer.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    /// `None` for a producer without simulcast.
    pub(crate) rid: Option<Rid>,
    pub(crate) last_packet: Option<Instant>,
    pub(crate) last_keyframe_request: Option<Instant>,
    /// A keyframe request arrived during the throttle interval and is owed.
    pub(crate) keyframe_owed: bool,
    /// What the layer carries, in bits per second.
    pub(crate) rate: RateMeter,
    /// The stream whose losses are NACKed (see `Router::forward`).
    pub(crate) nacked_ssrc: Option<str0m::rtp::Ssrc>,
}

impl Layer {
    pub(crate) fn new(rid: Option<Rid>) -> Self {
        Self {
            rid,
            last_packet: None,
            last_keyframe_request: None,
            keyframe_owed: false,
            rate: RateMeter::default(),
            nacked_ssrc: None,
        }
    }

    /// Whether a keyframe request may be sent now; otherwise it is remembered as owed.
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

    /// When the request owed for this layer may go out, if one is owed.
    pub(crate) fn owed_at(&self) -> Option<Instant> {
        self.last_keyframe_request
            .filter(|_| self.keyframe_owed)
            .map(|at| at + KEYFRAME_THROTTLE)
    }

    pub(crate) fn is_active(&self, now: Instant) -> bool {
        self.last_packet
            .is_some_and(|at| now.saturating_duration_since(at) < LAYER_IDLE)
    }
}

/// The rank of a rid among a producer's layers: LiveKit's clients name their layers `q`
/// (quarter), `h` (half) and `f` (full); other names keep the order of the SDP.
pub(crate) fn rid_rank(rid: &str, sdp_index: usize) -> (u8, usize) {
    match rid {
        "q" => (0, 0),
        "h" => (1, 0),
        "f" => (2, 0),
        _ => (3, sdp_index),
    }
}

/// Orders layers from lowest to highest quality; their current order stands for the SDP's.
pub(crate) fn sort_layers(layers: &mut [Layer]) {
    let order: Vec<Option<Rid>> = layers.iter().map(|l| l.rid).collect();
    layers.sort_by_key(|l| {
        let i = order.iter().position(|r| *r == l.rid).unwrap_or(0);
        rid_rank(l.rid.as_deref().unwrap_or(""), i)
    });
}

/// The layer a consumer should be on: the highest active one not above `preferred` (an
/// index into `layers`), or, when none of those is active, the lowest active one. `None`
/// when nothing is active.
pub(crate) fn target_layer(layers: &[Layer], preferred: usize, now: Instant) -> Option<usize> {
    let top = preferred.min(layers.len().saturating_sub(1));
    (0..=top)
        .rev()
        .find(|&i| layers[i].is_active(now))
        .or_else(|| (top + 1..layers.len()).find(|&i| layers[i].is_active(now)))
}

/// Whether an RTP payload starts a keyframe of `codec` (a decoder can start there). Codecs
/// we cannot inspect answer `true`, so that a consumer is never stuck waiting.
pub(crate) fn starts_keyframe(codec: Codec, payload: &[u8], vp8: Option<&Vp8Descriptor>) -> bool {
    match codec {
        Codec::Vp8 => vp8.is_some_and(|d| d.starts_keyframe(payload)),
        Codec::Vp9 => detect_vp9_keyframe(payload),
        // libwebrtc sends SPS and PPS in the packet before the IDR slice, or with it.
        Codec::H264 => detect_h264_nalu(payload, H264_SPS) || detect_h264_keyframe(payload),
        Codec::Av1 => detect_av1_keyframe(payload),
        _ => true,
    }
}

/// Keeps a consumer's VP8 picture ids, TL0PICIDX and KEYIDX continuous when it switches
/// between layers, which come from different encoders with unrelated numbering.
#[derive(Debug, Clone, Default)]
pub(crate) struct Vp8Munger {
    picture_id_offset: u16,
    tl0_offset: u8,
    key_idx_offset: u8,
    last_picture_id: Option<u16>,
    last_tl0: Option<u8>,
    last_key_idx: Option<u8>,
    /// Set at a switch: the next packet re-bases the offsets.
    resync: bool,
}

impl Vp8Munger {
    /// The next packet starts a new run (a layer switch).
    pub(crate) fn resync(&mut self) {
        self.resync = true;
    }

    /// The patch for one packet, or `None` when its descriptor needs no change (or has no
    /// field to rewrite). `long`: the picture id has 15 bits (else 7).
    pub(crate) fn patch(&mut self, d: &Vp8Descriptor, long: bool) -> Option<Vp8Patch> {
        let pid_mask: u16 = if long { 0x7fff } else { 0x7f };
        if std::mem::take(&mut self.resync) {
            if let (Some(last), Some(pid)) = (self.last_picture_id, d.picture_id()) {
                self.picture_id_offset = last.wrapping_add(1).wrapping_sub(pid);
            }
            if let (Some(last), Some(tl0)) = (self.last_tl0, d.tl0_pic_idx()) {
                self.tl0_offset = last.wrapping_add(1).wrapping_sub(tl0);
            }
            if let (Some(last), Some(k)) = (self.last_key_idx, d.key_idx()) {
                self.key_idx_offset = last.wrapping_add(1).wrapping_sub(k);
            }
        }
        let mut builder = d.patch();
        let mut changed = false;
        if let Some(pid) = d.picture_id() {
            let out = pid.wrapping_add(self.picture_id_offset) & pid_mask;
            self.last_picture_id = Some(out);
            changed |= out != pid;
            builder = builder.picture_id(out);
        }
        if let Some(tl0) = d.tl0_pic_idx() {
            let out = tl0.wrapping_add(self.tl0_offset);
            self.last_tl0 = Some(out);
            changed |= out != tl0;
            builder = builder.tl0_pic_idx(out);
        }
        if let Some(k) = d.key_idx() {
            let out = k.wrapping_add(self.key_idx_offset) & 0x1f;
            self.last_key_idx = Some(out);
            changed |= out != k;
            builder = builder.key_idx(out);
        }
        if !changed {
            return None;
        }
        builder.build().ok()
    }
}

/// Whether a VP8 payload descriptor carries a 15-bit picture id (the M bit of its first
/// picture-id byte, RFC 7741); false when it has none.
pub(crate) fn vp8_long_picture_id(payload: &[u8]) -> bool {
    let x = payload.first().is_some_and(|b| b & 0x80 != 0);
    let i = x && payload.get(1).is_some_and(|b| b & 0x80 != 0);
    i && payload.get(2).is_some_and(|b| b & 0x80 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(n: usize) -> Vec<Layer> {
        ["q", "h", "f"][..n]
            .iter()
            .map(|r| Layer::new(Some((*r).into())))
            .collect()
    }

    #[test]
    fn target_is_the_best_active_layer_not_above_the_preference() {
        let t0 = Instant::now();
        let mut ls = layers(3);
        assert_eq!(target_layer(&ls, 2, t0), None, "nothing sent yet");
        ls[0].last_packet = Some(t0);
        ls[1].last_packet = Some(t0);
        assert_eq!(target_layer(&ls, 2, t0), Some(1), "f not active: h");
        ls[2].last_packet = Some(t0);
        assert_eq!(target_layer(&ls, 2, t0), Some(2));
        assert_eq!(target_layer(&ls, 0, t0), Some(0));
        assert_eq!(target_layer(&ls, usize::MAX, t0), Some(2));
        // Only f keeps sending: a low preference still gets video.
        let later = t0 + LAYER_IDLE + Duration::from_millis(1);
        ls[2].last_packet = Some(later);
        assert_eq!(target_layer(&ls, 0, later), Some(2));
    }

    #[test]
    fn rids_rank_low_to_high() {
        let mut rids = vec!["f", "q", "h"];
        rids.sort_by_key(|r| rid_rank(r, 0));
        assert_eq!(rids, ["q", "h", "f"]);
        assert!(rid_rank("x", 0) < rid_rank("y", 1));
    }

    /// A VP8 payload: descriptor with X, I (15-bit picture id), L (TL0PICIDX), K (KEYIDX),
    /// T and K (TID, Y, KEYIDX), then a one-byte VP8 payload header (P bit clear for a keyframe).
    fn vp8(picture_id: u16, tl0: u8, key_idx: u8, keyframe: bool) -> Vec<u8> {
        vec![
            0x90,
            0xf0,
            0x80 | (picture_id >> 8) as u8,
            picture_id as u8,
            tl0,
            key_idx & 0x1f,
            if keyframe { 0x00 } else { 0x01 },
            0,
            0,
        ]
    }

    fn apply(m: &mut Vp8Munger, payload: &[u8]) -> (u16, u8, u8) {
        let d = Vp8Descriptor::parse(payload).unwrap();
        match m.patch(&d, vp8_long_picture_id(payload)) {
            Some(_) => (
                m.last_picture_id.unwrap(),
                m.last_tl0.unwrap(),
                m.last_key_idx.unwrap(),
            ),
            None => (
                d.picture_id().unwrap(),
                d.tl0_pic_idx().unwrap(),
                d.key_idx().unwrap(),
            ),
        }
    }

    #[test]
    fn vp8_numbering_continues_across_a_switch() {
        let mut m = Vp8Munger::default();
        assert_eq!(apply(&mut m, &vp8(100, 7, 3, true)), (100, 7, 3));
        assert_eq!(apply(&mut m, &vp8(101, 8, 3, false)), (101, 8, 3));
        m.resync();
        // Another layer's encoder, with unrelated numbers.
        assert_eq!(apply(&mut m, &vp8(30_000, 200, 17, true)), (102, 9, 4));
        assert_eq!(apply(&mut m, &vp8(30_001, 201, 17, false)), (103, 10, 4));
        // Wrapping at 15 bits.
        m.resync();
        assert_eq!(apply(&mut m, &vp8(0x7fff - 103, 0, 0, true)), (104, 11, 5));
    }

    /// The same with a 7-bit picture id (M bit clear).
    fn vp8_short(picture_id: u8, tl0: u8, key_idx: u8, keyframe: bool) -> Vec<u8> {
        vec![
            0x90,
            0xf0,
            picture_id & 0x7f,
            tl0,
            key_idx & 0x1f,
            if keyframe { 0x00 } else { 0x01 },
            0,
            0,
        ]
    }

    #[test]
    fn seven_bit_picture_ids_continue_and_wrap() {
        assert!(!vp8_long_picture_id(&vp8_short(5, 0, 0, true)));
        assert!(vp8_long_picture_id(&vp8(5, 0, 0, true)));
        let mut m = Vp8Munger::default();
        assert_eq!(apply(&mut m, &vp8_short(126, 1, 1, true)), (126, 1, 1));
        m.resync();
        assert_eq!(apply(&mut m, &vp8_short(40, 9, 9, true)), (127, 2, 2));
        assert_eq!(
            apply(&mut m, &vp8_short(41, 10, 9, false)),
            (0, 3, 2),
            "wraps at 7 bits"
        );
    }

    #[test]
    fn keyframes_are_found_per_codec() {
        let key = vp8(1, 1, 1, true);
        let delta = vp8(2, 1, 1, false);
        let dk = Vp8Descriptor::parse(&key).unwrap();
        let dd = Vp8Descriptor::parse(&delta).unwrap();
        assert!(starts_keyframe(Codec::Vp8, &key, Some(&dk)));
        assert!(!starts_keyframe(Codec::Vp8, &delta, Some(&dd)));
        // H.264: STAP-A (24) carrying an SPS (7), and a lone non-IDR slice (1).
        assert!(starts_keyframe(
            Codec::H264,
            &[24, 0, 2, 0x67, 0x42, 0, 1, 0x68],
            None
        ));
        assert!(!starts_keyframe(Codec::H264, &[0x41, 0x9a, 0], None));
        assert!(starts_keyframe(Codec::Opus, &[1, 2, 3], None));
    }
}
