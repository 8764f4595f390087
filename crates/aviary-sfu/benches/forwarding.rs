//! The forwarding hot path: one publisher's video packet into the router, out to N
//! consumers (SRTP decrypt once, rewrite and encrypt N times), in memory.
//!
//! Reported per *forwarded* packet: the time for one input packet divided by N.
//! Run: `cargo bench -p aviary-sfu --bench forwarding`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use aviary_sfu::{CongestionControl, RouterConfig};
use common::Sim;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use str0m::media::MediaKind;

fn setup(consumers: usize, config: RouterConfig) -> (Sim, usize, str0m::media::Mid) {
    let mut sim = Sim::with_config(42, config);
    let (alice, mids) = sim.join_publisher("alice", &[MediaKind::Video]);
    let subs: Vec<usize> = (0..consumers)
        .map(|i| sim.join_subscriber(&format!("sub{i}")))
        .collect();
    sim.send_rtp(alice, mids[0], 1, 0, &[0u8; 1000]);
    sim.run_for(Duration::from_millis(50));
    let (producer, _) = sim.producers()[0];
    for s in subs {
        sim.consume(producer, s);
    }
    // Warm up: the first packets start each consumer.
    sim.stream(alice, mids[0], 2, 20, Duration::from_millis(5), 3000);
    (sim, alice, mids[0])
}

fn forwarding(c: &mut Criterion) {
    let congestion_control = RouterConfig {
        congestion_control: Some(CongestionControl::default()),
        ..Default::default()
    };
    // As before congestion control, and as served by default (BWE on every subscriber).
    // With BWE, a packet may wait behind a probe cluster past the end of its iteration (it
    // goes out in the next): only most of them are required to be out by then.
    let plain = RouterConfig::default();
    group(c, "forward_video_1200B", plain, &[1, 10, 100], 1.0);
    group(
        c,
        "forward_video_1200B_cc",
        congestion_control,
        &[1, 100],
        0.5,
    );
}

fn group(c: &mut Criterion, name: &str, config: RouterConfig, sizes: &[usize], out_share: f64) {
    let mut group = c.benchmark_group(name);
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    for &n in sizes {
        let (mut sim, alice, mid) = setup(n, config.clone());
        let transport = sim.clients[alice].transport;
        let mut next_seq = 100u64;
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("1_to_{n}"), |b| {
            b.iter_custom(|iters| {
                // SRTP refuses replays, so every iteration needs a fresh packet; making them
                // is the publisher's work and stays outside the timing.
                let packets = sim.capture_rtp(alice, mid, next_seq, iters, &[7u8; 1200]);
                next_seq += iters;
                let (sent, elapsed) = sim.feed_router(transport, &packets);
                // Let the clients' ICE consent and RTCP run, as they would between packets.
                sim.run_for(Duration::from_millis(20));
                assert!(
                    sent as f64 >= (iters * n as u64) as f64 * out_share,
                    "{sent} sent for {iters}x{n}"
                );
                elapsed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, forwarding);
criterion_main!(benches);
