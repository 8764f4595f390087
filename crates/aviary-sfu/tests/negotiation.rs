//! Subscriber renegotiation is serialized: one offer in flight; changes made meanwhile are
//! folded into the next offer, made as soon as the answer arrives.

mod common;

use std::time::Duration;

use aviary_sfu::{ConsumerOptions, Event, Output};
use common::Sim;
use str0m::change::SdpOffer;
use str0m::media::MediaKind;

/// Drains the router without answering anything; returns the offers it made.
fn drain_offers(sim: &mut Sim) -> Vec<String> {
    let mut offers = Vec::new();
    loop {
        match sim.router.poll_output() {
            Output::Event(Event::OfferReady { sdp, .. }) => offers.push(sdp),
            Output::Event(e) => sim.router_events.push(e),
            Output::Transmit(_) => {}
            Output::Timeout(_) => return offers,
        }
    }
}

#[test]
fn changes_wait_for_the_answer_and_fold_into_one_offer() {
    let mut sim = Sim::new(8);
    let (alice, mids) = sim.join_publisher("alice", &[MediaKind::Audio, MediaKind::Video]);
    let bob = sim.join_subscriber("bob");
    sim.send_rtp(alice, mids[0], 1, 0, &1u64.to_be_bytes());
    sim.send_rtp(alice, mids[1], 1, 0, &1u64.to_be_bytes());
    sim.run_for(Duration::from_millis(50));
    let producers = sim.producers();
    let bob_t = sim.clients[bob].transport;
    let consume = |sim: &mut Sim, i: usize| {
        let options = ConsumerOptions::new(producers[i].0, bob_t, "s".into(), format!("track{i}"));
        sim.router.consume(options).unwrap()
    };

    let first = consume(&mut sim, 0);
    let c1 = consume(&mut sim, 1);
    let outstanding = drain_offers(&mut sim);
    assert_eq!(outstanding.len(), 1, "one offer in flight");
    assert!(sim.router.consumer(first).unwrap().mid().is_some());
    assert!(
        sim.router.consumer(c1).unwrap().mid().is_none(),
        "the second change waits for the answer"
    );

    // The answer releases the next offer, which carries the waiting m-line.
    let offer = SdpOffer::from_sdp_string(&outstanding[0]).unwrap();
    let answer = sim.clients[bob].rtc.sdp_api().accept_offer(offer).unwrap();
    sim.router
        .accept_answer(bob_t, &answer.to_sdp_string())
        .unwrap();
    let mid = sim.router.consumer(c1).unwrap().mid();
    assert!(mid.is_some(), "the waiting m-line went into the next offer");
    let next = drain_offers(&mut sim);
    assert_eq!(next.len(), 1);
    assert!(next[0].contains(&format!("a=mid:{}", mid.unwrap())));
}
