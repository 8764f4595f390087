//! Simulcast: a consumer forwards one layer, switches only at that layer's keyframes, and
//! its sequence numbers and VP8 picture ids run on across the switch.

mod common;

use std::time::Duration;

use common::Sim;
use str0m::media::Mid;
use str0m::rtp::Vp8Descriptor;

const RIDS: [&str; 3] = ["q", "h", "f"];
const FRAME: Duration = Duration::from_millis(33);

/// A frame's one packet on `layer`.
fn vp8(layer: u8, frame: u16, keyframe: bool) -> Vec<u8> {
    common::vp8_payload(layer, frame, keyframe, true)
}

struct Layers {
    sim: Sim,
    alice: usize,
    bob: usize,
    mid: Mid,
    consumer: aviary_sfu::ConsumerId,
    frame: u16,
}

impl Layers {
    fn new(seed: u64) -> Self {
        let mut sim = Sim::new(seed);
        let (alice, mid) = sim.join_simulcast_publisher("alice", &RIDS);
        let bob = sim.join_subscriber("bob");
        let mut me = Self {
            sim,
            alice,
            bob,
            mid,
            consumer: aviary_sfu::ConsumerId(0),
            frame: 0,
        };
        // The producer appears with the publisher's first packets.
        me.frames(&[0, 1, 2], &[], 1);
        let (producer, _) = me.sim.producers()[0];
        assert_eq!(
            me.sim.router.producer(producer).unwrap().rids(),
            ["q", "h", "f"].map(Into::into),
            "layers ordered low to high"
        );
        me.consumer = me.sim.consume(producer, bob);
        me
    }

    /// `count` frames on each of `layers`, with keyframes on `keyframes`.
    fn frames(&mut self, layers: &[u8], keyframes: &[u8], count: usize) {
        for _ in 0..count {
            self.frame += 1;
            for &l in layers {
                // Unrelated numbering per layer (within the first SRTP roll-over).
                let seq = u64::from(l) * 20_000 + u64::from(self.frame);
                let ts = u32::from(self.frame) * 3000 + u32::from(l) * 7_777_777;
                let payload = vp8(l, self.frame, keyframes.contains(&l));
                self.sim.send_rtp_layer(
                    self.alice,
                    self.mid,
                    Some(RIDS[l as usize]),
                    seq,
                    ts,
                    &payload,
                );
            }
            self.sim.run_for(FRAME);
        }
    }

    fn received(&self) -> Vec<Got> {
        self.sim.clients[self.bob]
            .rtp()
            .into_iter()
            .map(|p| Got {
                seq: *p.seq_no,
                ts: p.header.timestamp,
                payload: p.payload.to_vec(),
            })
            .collect()
    }

    fn current(&self) -> Option<usize> {
        self.sim
            .router
            .consumer(self.consumer)
            .unwrap()
            .current_layer()
    }
}

/// What the subscriber received of one packet.
struct Got {
    seq: u64,
    ts: u32,
    payload: Vec<u8>,
}

fn layer_of(p: &Got) -> u8 {
    p.payload[7]
}

#[test]
fn forwards_one_layer_from_its_keyframe_and_switches_at_keyframes() {
    let mut t = Layers::new(11);
    // Deltas only: nothing can be decoded yet, so nothing goes out, and the publisher is
    // asked for a keyframe of the best layer.
    t.frames(&[0, 1, 2], &[], 10);
    assert!(
        t.received().is_empty(),
        "no keyframe yet, nothing forwarded"
    );
    assert_eq!(t.current(), None);
    assert!(t.sim.clients[t.alice].keyframe_requests_for("f") >= 1);
    assert_eq!(t.sim.clients[t.alice].keyframe_requests_for("q"), 0);

    // A keyframe on q does not help a consumer that wants f.
    t.frames(&[0, 1, 2], &[0], 1);
    assert!(t.received().is_empty());
    t.frames(&[0, 1, 2], &[2], 1);
    t.frames(&[0, 1, 2], &[], 10);
    let got = t.received();
    assert_eq!(got.len(), 11, "f's keyframe and the deltas after it");
    assert!(got.iter().all(|p| layer_of(p) == 2), "only layer f");
    assert_eq!(t.current(), Some(2));

    // Ask for the lowest layer: f keeps flowing until q's keyframe, then only q.
    let requests_before = t.sim.clients[t.alice].keyframe_requests_for("q");
    t.sim
        .router
        .set_preferred_layer(t.consumer, 0)
        .expect("consumer");
    t.frames(&[0, 1, 2], &[], 5);
    assert!(t.sim.clients[t.alice].keyframe_requests_for("q") > requests_before);
    assert_eq!(t.current(), Some(2), "no switch before the keyframe");
    t.frames(&[0, 1, 2], &[0], 1);
    t.frames(&[0, 1, 2], &[], 5);
    assert_eq!(t.current(), Some(0));
    let got = t.received();
    let layers: Vec<u8> = got.iter().map(layer_of).collect();
    let switch = layers.iter().position(|&l| l == 0).expect("q arrived");
    assert!(layers[..switch].iter().all(|&l| l == 2));
    assert!(layers[switch..].iter().all(|&l| l == 0), "{layers:?}");
    // f until q's keyframe (which may come after f in its frame), then q's keyframe and
    // its five deltas.
    assert_eq!(layers[switch..].len(), 6, "{layers:?}");
    assert!(layers[..switch].len() >= 11 + 5, "{layers:?}");

    // Across the switch, what the subscriber sees runs on without a break: sequence numbers,
    // timestamps moving forward, and VP8 picture ids / TL0PICIDX.
    for w in got.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1, "sequence continues");
        assert!(
            w[1].ts.wrapping_sub(w[0].ts) < 90_000,
            "timestamp moves forward"
        );
        let a = Vp8Descriptor::parse(&w[0].payload).unwrap();
        let b = Vp8Descriptor::parse(&w[1].payload).unwrap();
        assert_eq!(b.picture_id(), a.picture_id().map(|p| (p + 1) & 0x7fff));
        assert_eq!(b.tl0_pic_idx(), a.tl0_pic_idx().map(|t| t.wrapping_add(1)));
    }
}

#[test]
fn a_layer_that_stops_is_replaced_by_the_next_one_down() {
    let mut t = Layers::new(12);
    t.frames(&[0, 1, 2], &[2], 1);
    t.frames(&[0, 1, 2], &[], 5);
    assert_eq!(t.current(), Some(2));
    // The publisher's encoder drops f (its bandwidth estimate fell): after a while the
    // consumer asks for h and moves there at h's keyframe.
    let before = t.sim.clients[t.alice].keyframe_requests_for("h");
    t.frames(&[0, 1], &[], 60);
    assert!(t.sim.clients[t.alice].keyframe_requests_for("h") > before);
    assert_eq!(t.current(), Some(2), "waiting for h's keyframe");
    t.frames(&[0, 1], &[1], 1);
    t.frames(&[0, 1], &[], 3);
    assert_eq!(t.current(), Some(1));
    assert_eq!(
        t.received().iter().filter(|p| layer_of(p) == 1).count(),
        4,
        "h from its keyframe on"
    );
    // f comes back: the consumer returns to it at f's next keyframe.
    t.frames(&[0, 1, 2], &[], 3);
    assert_eq!(t.current(), Some(1));
    t.frames(&[0, 1, 2], &[2], 1);
    assert_eq!(t.current(), Some(2));
}

#[test]
fn a_resumed_consumer_waits_for_a_keyframe() {
    let mut t = Layers::new(13);
    t.frames(&[0, 1, 2], &[2], 1);
    t.frames(&[0, 1, 2], &[], 2);
    let before = t.received().len();
    t.sim.router.pause_consumer(t.consumer, true).unwrap();
    t.frames(&[0, 1, 2], &[], 3);
    t.sim.router.pause_consumer(t.consumer, false).unwrap();
    t.frames(&[0, 1, 2], &[], 3);
    assert_eq!(
        t.received().len(),
        before,
        "nothing while paused or before a keyframe"
    );
    t.frames(&[0, 1, 2], &[2], 1);
    assert_eq!(t.received().len(), before + 1);
}

#[test]
fn the_wanted_layer_follows_the_consumers_preferences() {
    let mut t = Layers::new(14);
    let (producer, _) = t.sim.producers()[0];
    assert_eq!(
        t.sim.router.wanted_layer(producer),
        Some(Some(2)),
        "the highest by default"
    );
    t.sim.router.set_preferred_layer(t.consumer, 1).unwrap();
    assert_eq!(t.sim.router.wanted_layer(producer), Some(Some(1)));
    // Wanting more than the producer has is wanting its highest.
    t.sim.router.set_preferred_layer(t.consumer, 9).unwrap();
    assert_eq!(t.sim.router.wanted_layer(producer), Some(Some(2)));
    // A paused consumer wants nothing: the publisher may stop every layer.
    t.sim.router.pause_consumer(t.consumer, true).unwrap();
    assert_eq!(t.sim.router.wanted_layer(producer), Some(None));
}
