//! Subscribing to a track again reactivates the m-line its last consumer used, so a
//! subscriber's SDP stops growing across subscribe/unsubscribe cycles, and the client sees
//! the numbering on that m-line carry on.

mod common;

use std::time::Duration;

use aviary_sfu::{ConsumerOptions, Event};
use common::{Sim, payload_seq};
use str0m::media::MediaKind;

/// The offers the router made since the last call, answered.
fn answer_offers(sim: &mut Sim) -> Vec<String> {
    sim.drain_router();
    let offers = sim
        .router_events
        .iter()
        .filter_map(|e| match e {
            Event::OfferReady { sdp, .. } => Some(sdp.clone()),
            _ => None,
        })
        .collect();
    sim.answer_pending_offers();
    sim.run_for(Duration::from_millis(50));
    offers
}

fn media_lines(sdp: &str) -> usize {
    sdp.lines().filter(|l| l.starts_with("m=")).count()
}

fn consume_track(
    sim: &mut Sim,
    producer: aviary_sfu::ProducerId,
    sub: usize,
    track: &str,
) -> aviary_sfu::ConsumerId {
    let options = ConsumerOptions::new(
        producer,
        sim.clients[sub].transport,
        "PA_alice|TR_video".into(),
        track.into(),
    );
    sim.router.consume(options).expect("consume")
}

/// alice publishes one video track, bob subscribes to nothing yet.
struct Setup {
    sim: Sim,
    alice: usize,
    mids: Vec<str0m::media::Mid>,
    bob: usize,
    producer: aviary_sfu::ProducerId,
}

fn setup(seed: u64) -> Setup {
    let mut sim = Sim::new(seed);
    let (alice, mids) = sim.join_publisher("alice", &[MediaKind::Video]);
    let bob = sim.join_subscriber("bob");
    sim.send_rtp(alice, mids[0], 1, 0, &1u64.to_be_bytes());
    sim.run_for(Duration::from_millis(50));
    let (producer, _) = sim.producers()[0];
    Setup {
        sim,
        alice,
        mids,
        bob,
        producer,
    }
}

#[test]
fn resubscribing_reuses_the_m_line_and_numbering_carries_on() {
    let Setup {
        mut sim,
        alice,
        mids,
        bob,
        producer,
    } = setup(21);
    let bob_t = sim.clients[bob].transport;

    let mut current = consume_track(&mut sim, producer, bob, "TR_video");
    let offers = answer_offers(&mut sim);
    let lines = media_lines(offers.last().expect("an offer for the first consumer"));
    let mid = sim
        .router
        .consumer(current)
        .unwrap()
        .mid()
        .expect("offered");
    sim.stream(alice, mids[0], 2, 20, Duration::from_millis(33), 3000);
    assert!(sim.clients[bob].rtp().len() > 10, "media flowed");

    for cycle in 0..5u64 {
        sim.router.close_consumer(current).unwrap();
        let stop = answer_offers(&mut sim);
        assert_eq!(stop.len(), 1, "cycle {cycle}: the stop is offered");
        assert!(stop[0].contains("a=inactive"), "cycle {cycle}: {}", stop[0]);
        let got = sim.clients[bob].rtp().len();
        let first = 1000 * (cycle + 1);
        sim.stream(alice, mids[0], first, 10, Duration::from_millis(33), 3000);
        assert_eq!(
            sim.clients[bob].rtp().len(),
            got,
            "cycle {cycle}: nothing while unsubscribed"
        );

        current = consume_track(&mut sim, producer, bob, "TR_video");
        let offers = answer_offers(&mut sim);
        assert_eq!(
            offers.len(),
            1,
            "cycle {cycle}: one offer reactivates the m-line"
        );
        assert_eq!(
            media_lines(&offers[0]),
            lines,
            "cycle {cycle}: the SDP did not grow"
        );
        assert_eq!(sim.router.consumer(current).unwrap().mid(), Some(mid));
        assert_eq!(sim.router.transport(bob_t).unwrap().send_media_count(), 1);
        sim.stream(
            alice,
            mids[0],
            first + 10,
            20,
            Duration::from_millis(33),
            3000,
        );
        assert!(
            sim.clients[bob].rtp().len() > got + 10,
            "cycle {cycle}: media flows again"
        );
    }

    // One SSRC, its sequence numbers strictly increasing across every cycle (a repeat would
    // be dropped by SRTP's replay check), and nothing sent while unsubscribed arrived.
    let rtp = sim.clients[bob].rtp();
    let ssrcs: std::collections::BTreeSet<_> = rtp.iter().map(|p| p.header.ssrc).collect();
    assert_eq!(ssrcs.len(), 1, "one SSRC: {ssrcs:?}");
    let seqs: Vec<u64> = rtp.iter().map(|p| *p.seq_no).collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "increasing: {seqs:?}");
    assert!(
        rtp.iter()
            .all(|p| payload_seq(p) < 1000 || payload_seq(p) % 1000 >= 10),
        "a packet sent while unsubscribed arrived"
    );
}

#[test]
fn a_resubscription_before_the_stop_is_offered_needs_no_offer() {
    let Setup {
        mut sim,
        alice,
        mids,
        bob,
        producer,
    } = setup(22);
    let first = consume_track(&mut sim, producer, bob, "TR_video");
    answer_offers(&mut sim);
    let mid = sim.router.consumer(first).unwrap().mid().unwrap();

    // An unrelated offer is in flight, so the stop waits; the resubscription cancels it.
    sim.hold_offers = true;
    let (_, other) = sim.producers()[0];
    assert_eq!(other, MediaKind::Video);
    let side = consume_track(&mut sim, producer, bob, "TR_other");
    sim.drain_router();
    sim.router.close_consumer(first).unwrap();
    let again = consume_track(&mut sim, producer, bob, "TR_video");
    assert_eq!(
        sim.router.consumer(again).unwrap().mid(),
        Some(mid),
        "the m-line is used at once"
    );
    sim.hold_offers = false;
    let offers = answer_offers(&mut sim);
    assert_eq!(
        offers.len(),
        1,
        "only the side consumer's offer: {offers:?}"
    );
    assert!(sim.router.consumer(side).unwrap().mid().is_some());
    let got = sim.clients[bob].rtp().len();
    sim.stream(alice, mids[0], 100, 10, Duration::from_millis(33), 3000);
    // Both consumers forward the producer.
    assert!(sim.clients[bob].rtp().len() >= got + 18);
}

#[test]
fn another_track_gets_its_own_m_line() {
    let Setup {
        mut sim,
        bob,
        producer,
        ..
    } = setup(23);
    let first = consume_track(&mut sim, producer, bob, "TR_video");
    answer_offers(&mut sim);
    let mid = sim.router.consumer(first).unwrap().mid().unwrap();
    sim.router.close_consumer(first).unwrap();
    answer_offers(&mut sim);
    // A different msid must not take the idle m-line: the client would see the old track.
    let other = consume_track(&mut sim, producer, bob, "TR_renamed");
    answer_offers(&mut sim);
    let other_mid = sim.router.consumer(other).unwrap().mid().unwrap();
    assert_ne!(other_mid, mid);
    let bob_t = sim.clients[bob].transport;
    assert_eq!(sim.router.transport(bob_t).unwrap().send_media_count(), 2);
}
