//! A publisher's packets reach every consumer, on the consumer's own SSRC, in order.

mod common;

use std::time::Duration;

use common::{Sim, payload_seq};
use str0m::media::MediaKind;

#[test]
fn packets_fan_out_to_every_consumer() {
    let mut sim = Sim::new(1);
    let (alice, mids) = sim.join_publisher("alice", &[MediaKind::Audio, MediaKind::Video]);
    let bob = sim.join_subscriber("bob");
    let carol = sim.join_subscriber("carol");
    // The producers appear with the first packets of each stream.
    sim.send_rtp(alice, mids[0], 1, 0, &1u64.to_be_bytes());
    sim.send_rtp(alice, mids[1], 1, 0, &1u64.to_be_bytes());
    sim.run_for(Duration::from_millis(50));
    let producers = sim.producers();
    assert_eq!(producers.len(), 2, "one producer per m-line");
    for (p, _) in &producers {
        sim.consume(*p, bob);
        sim.consume(*p, carol);
    }

    sim.stream(alice, mids[0], 2, 100, Duration::from_millis(20), 960);
    let publisher_ssrc = sim.clients[alice]
        .rtc
        .direct_api()
        .stream_tx_by_mid(mids[0], None)
        .unwrap()
        .ssrc();

    for sub in [bob, carol] {
        let rtp = sim.clients[sub].rtp();
        let audio: Vec<u64> = rtp
            .iter()
            .filter(|p| p.payload.len() == 8)
            .map(|p| payload_seq(p))
            .collect();
        assert!(
            audio.len() >= 95,
            "{} got {} packets",
            sim.clients[sub].name,
            audio.len()
        );
        assert!(
            audio.windows(2).all(|w| w[1] == w[0] + 1),
            "in order, no loss"
        );
        // The consumer's sequence numbers are continuous too.
        let seqs: Vec<u64> = rtp.iter().map(|p| *p.seq_no).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        // Each consumer sends on its own SSRC, not the publisher's.
        assert!(rtp.iter().all(|p| p.header.ssrc != publisher_ssrc));
    }
    let bob_ssrc = sim.clients[bob].rtp()[0].header.ssrc;
    let carol_ssrc = sim.clients[carol].rtp()[0].header.ssrc;
    assert_ne!(bob_ssrc, carol_ssrc);
}

#[test]
fn closing_the_publisher_closes_its_consumers() {
    let mut sim = Sim::new(2);
    let (alice, mids) = sim.join_publisher("alice", &[MediaKind::Audio]);
    let bob = sim.join_subscriber("bob");
    sim.send_rtp(alice, mids[0], 1, 0, &1u64.to_be_bytes());
    sim.run_for(Duration::from_millis(50));
    let (producer, _) = sim.producers()[0];
    let consumer = sim.consume(producer, bob);
    sim.router
        .close_transport(sim.clients[alice].transport)
        .unwrap();
    sim.run_for(Duration::from_millis(10));
    assert!(sim.router.consumer(consumer).is_none());
    assert!(sim.router_events.iter().any(|e| matches!(
        e,
        aviary_sfu::Event::ProducerClosed { producer: p } if *p == producer
    )));
    assert!(sim.router_events.iter().any(|e| matches!(
        e,
        aviary_sfu::Event::ConsumerClosed { consumer: c, .. } if *c == consumer
    )));
}
