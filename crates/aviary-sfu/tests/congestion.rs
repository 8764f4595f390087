//! Congestion control on a simulated bottleneck: a subscriber's link narrower than what it
//! asked for settles on the simulcast layer that fits, climbs back once the link widens (the
//! estimate grows only by probing), serves a screen share before a camera, and pauses video
//! only when pausing is allowed.

mod common;

use std::time::Duration;

use aviary_sfu::{CongestionControl, ConsumerId, Event, ProducerId, RouterConfig};
use common::Sim;
use str0m::media::Mid;

const RIDS: [&str; 3] = ["q", "h", "f"];
const FPS: u64 = 30;
const FRAME: Duration = Duration::from_millis(1000 / FPS);
/// Per-layer bitrates, as libwebrtc sends a 720p camera.
const RATES: [u64; 3] = [150_000, 500_000, 1_200_000];
const PACKET: usize = 1100;

fn sim(seed: u64, allow_pause: bool) -> Sim {
    Sim::with_config(
        seed,
        RouterConfig {
            congestion_control: Some(CongestionControl {
                allow_pause,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

/// A simulcast publisher sending VP8-shaped frames at [`RATES`], answering keyframe
/// requests with a keyframe on the layer asked for.
struct Camera {
    client: usize,
    mid: Mid,
    producer: ProducerId,
    frame: u16,
    seq: [u64; 3],
    plis_seen: [usize; 3],
}

impl Camera {
    fn join(sim: &mut Sim, name: &str) -> Self {
        let before = sim.producers().len();
        let (client, mid) = sim.join_simulcast_publisher(name, &RIDS);
        let mut cam = Self {
            client,
            mid,
            producer: ProducerId(0),
            frame: 0,
            seq: [0, 20_000, 40_000],
            plis_seen: [0; 3],
        };
        cam.send_frame(sim, true);
        sim.run_for(Duration::from_millis(50));
        cam.producer = sim.producers()[before].0;
        cam
    }

    /// One frame on every layer.
    fn send_frame(&mut self, sim: &mut Sim, all_keyframes: bool) {
        self.frame = self.frame.wrapping_add(1);
        for (l, rid) in RIDS.iter().enumerate() {
            let asked = sim.clients[self.client].keyframe_requests_for(rid);
            let keyframe = all_keyframes || asked > self.plis_seen[l];
            self.plis_seen[l] = asked;
            let bytes = (RATES[l] / 8 / FPS) as usize;
            let packets = bytes.div_ceil(PACKET);
            let ts = u32::from(self.frame) * 3000 + l as u32 * 7_777_777;
            for i in 0..packets {
                let mut payload = common::vp8_payload(l as u8, self.frame, keyframe, i == 0);
                payload.resize(bytes / packets, 0xab);
                self.seq[l] += 1;
                sim.send_rtp_layer(self.client, self.mid, Some(rid), self.seq[l], ts, &payload);
            }
        }
    }
}

/// Runs `seconds` of frames from every camera.
fn run(sim: &mut Sim, cams: &mut [&mut Camera], seconds: u64) {
    for _ in 0..seconds * FPS {
        for c in cams.iter_mut() {
            c.send_frame(sim, false);
        }
        sim.run_for(FRAME);
    }
}

fn layer(sim: &Sim, c: ConsumerId) -> Option<usize> {
    sim.router.consumer(c).unwrap().current_layer()
}

/// What the router said of `c` being paused (true) and resumed (false) for bandwidth.
fn paused_events(sim: &Sim, c: ConsumerId) -> Vec<bool> {
    sim.router_events
        .iter()
        .filter_map(|e| match e {
            Event::ConsumerPausedForBandwidth {
                consumer, paused, ..
            } if *consumer == c => Some(*paused),
            _ => None,
        })
        .collect()
}

/// Loss on the subscriber's link over a stretch: (sent, dropped).
fn link_counts(sim: &Sim, sub: usize) -> (usize, usize) {
    (sim.clients[sub].sent_in, sim.clients[sub].dropped_in)
}

#[test]
fn a_narrow_link_settles_on_a_layer_that_fits_and_climbs_back_when_it_widens() {
    let mut sim = sim(11, false);
    let mut cam = Camera::join(&mut sim, "alice");
    let bob = sim.join_subscriber("bob");
    // 600 kbit/s with a 40 KB drop-tail queue (about half a second).
    sim.clients[bob].rate_in = Some((600_000, 40_000));
    let c = sim.consume(cam.producer, bob);

    run(&mut sim, &mut [&mut cam], 8);
    let (sent0, dropped0) = link_counts(&sim, bob);
    let rtp0 = sim.clients[bob].rtp().len();
    let mut layers = Vec::new();
    for _ in 0..8 {
        run(&mut sim, &mut [&mut cam], 1);
        layers.push(layer(&sim, c));
    }
    let (sent1, dropped1) = link_counts(&sim, bob);
    let estimate = sim
        .router
        .transport(sim.clients[bob].transport)
        .unwrap()
        .estimate();
    let loss = (dropped1 - dropped0) as f64 / (sent1 - sent0).max(1) as f64;
    assert!(
        layers.iter().all(|l| matches!(l, Some(0 | 1))),
        "settled within 600 kbit/s: layers {layers:?}, estimate {estimate:?}"
    );
    assert!(
        loss < 0.02,
        "{:.1} % of packets lost once settled (estimate {estimate:?}, layers {layers:?})",
        loss * 100.0
    );
    // At least the low layer's frame rate (one packet a frame) got through.
    let got = sim.clients[bob].rtp().len() - rtp0;
    assert!(
        got >= 8 * FPS as usize * 9 / 10,
        "video kept flowing: {got} packets in 8 s"
    );

    // The link widens: the estimate grows by probing, and the consumer climbs to the top.
    sim.clients[bob].rate_in = Some((5_000_000, 100_000));
    let mut climbed = None;
    for s in 1..=15 {
        run(&mut sim, &mut [&mut cam], 1);
        if layer(&sim, c) == Some(2) {
            climbed = Some(s);
            break;
        }
    }
    let estimate = sim
        .router
        .transport(sim.clients[bob].transport)
        .unwrap()
        .estimate();
    assert!(
        climbed.is_some(),
        "back to the top layer within 15 s of the link widening (estimate {estimate:?}, layer {:?})",
        layer(&sim, c)
    );
}

#[test]
fn a_screen_share_is_served_before_a_camera() {
    let mut sim = sim(12, false);
    let mut camera = Camera::join(&mut sim, "alice");
    let mut screen = Camera::join(&mut sim, "carol");
    sim.router
        .set_producer_priority(screen.producer, 1)
        .unwrap();
    let bob = sim.join_subscriber("bob");
    // Room for both lowest layers and one middle one.
    sim.clients[bob].rate_in = Some((1_200_000, 60_000));
    let cam_c = sim.consume(camera.producer, bob);
    let screen_c = sim.consume(screen.producer, bob);
    run(&mut sim, &mut [&mut camera, &mut screen], 20);
    let mut seen = Vec::new();
    for _ in 0..5 {
        run(&mut sim, &mut [&mut camera, &mut screen], 1);
        seen.push((layer(&sim, screen_c), layer(&sim, cam_c)));
    }
    assert!(
        seen.iter()
            .all(|(s, c)| s.is_some() && c.is_some() && s > c),
        "the screen share gets the better layer: (screen, camera) {seen:?}"
    );
}

#[test]
fn video_pauses_for_want_of_bandwidth_only_when_allowed_and_resumes() {
    for allow_pause in [true, false] {
        let mut sim = sim(13, allow_pause);
        let mut cam = Camera::join(&mut sim, "alice");
        let bob = sim.join_subscriber("bob");
        // Less than even the lowest layer.
        sim.clients[bob].rate_in = Some((100_000, 20_000));
        let c = sim.consume(cam.producer, bob);
        let paused = |sim: &Sim| paused_events(sim, c);
        // Paused, then tried again at its lowest layer (the only way to learn whether the
        // link has room once nothing is sent) and paused again, with longer waits.
        let mut per_second = Vec::new();
        for _ in 0..16 {
            let got = sim.clients[bob].rtp().len();
            run(&mut sim, &mut [&mut cam], 1);
            per_second.push(sim.clients[bob].rtp().len() - got);
        }
        if !allow_pause {
            assert!(paused(&sim).is_empty(), "never paused: {:?}", paused(&sim));
            assert_eq!(layer(&sim, c), Some(0), "kept on the lowest layer");
            assert!(
                per_second.iter().all(|&n| n > 5),
                "the lowest layer kept flowing: {per_second:?}"
            );
            continue;
        }
        let events = paused(&sim);
        assert_eq!(events.first(), Some(&true), "paused: {events:?}");
        assert_eq!(events.last(), Some(&true), "still paused: {events:?}");
        assert!(events.len() <= 5, "tries back off: {events:?}");
        assert!(
            per_second[14..].iter().all(|&n| n <= 5),
            "nothing forwarded while paused: packets per second {per_second:?}"
        );

        sim.clients[bob].rate_in = Some((3_000_000, 60_000));
        let mut resumed_after = None;
        for s in 1..=20 {
            run(&mut sim, &mut [&mut cam], 1);
            if paused(&sim).last() == Some(&false) {
                resumed_after = Some(s);
                break;
            }
        }
        assert!(
            resumed_after.is_some(),
            "resumed within 20 s of the link widening"
        );
        let got = sim.clients[bob].rtp().len();
        let before = paused(&sim).len();
        run(&mut sim, &mut [&mut cam], 6);
        assert_eq!(paused(&sim).len(), before, "and stays resumed");
        assert!(
            sim.clients[bob].rtp().len() > got + 100,
            "video flows again"
        );
    }
}

#[test]
fn on_an_open_link_every_subscriber_gets_every_packet_at_once() {
    let mut sim = sim(14, false);
    let (alice, mids) = sim.join_publisher("alice", &[str0m::media::MediaKind::Video]);
    sim.send_rtp(alice, mids[0], 1, 0, &[0u8; 1000]);
    sim.run_for(Duration::from_millis(50));
    let (producer, _) = sim.producers()[0];
    let subs: Vec<usize> = (0..30)
        .map(|i| sim.join_subscriber(&format!("sub{i}")))
        .collect();
    for &s in &subs {
        sim.consume(producer, s);
    }
    // 1200-byte packets at 30 a second (~300 kbit/s) for 5 s, each naming its own number.
    let mut sent_at = std::collections::HashMap::new();
    for seq in 2..152u64 {
        let mut payload = vec![7u8; 1200];
        payload[..8].copy_from_slice(&seq.to_be_bytes());
        sent_at.insert(seq, sim.now);
        sim.send_rtp(alice, mids[0], seq, (seq as u32) * 3000, &payload);
        sim.run_for(FRAME);
    }
    sim.run_for(Duration::from_millis(200));
    for &s in &subs {
        let got = sim.clients[s].rtp();
        assert!(
            got.len() >= 150,
            "{} of 150 packets reached sub {s}",
            got.len()
        );
        // Two 5 ms hops. With BWE on, video still leaves at once (unpaced); only while
        // str0m sends a probe cluster does a packet wait behind it, briefly.
        let delays: Vec<Duration> = got
            .iter()
            .filter_map(|p| {
                sent_at
                    .get(&common::payload_seq(p))
                    .map(|t| p.timestamp - *t)
            })
            .collect();
        let at_once = 2 * common::LATENCY + Duration::from_millis(2);
        let late: Vec<&Duration> = delays.iter().filter(|d| **d > at_once).collect();
        assert!(late.len() * 20 <= delays.len(), "sub {s}: late {late:?}");
        assert!(
            late.iter()
                .all(|d| **d <= at_once + Duration::from_millis(40)),
            "sub {s}: {late:?}"
        );
    }
}

#[test]
fn a_bandwidth_override_is_allocated_within_until_cleared() {
    let mut sim = sim(15, true);
    let mut cam = Camera::join(&mut sim, "alice");
    let bob = sim.join_subscriber("bob");
    let c = sim.consume(cam.producer, bob);
    run(&mut sim, &mut [&mut cam], 4);
    assert!(layer(&sim, c).is_some(), "flowing on the open link");
    // As LiveKit's SimulateScenario.subscriber_bandwidth: the allocator believes 50 kbit/s.
    let t = sim.clients[bob].transport;
    sim.router.set_bandwidth_override(t, Some(50_000));
    run(&mut sim, &mut [&mut cam], 3);
    let paused = |sim: &Sim| paused_events(sim, c);
    assert_eq!(paused(&sim), [true]);
    sim.router.set_bandwidth_override(t, None);
    run(&mut sim, &mut [&mut cam], 3);
    assert_eq!(paused(&sim), [true, false], "resumed on the real estimate");
}

/// With BWE on, str0m's pacer lets one packet out per timeout round. A burst of packets
/// that reaches the router at one instant (one batch of the worker's socket reads) must
/// still leave toward the subscriber in that same pass, not one per later round: else a
/// subscriber receiving more packets per pass than there are passes queues without bound
/// (ten audio publishers into hundreds of subscribers did, until the server stalled).
#[test]
fn a_burst_in_one_instant_leaves_in_the_same_pass() {
    let mut s = sim(11, false);
    let (publisher, mids) = s.join_publisher("pub", &[aviary_sfu::MediaKind::Audio]);
    let sub = s.join_subscriber("sub");
    let (producer, _) = s.producers()[0];
    s.consume(producer, sub);
    // Warm the path up: the consumer's first packet starts its stream.
    s.stream(publisher, mids[0], 1, 5, Duration::from_millis(20), 960);
    s.run_for(Duration::from_millis(100));

    let burst = s.capture_rtp(publisher, mids[0], 100, 20, &[0xfc, 1, 2]);
    assert_eq!(burst.len(), 20);
    let from_publisher = s.clients[publisher].transport;
    let to = s.clients[sub].addr;
    let now = s.now + Duration::from_millis(1);
    for (src, dst, data) in &burst {
        let r = aviary_sfu::Receive::new(aviary_sfu::Protocol::Udp, *src, *dst, data).unwrap();
        s.router.handle_receive(now, from_publisher, r).unwrap();
    }
    let mut rtp_out = 0;
    loop {
        match s.router.poll_output() {
            aviary_sfu::Output::Transmit(t) => {
                let rtp = t.contents.first().is_some_and(|b| (128..=191).contains(b))
                    && t.contents.get(1).is_some_and(|b| !(192..=223).contains(b));
                if t.destination == to && rtp {
                    rtp_out += 1;
                }
            }
            aviary_sfu::Output::Event(_) => {}
            aviary_sfu::Output::Timeout(_) => break,
        }
    }
    assert_eq!(rtp_out, 20, "the whole burst leaves before any timer runs");
}
