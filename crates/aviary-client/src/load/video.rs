//! The load tester's synthetic video: how a publisher cuts frames into VP8-shaped packets
//! (one stream, or three simulcast layers), and how a subscriber decides which frames it
//! could have decoded, as a real receiver would, so that runs can count frames and freezes
//! without a codec.
//!
//! Every video packet starts with a VP8 payload descriptor carrying a picture id, TL0PICIDX
//! and temporal layer 0 (as browsers send it, so that SFUs which rewrite or inspect them see
//! what they expect), then the 10-byte start of a VP8 frame on a frame's first packet.
//! After those [`VP8_HEADER`] bytes come our marks: [`crate::load`]'s common fields, then
//! the frame number, the packet's index and count within the frame, the layer and whether
//! the frame is a key frame.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Bytes before the marked part of a video payload: a 6-byte VP8 payload descriptor and the
/// 10 bytes a VP8 key frame starts with.
pub(super) const VP8_HEADER: usize = 16;

/// Where the video fields start, after the fields every synthetic payload has.
const FIELDS: usize = 25;
/// Bytes of marks a video packet carries after [`VP8_HEADER`].
pub(super) const VIDEO_MARKS: usize = FIELDS + 10;

/// Packets one frame may span, so a receiver tracks a frame in one `u64`.
pub(super) const MAX_PACKETS_PER_FRAME: usize = 64;

/// A receiver calls the video frozen when no frame was decoded for this long (WebRTC's
/// freeze rule, max(3 × frame interval, frame interval + 150 ms), at 30 fps).
pub const FREEZE: Duration = Duration::from_millis(200);

/// One simulcast layer the publisher sends: its rid and its share of the track's bitrate.
pub(super) struct LayerSpec {
    pub rid: &'static str,
    pub share: f64,
    pub width: u32,
    pub height: u32,
}

/// The layers of a simulcast track, low to high (LiveKit's rids and, roughly, its
/// bitrate ladder: each layer about twice the one below).
pub(super) const SIMULCAST: [LayerSpec; 3] = [
    LayerSpec {
        rid: "q",
        share: 0.1,
        width: 320,
        height: 180,
    },
    LayerSpec {
        rid: "h",
        share: 0.3,
        width: 640,
        height: 360,
    },
    LayerSpec {
        rid: "f",
        share: 0.6,
        width: 1280,
        height: 720,
    },
];

/// Writes the VP8 part of a packet into `out[..VP8_HEADER]`.
pub(super) fn write_vp8_header(out: &mut [u8], first: bool, key: bool, picture_id: u16, tl0: u8) {
    // X=1, S on a frame's first packet, partition 0.
    out[0] = 0x80 | if first { 0x10 } else { 0 };
    // I (picture id), L (TL0PICIDX), T (temporal layer).
    out[1] = 0xe0;
    // 15-bit picture id.
    out[2] = 0x80 | ((picture_id >> 8) as u8 & 0x7f);
    out[3] = picture_id as u8;
    out[4] = tl0;
    // Temporal layer 0, layer sync.
    out[5] = 0x20;
    let frame: [u8; 10] = match (first, key) {
        // Frame tag (key frame, shown), start code, 640x360.
        (true, true) => [0x10, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01],
        // The frame tag's low bit: not a key frame.
        (true, false) => [0x11, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0],
        _ => [0; 10],
    };
    out[6..VP8_HEADER].copy_from_slice(&frame);
}

/// What a video packet says about the frame it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FrameMark {
    pub frame: u32,
    pub index: u16,
    pub count: u16,
    pub layer: u8,
    pub key: bool,
}

impl FrameMark {
    /// Writes the mark into a payload whose marks start at `marks` (after `VP8_HEADER`).
    pub(super) fn write(&self, marks: &mut [u8]) {
        marks[FIELDS..FIELDS + 4].copy_from_slice(&self.frame.to_be_bytes());
        marks[FIELDS + 4..FIELDS + 6].copy_from_slice(&self.index.to_be_bytes());
        marks[FIELDS + 6..FIELDS + 8].copy_from_slice(&self.count.to_be_bytes());
        marks[FIELDS + 8] = self.layer;
        marks[FIELDS + 9] = self.key as u8;
    }

    /// Reads the mark from the marked part of a payload; `None` if it is too short or says
    /// something impossible.
    pub(super) fn read(marks: &[u8]) -> Option<FrameMark> {
        let m = marks.get(FIELDS..FIELDS + 10)?;
        let mark = FrameMark {
            frame: u32::from_be_bytes([m[0], m[1], m[2], m[3]]),
            index: u16::from_be_bytes([m[4], m[5]]),
            count: u16::from_be_bytes([m[6], m[7]]),
            layer: m[8],
            key: m[9] == 1,
        };
        let count = mark.count as usize;
        (count > 0 && count <= MAX_PACKETS_PER_FRAME && mark.index < mark.count).then_some(mark)
    }
}

/// Cuts a stream of `bitrate` into frames at `fps`: how many packets of what size each
/// frame takes. Sizes carry over between frames so the bitrate comes out right on average.
pub(super) struct Packetizer {
    bytes_per_frame: f64,
    size: usize,
    owed: f64,
}

impl Packetizer {
    pub(super) fn new(bitrate: u64, fps: u64, max_payload: usize) -> Self {
        let bytes_per_frame = bitrate as f64 / 8.0 / fps as f64;
        // At least our marks; at most one MTU-sized payload.
        let size = (bytes_per_frame as usize).clamp(VP8_HEADER + VIDEO_MARKS, max_payload);
        Self {
            bytes_per_frame,
            size,
            owed: 0.0,
        }
    }

    /// The next frame's packet count and the payload size of each.
    pub(super) fn next_frame(&mut self) -> (usize, usize) {
        self.owed += self.bytes_per_frame / self.size as f64;
        let count = (self.owed.floor() as usize).clamp(1, MAX_PACKETS_PER_FRAME);
        self.owed -= count as f64;
        (count, self.size)
    }
}

/// A frame some of whose packets arrived.
#[derive(Clone, Copy, Debug)]
struct Partial {
    /// Bit i: packet i arrived.
    got: u64,
    count: u16,
    layer: u8,
    key: bool,
}

impl Partial {
    fn complete(&self) -> bool {
        self.got.count_ones() == self.count as u32
    }
}

/// Frames held for a track before the oldest are given up.
const HELD_FRAMES: usize = 256;

/// One subscriber's view of one video track: which frames a decoder would have shown, and
/// when. A frame is decodable when all its packets arrived and it is a key frame, or the
/// frame before it in the same layer was decoded (frames of one layer depend on the one
/// before). A decoder waits for a missing frame until a later key frame makes it moot, as
/// libwebrtc's frame buffer does.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    frames: BTreeMap<u32, Partial>,
    /// The last frame decoded and its layer.
    last: Option<(u32, u8)>,
    /// When a frame was last decoded, measured or not.
    last_at: Option<Instant>,
    /// When each frame was decoded while measuring, and its layer.
    pub decoded: Vec<(Instant, u8)>,
}

impl FrameDecoder {
    /// A packet of a frame arrived at `now`; `measuring` says whether decoded frames count.
    pub(super) fn on_packet(&mut self, mark: FrameMark, now: Instant, measuring: bool) {
        if self.last.is_some_and(|(f, _)| mark.frame <= f) {
            return;
        }
        let p = self.frames.entry(mark.frame).or_insert(Partial {
            got: 0,
            count: mark.count,
            layer: mark.layer,
            key: mark.key,
        });
        if p.layer != mark.layer || p.count != mark.count {
            // Another layer's frame of the same number: the forwarder switched; the one
            // that arrives whole first wins.
            *p = Partial {
                got: 0,
                count: mark.count,
                layer: mark.layer,
                key: mark.key,
            };
        }
        p.got |= 1 << mark.index;
        if p.complete() {
            self.decode_ready(now, measuring);
        }
        while self.frames.len() > HELD_FRAMES {
            self.frames.pop_first();
        }
    }

    /// Whether a receiver would ask for a key frame at `now`: packets keep coming but
    /// nothing could be decoded for [`FREEZE`] (a lost frame that retransmission did not
    /// repair, a switch of layer without a key frame, or a first frame that is not one).
    pub(super) fn stuck(&self, now: Instant) -> bool {
        !self.frames.is_empty() && self.last_at.is_none_or(|t| now - t > FREEZE)
    }

    /// Whether any frame was decoded yet.
    pub fn started(&self) -> bool {
        self.last.is_some()
    }

    fn decode_ready(&mut self, now: Instant, measuring: bool) {
        // The newest complete key frame makes everything before it moot.
        let key = self
            .frames
            .iter()
            .rev()
            .find(|(_, p)| p.key && p.complete())
            .map(|(f, _)| *f);
        if let Some(k) = key
            && self.last.is_none_or(|(f, _)| k > f)
            && !self.next_decodable(k)
        {
            self.frames = self.frames.split_off(&k);
        }
        while let Some((&f, p)) = self.frames.first_key_value() {
            let follows = self
                .last
                .is_some_and(|(lf, ll)| f == lf.wrapping_add(1) && p.layer == ll);
            if !p.complete() || !(p.key || follows) {
                break;
            }
            let layer = p.layer;
            self.frames.pop_first();
            self.last = Some((f, layer));
            self.last_at = Some(now);
            if measuring {
                self.decoded.push((now, layer));
            }
        }
    }

    /// Whether the frames up to `key` would decode in order anyway (then they are shown,
    /// not skipped).
    fn next_decodable(&self, key: u32) -> bool {
        let Some((mut lf, ll)) = self.last else {
            return false;
        };
        for (&f, p) in self.frames.range(..key) {
            if f != lf.wrapping_add(1) || !p.complete() || p.layer != ll {
                return false;
            }
            lf = f;
        }
        lf.wrapping_add(1) == key
    }
}

/// What a subscriber saw of one video track in the measured window `[start, end]`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VideoCounts {
    /// Frames decoded.
    pub frames: u64,
    /// Gaps between decoded frames (or the window's edges) longer than [`FREEZE`].
    pub freezes: u64,
    /// Time spent in those gaps.
    pub frozen: Duration,
    /// Frames decoded per layer (index 0 lowest; one-layer tracks count as 0).
    pub frames_by_layer: [u64; 3],
}

impl VideoCounts {
    /// Counts `decoded` (in time order) over a window.
    pub fn of(decoded: &[(Instant, u8)], start: Instant, end: Instant) -> VideoCounts {
        let mut c = VideoCounts::default();
        let mut prev = start;
        for &(at, layer) in decoded.iter().filter(|(at, _)| *at >= start && *at <= end) {
            c.frames += 1;
            c.frames_by_layer[(layer as usize).min(2)] += 1;
            c.gap(at - prev);
            prev = at;
        }
        c.gap(end.saturating_duration_since(prev));
        c
    }

    fn gap(&mut self, gap: Duration) {
        if gap > FREEZE {
            self.freezes += 1;
            self.frozen += gap;
        }
    }

    /// Adds another track's or subscriber's counts.
    pub fn add(&mut self, o: &VideoCounts) {
        self.frames += o.frames;
        self.freezes += o.freezes;
        self.frozen += o.frozen;
        for (a, b) in self.frames_by_layer.iter_mut().zip(o.frames_by_layer) {
            *a += b;
        }
    }
}

/// Which RTP sequence numbers of a stream arrived (each counted once, retransmissions
/// included), to tell loss after repair: the window of the last 1024 numbers is kept.
#[derive(Debug, Default)]
pub(super) struct SeqWindow {
    first: Option<u64>,
    max: u64,
    bits: Vec<u64>,
    /// Distinct sequence numbers received.
    pub unique: u64,
}

const SEQ_WINDOW: u64 = 1024;

impl SeqWindow {
    pub(super) fn on_seq(&mut self, seq: u64) {
        if self.bits.is_empty() {
            self.bits = vec![0; (SEQ_WINDOW / 64) as usize];
        }
        if self.first.is_none() {
            self.first = Some(seq);
            self.max = seq;
        }
        if self.first.is_some_and(|f| seq < f) || seq + SEQ_WINDOW <= self.max {
            return;
        }
        if seq > self.max {
            // Numbers the window moves past are forgotten (they count as lost).
            if seq - self.max >= SEQ_WINDOW {
                self.bits.fill(0);
            } else {
                for m in self.max + 1..=seq {
                    self.clear(m);
                }
            }
            self.max = seq;
        }
        let (word, bit) = ((seq % SEQ_WINDOW / 64) as usize, seq % 64);
        if self.bits[word] & (1 << bit) == 0 {
            self.bits[word] |= 1 << bit;
            self.unique += 1;
        }
    }

    fn clear(&mut self, seq: u64) {
        let (word, bit) = ((seq % SEQ_WINDOW / 64) as usize, seq % 64);
        self.bits[word] &= !(1 << bit);
    }

    /// Sequence numbers from the first to the highest seen.
    pub(super) fn expected(&self) -> u64 {
        self.first.map_or(0, |f| self.max + 1 - f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(frame: u32, index: u16, count: u16, layer: u8, key: bool) -> FrameMark {
        FrameMark {
            frame,
            index,
            count,
            layer,
            key,
        }
    }

    /// Feeds whole frames (all packets) of `layer`, one every 33 ms from `t0`.
    fn whole(d: &mut FrameDecoder, t0: Instant, frames: std::ops::Range<u32>, layer: u8) {
        for f in frames {
            let at = t0 + Duration::from_millis(33 * f as u64);
            for i in 0..2 {
                d.on_packet(mark(f, i, 2, layer, f == 0), at, true);
            }
        }
    }

    #[test]
    fn a_mark_reads_back_and_nonsense_is_refused() {
        let m = mark(7, 2, 3, 1, true);
        let mut buf = [0u8; VIDEO_MARKS];
        m.write(&mut buf);
        assert_eq!(FrameMark::read(&buf), Some(m));
        mark(7, 3, 3, 1, false).write(&mut buf);
        assert_eq!(FrameMark::read(&buf), None, "index past the count");
        assert_eq!(FrameMark::read(&buf[..FIELDS + 3]), None, "too short");
    }

    #[test]
    fn whole_frames_decode_and_an_incomplete_one_stalls_until_a_key_frame() {
        let t0 = Instant::now();
        let mut d = FrameDecoder::default();
        whole(&mut d, t0, 0..10, 0);
        assert_eq!(d.decoded.len(), 10);
        // Frame 10 loses a packet: 11..20 cannot decode after it.
        d.on_packet(mark(10, 0, 2, 0, false), t0, true);
        for f in 11..20 {
            for i in 0..2 {
                d.on_packet(mark(f, i, 2, 0, false), t0, true);
            }
        }
        assert_eq!(
            d.decoded.len(),
            10,
            "a frame after a lost one is not decodable"
        );
        // The missing packet comes late (a retransmission): all of them decode.
        d.on_packet(mark(10, 1, 2, 0, false), t0, true);
        assert_eq!(d.decoded.len(), 20);
        // Now frame 20 is lost for good; a key frame at 25 resumes.
        for f in 21..25 {
            d.on_packet(mark(f, 0, 1, 0, false), t0, true);
        }
        assert_eq!(d.decoded.len(), 20);
        assert!(!d.stuck(t0), "not yet");
        assert!(d.stuck(t0 + FREEZE * 2), "frames wait on a lost one");
        d.on_packet(mark(25, 0, 1, 0, true), t0, true);
        d.on_packet(mark(26, 0, 1, 0, false), t0, true);
        assert_eq!(d.decoded.len(), 22);
    }

    #[test]
    fn a_switch_of_layer_decodes_only_from_that_layers_key_frame() {
        let t0 = Instant::now();
        let mut d = FrameDecoder::default();
        whole(&mut d, t0, 0..5, 2);
        // The forwarder switches to layer 0 with a delta frame: not decodable.
        d.on_packet(mark(5, 0, 1, 0, false), t0, true);
        d.on_packet(mark(6, 0, 1, 0, false), t0, true);
        assert_eq!(d.decoded.len(), 5);
        d.on_packet(mark(7, 0, 1, 0, true), t0, true);
        d.on_packet(mark(8, 0, 1, 0, false), t0, true);
        assert_eq!(d.decoded.len(), 7);
        assert!(d.decoded[5..].iter().all(|(_, l)| *l == 0));
    }

    #[test]
    fn gaps_longer_than_a_freeze_are_counted_with_the_windows_edges() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let decoded = [(ms(100), 0), (ms(133), 1), (ms(900), 1), (ms(933), 2)];
        let c = VideoCounts::of(&decoded, t0, ms(2000));
        assert_eq!(c.frames, 4);
        assert_eq!(c.frames_by_layer, [1, 2, 1]);
        // 133 → 900 and 933 → 2000; the 100 ms before the first frame is no freeze.
        assert_eq!(c.freezes, 2);
        assert_eq!(c.frozen, Duration::from_millis(767 + 1067));
        let none = VideoCounts::of(&[], t0, ms(1000));
        assert_eq!((none.freezes, none.frozen), (1, Duration::from_secs(1)));
    }

    #[test]
    fn the_packetizer_keeps_the_bitrate_and_small_layers_take_one_small_packet() {
        let mut p = Packetizer::new(600_000, 30, 1100);
        let bytes: usize = (0..300)
            .map(|_| {
                let (n, size) = p.next_frame();
                n * size
            })
            .sum();
        // 10 s of 600 kbit/s.
        assert!((bytes as f64 - 750_000.0).abs() < 1100.0, "{bytes}");
        let mut q = Packetizer::new(150_000, 30, 1100);
        assert_eq!(q.next_frame(), (1, 625));
    }

    #[test]
    fn the_sequence_window_counts_each_number_once_and_gaps_as_lost() {
        let mut w = SeqWindow::default();
        for s in [10, 11, 13, 12, 12, 15] {
            w.on_seq(s);
        }
        assert_eq!((w.unique, w.expected()), (5, 6));
        // Far ahead: the window moves on.
        w.on_seq(5000);
        assert_eq!((w.unique, w.expected()), (6, 4991));
        w.on_seq(5000);
        assert_eq!(w.unique, 6);
    }
}
