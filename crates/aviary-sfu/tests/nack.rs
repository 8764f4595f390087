//! Losses are repaired: the subscriber's NACKs are answered from the consumer's send buffer,
//! and the publisher's losses are NACKed by the router.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Sim, payload_seq};
use str0m::media::MediaKind;

fn received(sim: &Sim, sub: usize) -> BTreeSet<u64> {
    sim.clients[sub]
        .rtp()
        .iter()
        .map(|p| payload_seq(p))
        .collect()
}

#[test]
fn subscriber_losses_are_retransmitted() {
    let mut sim = Sim::new(5);
    let (alice, mids) = sim.join_publisher("alice", &[MediaKind::Video]);
    let bob = sim.join_subscriber("bob");
    sim.send_rtp(alice, mids[0], 1, 0, &1u64.to_be_bytes());
    sim.run_for(Duration::from_millis(50));
    let (producer, _) = sim.producers()[0];
    sim.consume(producer, bob);
    sim.stream(alice, mids[0], 2, 5, Duration::from_millis(20), 3000);
    sim.clients[bob].loss_in = 0.15;
    sim.stream(alice, mids[0], 7, 200, Duration::from_millis(20), 3000);
    sim.clients[bob].loss_in = 0.0;
    sim.stream(alice, mids[0], 207, 20, Duration::from_millis(20), 3000);
    sim.run_for(Duration::from_millis(500));
    let got = received(&sim, bob);
    let missing: Vec<u64> = (7..227).filter(|s| !got.contains(s)).collect();
    let dropped = sim.clients[bob].dropped_in;
    assert!(dropped >= 20, "the network dropped only {dropped} packets");
    // A retransmission can be lost too; without NACK handling nearly all drops would remain.
    assert!(
        missing.len() * 5 <= dropped,
        "{dropped} packets dropped, {} never repaired: {missing:?}",
        missing.len()
    );
    let stats = sim.router.stats();
    assert!(
        stats.nacks_received > 0,
        "the subscriber's NACKs are counted: {stats:?}"
    );
    assert!(
        stats.packets_forwarded >= 225 && stats.packets_received >= 226,
        "{stats:?}"
    );
}

#[test]
fn publisher_losses_are_nacked() {
    let mut sim = Sim::new(6);
    let (alice, mids) = sim.join_publisher("alice", &[MediaKind::Video]);
    let bob = sim.join_subscriber("bob");
    sim.send_rtp(alice, mids[0], 1, 0, &1u64.to_be_bytes());
    sim.run_for(Duration::from_millis(50));
    let (producer, _) = sim.producers()[0];
    sim.consume(producer, bob);
    sim.stream(alice, mids[0], 2, 5, Duration::from_millis(20), 3000);
    sim.clients[alice].loss_out = 0.15;
    sim.stream(alice, mids[0], 7, 200, Duration::from_millis(20), 3000);
    sim.clients[alice].loss_out = 0.0;
    sim.stream(alice, mids[0], 207, 20, Duration::from_millis(20), 3000);
    sim.run_for(Duration::from_millis(500));
    let got = received(&sim, bob);
    let missing: Vec<u64> = (7..227).filter(|s| !got.contains(s)).collect();
    let dropped = sim.clients[alice].dropped_out;
    assert!(dropped >= 20, "the network dropped only {dropped} packets");
    assert!(
        missing.len() * 5 <= dropped,
        "{dropped} packets dropped, {} never recovered upstream: {missing:?}",
        missing.len()
    );
}
