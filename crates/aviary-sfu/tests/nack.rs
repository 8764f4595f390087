//! Losses are repaired (the subscriber's NACKs are answered from the consumer's send buffer,
//! and the publisher's losses are NACKed by the router), and what is not repaired shows in
//! the link reports connection quality is scored from.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Sim, payload_seq};
use str0m::format::Codec;
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
    // Below the consumer's cap on retransmitted bytes (15 %), even with repairs lost too.
    sim.clients[bob].loss_in = 0.08;
    sim.stream(alice, mids[0], 7, 300, Duration::from_millis(20), 3000);
    sim.clients[bob].loss_in = 0.0;
    sim.stream(alice, mids[0], 307, 20, Duration::from_millis(20), 3000);
    sim.run_for(Duration::from_millis(500));
    let got = received(&sim, bob);
    let missing: Vec<u64> = (7..327).filter(|s| !got.contains(s)).collect();
    let dropped = sim.clients[bob].dropped_in;
    assert!(dropped >= 20, "the network dropped only {dropped} packets");
    // Every packet is still in the consumer's send buffer and a lost retransmission is
    // NACKed again, so once the loss ends everything is repaired.
    assert!(
        missing.is_empty(),
        "{dropped} packets dropped, {} never repaired: {missing:?}",
        missing.len()
    );
    // The repairs went out as RTX (negotiated), not as copies on the media stream.
    let rtx = sim.clients[bob]
        .rtx_pt(Codec::Vp8)
        .expect("RTX negotiated for bob's VP8");
    let resent = sim.clients[bob].rtp_pts_in.get(&rtx).copied().unwrap_or(0);
    assert!(
        resent > 0 && resent <= dropped * 3,
        "{resent} datagrams on RTX payload type {rtx} for {dropped} dropped: {:?}",
        sim.clients[bob].rtp_pts_in
    );
    let stats = sim.router.stats();
    assert!(
        stats.nacks_received > 0,
        "the subscriber's NACKs are counted: {stats:?}"
    );
    assert!(
        stats.packets_forwarded >= 325 && stats.packets_received >= 326,
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
    sim.clients[alice].loss_out = 0.08;
    sim.stream(alice, mids[0], 7, 300, Duration::from_millis(20), 3000);
    sim.clients[alice].loss_out = 0.0;
    sim.stream(alice, mids[0], 307, 20, Duration::from_millis(20), 3000);
    sim.run_for(Duration::from_millis(500));
    let got = received(&sim, bob);
    let missing: Vec<u64> = (7..327).filter(|s| !got.contains(s)).collect();
    let dropped = sim.clients[alice].dropped_out;
    assert!(dropped >= 20, "the network dropped only {dropped} packets");
    assert!(
        missing.is_empty(),
        "{dropped} packets dropped, {} never recovered upstream: {missing:?}",
        missing.len()
    );
    // alice answered the router's NACKs on her RTX payload type.
    let rtx = sim.clients[alice]
        .rtx_pt(Codec::Vp8)
        .expect("RTX negotiated for alice's VP8");
    let resent = sim.clients[alice]
        .rtp_pts_out
        .get(&rtx)
        .copied()
        .unwrap_or(0);
    assert!(
        resent > 0,
        "nothing arrived on alice's RTX payload type {rtx}: {:?}",
        sim.clients[alice].rtp_pts_out
    );
}

#[test]
fn link_reports_carry_each_sides_loss_and_silence() {
    let mut sim = Sim::new(7);
    // Audio: nothing repairs its losses, so the receiver reports show them.
    let (alice, mids) = sim.join_publisher("alice", &[MediaKind::Audio]);
    let bob = sim.join_subscriber("bob");
    sim.send_rtp(alice, mids[0], 1, 0, &1u64.to_be_bytes());
    sim.run_for(Duration::from_millis(50));
    let (producer, _) = sim.producers()[0];
    sim.consume(producer, bob);
    // 10 % lost toward bob; nothing lost from alice.
    sim.clients[bob].loss_in = 0.10;
    sim.stream(alice, mids[0], 2, 300, Duration::from_millis(20), 960);
    let reports = sim.router.link_reports(sim.now);
    let (pub_t, sub_t) = (sim.clients[alice].transport, sim.clients[bob].transport);
    let sub = reports[&sub_t];
    let loss = sub
        .audio_loss
        .expect("bob's receiver reports say what it lost");
    assert!((0.03..0.25).contains(&loss), "bob lost {loss}");
    assert!(sub.connected && sub.silent_for.is_some_and(|s| s < Duration::from_secs(1)));
    let publisher = reports[&pub_t];
    assert!(publisher.audio_loss.unwrap_or(0.0) < 0.02, "{publisher:?}");
    assert_eq!(sub.video_loss, None);
    assert_eq!((sub.held_back, sub.paused), (0, 0));
    // Alice goes quiet: her transport's silence grows.
    sim.clients[alice].loss_out = 1.0;
    sim.run_for(Duration::from_secs(3));
    let silent = sim.router.link_reports(sim.now)[&pub_t].silent_for.unwrap();
    assert!(silent >= Duration::from_secs(2), "{silent:?}");
}
