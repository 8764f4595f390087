//! A new consumer asks the publisher for a keyframe; subscriber PLIs are relayed, throttled.

mod common;

use std::time::Duration;

use common::Sim;
use str0m::media::{KeyframeRequestKind, MediaKind};

#[test]
fn keyframe_requested_when_a_consumer_starts() {
    let mut sim = Sim::new(3);
    let (alice, mids) = sim.join_publisher("alice", &[MediaKind::Video]);
    let bob = sim.join_subscriber("bob");
    sim.send_rtp(alice, mids[0], 1, 0, &1u64.to_be_bytes());
    sim.run_for(Duration::from_millis(50));
    assert_eq!(
        sim.clients[alice].keyframe_requests(),
        0,
        "nobody watches yet"
    );
    let (producer, _) = sim.producers()[0];
    sim.consume(producer, bob);
    sim.stream(alice, mids[0], 2, 10, Duration::from_millis(33), 3000);
    assert!(
        sim.clients[alice].keyframe_requests() >= 1,
        "the publisher was asked for a keyframe"
    );
}

#[test]
fn subscriber_plis_are_relayed_and_throttled() {
    let mut sim = Sim::new(4);
    let (alice, mids) = sim.join_publisher("alice", &[MediaKind::Video]);
    let bob = sim.join_subscriber("bob");
    sim.send_rtp(alice, mids[0], 1, 0, &1u64.to_be_bytes());
    sim.run_for(Duration::from_millis(50));
    let (producer, _) = sim.producers()[0];
    let consumer = sim.consume(producer, bob);
    sim.stream(alice, mids[0], 2, 20, Duration::from_millis(33), 3000);
    let before = sim.clients[alice].keyframe_requests();
    let sub_mid = sim.router.consumer(consumer).unwrap().mid().unwrap();

    // Ten PLIs within 100 ms from the subscriber...
    for _ in 0..10 {
        let mut api = sim.clients[bob].rtc.direct_api();
        api.stream_rx_by_mid(sub_mid, None)
            .expect("receive stream")
            .request_keyframe(KeyframeRequestKind::Pli);
        sim.run_for(Duration::from_millis(10));
    }
    sim.run_for(Duration::from_millis(500));
    let relayed = sim.clients[alice].keyframe_requests() - before;
    // ...reach the publisher, but as at most two requests (one now, one owed).
    assert!((1..=2).contains(&relayed), "relayed {relayed} requests");
    sim.run_for(Duration::from_secs(3)); // str0m reports feedback counts every 2 s
    let stats = sim.router.stats();
    assert!(stats.keyframe_requests_received >= 1, "{stats:?}");
    assert!(stats.keyframe_requests_sent >= 2, "{stats:?}");
}
