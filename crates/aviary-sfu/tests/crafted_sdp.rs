//! A publisher's offer that makes str0m panic (found by fuzzing: "Pt locked multiple times")
//! closes only that publisher's transport; the rest of the room goes on.

mod common;

use std::time::Duration;

use aviary_sfu::{Event, TransportDirection, TransportOptions};
use common::Sim;
use str0m::media::MediaKind;

#[test]
fn a_panicking_offer_closes_only_its_transport() {
    let crafted = include_bytes!("../../../fuzz/regressions/sdp/str0m-pt-locked-twice");
    // The fuzz input's first byte chose the offer path; the rest is the SDP.
    let sdp = String::from_utf8_lossy(&crafted[1..]).to_string();

    let mut sim = Sim::new(11);
    let (alice, mids) = sim.join_publisher("alice", &[MediaKind::Audio]);
    let bob = sim.join_subscriber("bob");
    sim.send_rtp(alice, mids[0], 1, 0, &1u64.to_be_bytes());
    sim.run_for(Duration::from_millis(50));
    let (producer, _) = sim.producers()[0];
    sim.consume(producer, bob);

    let hostile = sim.router.create_transport(TransportOptions::new(
        TransportDirection::Publisher,
        "hostileufrag".into(),
        "hostile-password-0123456".into(),
    ));
    sim.drain_router();
    let result = sim.router.accept_offer(hostile, &sdp);
    sim.drain_router();
    assert!(result.is_err(), "the offer is refused");
    assert!(
        sim.router.transport(hostile).is_none(),
        "its transport is closed"
    );
    assert!(
        sim.router_events.iter().any(
            |e| matches!(e, Event::TransportClosed { transport, .. } if *transport == hostile)
        )
    );
    // The room goes on: alice's audio still reaches bob.
    let before = sim.clients[bob].rtp().len();
    sim.stream(alice, mids[0], 2, 20, Duration::from_millis(20), 960);
    assert!(sim.clients[bob].rtp().len() >= before + 18);
}
